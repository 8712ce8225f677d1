"""Every row of SPEC's error table, and JSON for every failure under /api/v1."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import service as keys
from app.models import ApiKey
from tests.conftest import bearer, issue_key


@pytest.fixture
def key(app, user) -> str:
    return issue_key(app, scopes=("api:read",))


def _challenge(response) -> str:
    value = response.headers.get("WWW-Authenticate", "")
    assert value.startswith('Bearer realm="keydesk"'), value
    return value


def test_no_authorization_header_is_a_bare_challenge(client):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="keydesk"'
    assert set(response.json) == {"error", "error_description"}


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "Bearer a b", "Token abc", "kd_abc"],
)
def test_malformed_header_or_other_scheme_is_invalid_request(client, header):
    response = client.get("/api/v1/me", headers={"Authorization": header})
    assert response.status_code in (400, 401)
    assert response.json["error"] == "invalid_request"
    assert 'error="invalid_request"' in _challenge(response)


@pytest.mark.parametrize("name", ["access_token", "api_key", "key"])
def test_key_in_query_string_is_refused(client, key, name):
    response = client.get(f"/api/v1/me?{name}={key}", headers=bearer(key))
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert key not in response.get_data(as_text=True)


def test_unknown_key_and_bad_checksum_are_invalid_token(client, key):
    prefix, key_id, rest = key.split("_")
    unknown = keys.keyformat.assemble(prefix, "A" * 12, rest[:32])
    for token in (key[:-1] + ("x" if key[-1] != "x" else "y"), unknown, "kd_nonsense"):
        response = client.get("/api/v1/me", headers=bearer(token))
        assert response.status_code == 401
        assert response.json == {"error": "invalid_token", "error_description": "Invalid API key"}
        assert 'error="invalid_token"' in _challenge(response)
        assert token not in response.get_data(as_text=True)


def test_wrong_secret_for_a_real_key_id_is_invalid_token(client, key):
    prefix, key_id, _ = key.split("_")
    forged = keys.keyformat.assemble(prefix, key_id, "B" * 32)
    response = client.get("/api/v1/me", headers=bearer(forged))
    assert response.status_code == 401
    assert response.json["error_description"] == "Invalid API key"


def test_expired_key(app, client, key):
    with app.app_context():
        db.session.execute(update(ApiKey).values(expires_at=utcnow() - timedelta(seconds=5)))
        db.session.commit()
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 401
    assert response.json == {
        "error": "invalid_token",
        "error_description": "API key has expired",
    }
    assert 'error="invalid_token"' in _challenge(response)


def test_revoked_key(app, client, key):
    with app.app_context():
        row = db.session.execute(db.select(ApiKey)).scalar_one()
        keys.revoke_key(key=row, now=utcnow(), actor=Actor.cli())
        db.session.commit()
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 401
    assert response.json == {
        "error": "invalid_token",
        "error_description": "API key has been revoked",
    }


def test_missing_scope_is_insufficient_scope_with_scope_in_challenge(client, key):
    response = client.post(
        "/api/v1/resources", json={"name": "a", "type": "b"}, headers=bearer(key)
    )
    assert response.status_code == 403
    assert response.json["error"] == "insufficient_scope"
    challenge = _challenge(response)
    assert 'error="insufficient_scope"' in challenge and 'scope="api:write"' in challenge


def test_admin_all_satisfies_every_scope(app, client, user):
    key = issue_key(app, scopes=("admin:all",))
    response = client.post(
        "/api/v1/resources", json={"name": "a", "type": "b"}, headers=bearer(key)
    )
    assert response.status_code == 201


def test_ip_outside_allow_list_is_forbidden(app, client, user):
    with app.app_context():
        from app.accounts.service import get_user_by_email

        _, key = keys.issue_key(
            user=get_user_by_email("alice@example.com"), name="ci", scopes=["api:read"],
            expires_in_days=0, now=utcnow(), actor=Actor.cli(), allowed_ips="10.0.0.0/8",
        )  # fmt: skip
        db.session.commit()
    outside = client.get("/api/v1/me", headers=bearer(key))
    assert outside.status_code == 403 and outside.json["error"] == "forbidden"
    inside = client.get("/api/v1/me", headers=bearer(key), environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert inside.status_code == 200


def test_unknown_route_and_wrong_method_are_json(client, key):
    response = client.get("/api/v1/no/such/thing", headers=bearer(key))
    assert response.status_code == 404 and response.is_json
    assert response.json["error"] == "not_found"
    response = client.put("/api/v1/me", headers=bearer(key))
    assert response.status_code == 405 and response.json["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_too_large_body_is_413_json(app, client, user):
    key = issue_key(app, scopes=("api:write",))
    body = '{"name": "' + "x" * (65 * 1024) + '", "type": "t"}'
    response = client.post(
        "/api/v1/resources", data=body, content_type="application/json", headers=bearer(key)
    )
    assert response.status_code == 413
    assert response.json["error"] == "request_too_large"


def test_non_json_body_is_415(app, client, user):
    key = issue_key(app, scopes=("api:write",))
    response = client.post(
        "/api/v1/resources", data="name=a&type=b", headers=bearer(key),
        content_type="application/x-www-form-urlencoded",
    )  # fmt: skip
    assert response.status_code == 415
    assert response.json["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "body",
    ["{", "[1, 2]", '"text"', "null", '{"name": NaN, "type": "t"}', "[" * 5000 + "]" * 5000],
)
def test_malformed_or_non_object_json_is_400(app, client, user, body):
    key = issue_key(app, scopes=("api:write",))
    response = client.post(
        "/api/v1/resources", data=body, content_type="application/json", headers=bearer(key)
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"


@pytest.mark.parametrize(
    "body",
    [{"name": 5, "type": "t"}, {"name": "a", "type": ["t"]}, {"name": "a"}, {"type": "t"},
     {"name": True, "type": "t"}, {"name": "   ", "type": "t"}],
)  # fmt: skip
def test_wrong_field_types_are_400_naming_the_field(app, client, user, body):
    key = issue_key(app, scopes=("api:write",))
    response = client.post("/api/v1/resources", json=body, headers=bearer(key))
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert (
        "name" in response.json["error_description"]
        or "type" in (response.json["error_description"])
    )


def test_unexpected_failure_is_500_json_without_details(app, client, user, monkeypatch):
    key = issue_key(app, scopes=("api:read",))

    def explode(**_):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr("app.resources.list_resources", explode)
    response = client.get("/api/v1/resources", headers=bearer(key))
    assert response.status_code == 500
    assert response.json == {"error": "server_error", "error_description": "Internal server error"}
    assert "hunter2" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_ping_needs_no_key(client):
    response = client.get("/api/v1/ping")
    assert response.status_code == 200 and response.json == {"pong": True}


def test_options_is_json_too(client):
    response = client.options("/api/v1/me")
    assert response.status_code == 200 and response.is_json
    assert "GET" in response.json["allow"]


def test_non_json_body_on_a_bodiless_post_is_415(app, client, user):
    key = issue_key(app, scopes=("keys:write",))
    response = client.post(
        "/api/v1/tenant/acme/api-keys/abc/revoke", data="x", content_type="text/plain",
        headers=bearer(key),
    )  # fmt: skip
    assert response.status_code == 415 and response.is_json
