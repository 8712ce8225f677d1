"""/api/v1/keys/verify (Keydesk as key authority) and /api/v1/keys/report-leak."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import service as keys
from app.models import ApiKey, AuditEvent
from tests.conftest import bearer, create_user, issue_key, login


@pytest.fixture
def verifier(app, user) -> str:
    return issue_key(app, scopes=("keys:verify",), name="gateway")


def verify(client, caller, token):
    return client.post("/api/v1/keys/verify", json={"key": token}, headers=bearer(caller))


def _row(key: str) -> ApiKey:
    return db.session.execute(select(ApiKey).where(ApiKey.key_id == key.split("_")[1])).scalar_one()


def test_valid_key(app, client, verifier):
    target = issue_key(app, scopes=("api:read", "deploy:staging"), days=10)
    response = verify(client, verifier, target)
    assert response.status_code == 200
    body = response.json
    assert body["valid"] is True and body["key_id"] == target.split("_")[1]
    assert body["owner"] == "alice@example.com" and body["tenant"] == "acme"
    assert body["scopes"] == ["api:read", "deploy:staging"]
    assert isinstance(body["expires_at"], int)
    assert target not in response.get_data(as_text=True)


def test_invalid_expired_revoked(app, client, verifier):
    assert verify(client, verifier, "kd_garbage").json == {"valid": False, "reason": "invalid"}
    assert verify(client, verifier, "").json == {"valid": False, "reason": "invalid"}
    expired = issue_key(app, days=1)
    revoked = issue_key(app)
    leaked = issue_key(app)
    rotated = issue_key(app)
    in_grace = issue_key(app)
    now = utcnow()
    with app.app_context():
        db.session.execute(
            update(ApiKey)
            .where(ApiKey.key_id == expired.split("_")[1])
            .values(expires_at=now - timedelta(seconds=1))
        )
        keys.revoke_key(key=_row(revoked), now=now, actor=Actor.cli())
        keys.revoke_key(key=_row(leaked), now=now, actor=Actor.cli(), reason="leaked")
        keys.rotate_key(key=_row(rotated), grace_hours=0, now=now, actor=Actor.cli())
        keys.rotate_key(key=_row(in_grace), grace_hours=5, now=now, actor=Actor.cli())
        db.session.commit()
    assert verify(client, verifier, expired).json == {"valid": False, "reason": "expired"}
    for token in (revoked, leaked, rotated):
        assert verify(client, verifier, token).json == {"valid": False, "reason": "revoked"}
    assert verify(client, verifier, in_grace).json["valid"] is True


def test_user_key_verifies_only_its_own_tenant(app, client, verifier, runner):
    create_user(app, "eve@evil.example", tenant="evil")
    foreign = issue_key(app, "eve@evil.example")
    assert verify(client, verifier, foreign).json == {"valid": False, "reason": "invalid"}
    client_key = runner.invoke(args=["client-keys", "issue", "--name", "gw"]).output.strip()
    assert verify(client, verifier, client_key).json == {"valid": False, "reason": "invalid"}


def test_client_key_verifies_any_tenant_and_client_keys(app, client, runner, user):
    create_user(app, "eve@evil.example", tenant="evil")
    foreign = issue_key(app, "eve@evil.example", scopes=("api:write",))
    client_key = runner.invoke(args=["client-keys", "issue", "--name", "gw"]).output.strip()
    body = verify(client, client_key, foreign).json
    assert body["valid"] is True and body["tenant"] == "evil"
    assert body["owner"] == "eve@evil.example" and body["scopes"] == ["api:write"]
    itself = verify(client, client_key, client_key).json
    assert itself["valid"] is True and itself["owner"] is None and itself["tenant"] is None


def test_verify_needs_the_scope_and_a_well_formed_body(app, client, user, verifier):
    other = issue_key(app, scopes=("api:read",))
    response = verify(client, other, other)
    assert response.status_code == 403
    assert 'scope="keys:verify"' in response.headers["WWW-Authenticate"]
    for body in ({}, {"key": 5}, {"key": None}):
        response = client.post("/api/v1/keys/verify", json=body, headers=bearer(verifier))
        assert response.status_code == 400 and response.json["error"] == "invalid_request"


def report(client, body=None, **kwargs):
    return client.post("/api/v1/keys/report-leak", json=body, **kwargs)


def test_report_leak_revokes_at_once_with_status_leaked(app, client, user):
    leaked = issue_key(app, scopes=("api:read",))
    assert client.get("/api/v1/me", headers=bearer(leaked)).status_code == 200
    url = "https://github.com/acme/app/blob/main/.env"
    response = report(client, {"key": leaked, "source_url": url})
    assert response.status_code == 202 and response.json["accepted"] is True
    refused = client.get("/api/v1/me", headers=bearer(leaked))
    assert refused.status_code == 401
    assert refused.json["error_description"] == "API key has been revoked"
    with app.app_context():
        row = _row(leaked)
        assert row.revoke_reason == "leaked"
        assert keys.status_of(row, utcnow()) == "leaked"
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "key.leaked")
        ).scalar_one()
        assert event.target == row.key_id and event.tenant_id == row.tenant_id
        assert json.loads(event.details)["source_url"] == url
        assert leaked.split("_")[2] not in event.details
    # The owner sees it in the portal list, marked leaked.
    login(client)
    assert "leaked" in client.get("/keys").get_data(as_text=True)


def test_report_leak_is_always_202_and_no_oracle(app, client, user):
    genuine = issue_key(app)
    prefix, key_id, rest = genuine.split("_")
    forged = keys.keyformat.assemble(prefix, key_id, "Z" * 32)  # right id, wrong secret
    answers = set()
    for kwargs in (
        {"data": "garbage", "content_type": "text/plain"},
        {"data": "{not json", "content_type": "application/json"},
        {"json": []},
        {"json": {}},
        {"json": {"key": 42}},
        {"json": {"key": "kd_nope", "source_url": "x"}},
        {"json": {"key": forged, "source_url": "x"}},
    ):
        response = client.post("/api/v1/keys/report-leak", **kwargs)
        assert response.status_code == 202, kwargs
        answers.add(response.get_data())
    assert len(answers) == 1
    # Knowing the public key id is not enough to revoke someone's key.
    assert client.get("/api/v1/me", headers=bearer(genuine)).status_code == 200
    first = report(client, {"key": genuine})
    second = report(client, {"key": genuine})  # already revoked
    assert first.status_code == second.status_code == 202
    assert first.get_data() == second.get_data() == answers.pop()
    with app.app_context():
        assert len(db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "key.leaked")
        ).all()) == 1  # fmt: skip


@pytest.mark.parametrize("app_config", [{"KEYDESK_LEAK_REPORT_LIMIT": "3 per minute"}])
def test_report_leak_is_rate_limited_per_ip(client):
    for _ in range(3):
        assert report(client, {"key": "x"}).status_code == 202
    limited = report(client, {"key": "x"})
    assert limited.status_code == 429 and limited.json["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    other_ip = report(client, {"key": "x"}, environ_base={"REMOTE_ADDR": "198.51.100.9"})
    assert other_ip.status_code == 202
