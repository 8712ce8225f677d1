"""SCIM 2.0 (/scim/v2/Users, RFC 7643/7644): the tenant's bearer token, list/filter/paging,
create, get, replace, patch and delete, errors as SCIM JSON, other tenants invisible; and
deactivation revoking keys and ending sessions at once, on every gunicorn worker."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from bs4 import BeautifulSoup
from sqlalchemy import select

from app.accounts import service as accounts
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.models import AuditEvent, ScimToken
from app.sso import scim
from tests.conftest import bearer, create_user, issue_key, login
from tests.servers import gunicorn, server_env

SCIM_JSON = "application/scim+json"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def make_token(app, tenant: str = "acme") -> str:
    with app.app_context():
        _, token = scim.create_token(
            tenant=accounts.get_tenant_by_slug(tenant), actor=Actor.cli(), now=utcnow()
        )
        db.session.commit()
    return token


@pytest.fixture
def token(app) -> str:
    create_user(app)  # alice, admin of acme
    return make_token(app)


def call(client, method: str, path: str, token: str | None, body=None, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    if data is not None:
        headers["Content-Type"] = SCIM_JSON
    return client.open(f"/scim/v2{path}", method=method, headers=headers, data=data)


def assert_scim_error(response, status: int, scim_type: str | None = None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == SCIM_JSON
    body = response.get_json(force=True)
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert body["status"] == str(status) and body["detail"]
    if scim_type:
        assert body["scimType"] == scim_type
    return body


def find(client, token, email):
    listed = call(client, "GET", f'/Users?filter=userName eq "{email}"', token).get_json(force=True)
    assert listed["totalResults"] == 1, listed
    return listed["Resources"][0]


def events(app, action):
    with app.app_context():
        rows = db.session.execute(select(AuditEvent).where(AuditEvent.action == action))
        return list(rows.scalars())


# --- the token ---------------------------------------------------------------------------


def test_the_admin_creates_the_token_once_and_a_new_one_ends_the_old(app, client):
    create_user(app)
    login(client)
    page = client.post("/admin/sso/scim-token")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    soup = BeautifulSoup(page.get_data(as_text=True), "html.parser")
    first = soup.find(id="scim-token")["value"]
    assert first.startswith("kds_") and len(first) == len("kds_") + 12 + 1 + 38
    assert soup.find(id="scim-url").get_text() == "http://localhost/scim/v2"
    assert call(client, "GET", "/Users", first).status_code == 200
    assert first not in client.get("/admin/sso").get_data(as_text=True)  # shown once

    second_page = client.post("/admin/sso/scim-token")
    second = BeautifulSoup(second_page.get_data(as_text=True), "html.parser").find(id="scim-token")
    second = second["value"]
    assert second != first
    assert_scim_error(call(client, "GET", "/Users", first), 401)
    assert call(client, "GET", "/Users", second).status_code == 200
    with app.app_context():
        rows = db.session.execute(select(ScimToken)).scalars().all()
        assert len(rows) == 2 and sum(r.revoked_at is None for r in rows) == 1
        for row in rows:  # only digests at rest
            assert row.digest not in (first.encode(), second.encode()) and len(row.digest) == 32
    created = events(app, "scim.token_created")
    assert len(created) == 2 and first not in created[0].details + created[1].details


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Basic abc", "Bearer kds_nope", "Bearer " + "x" * 5000],
)
def test_no_or_bad_token_is_401_scim_json(app, client, token, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/scim/v2/Users", headers=headers)
    assert_scim_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_with_a_flipped_character_or_another_prefix_is_refused(app, client, token):
    from app.keys import format as key_format

    body = token[:-6]
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B")
    assert_scim_error(call(client, "GET", "/Users", flipped + key_format.checksum(flipped)), 401)
    _, key_id, secret = key_format.parse(token)
    as_key = key_format.assemble("kd", key_id, secret)  # the same id and secret as an API key
    assert_scim_error(call(client, "GET", "/Users", as_key), 401)
    # ... and a SCIM token is no API key
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401


def test_an_api_key_or_a_browser_session_is_no_scim_credential(app, client, token):
    key = issue_key(app, scopes=("admin:all",))
    assert_scim_error(call(client, "GET", "/Users", key), 401)
    login(client)  # an admin's session cookie is present
    assert_scim_error(client.post("/scim/v2/Users", json={"userName": "x@example.com"}), 401)
    assert "Set-Cookie" not in client.get("/scim/v2/Users").headers


def test_unknown_scim_routes_answer_scim_json(app, client, token):
    assert_scim_error(call(client, "GET", "/Groups", token), 404)
    assert_scim_error(call(client, "POST", "/Users/x", token, {}), 405)
    config = client.get("/scim/v2/ServiceProviderConfig").get_json(force=True)
    assert config["patch"]["supported"] is True and config["filter"]["supported"] is True


# --- list ------------------------------------------------------------------------------


def test_list_filter_and_paging(app, client, token):
    for i in range(5):
        create_user(app, f"user{i}@example.com", role="member")
    everyone = call(client, "GET", "/Users", token).get_json(force=True)
    assert everyone["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:ListResponse"]
    assert everyone["totalResults"] == 6 and everyone["itemsPerPage"] == 6
    assert {r["userName"] for r in everyone["Resources"]} >= {"alice@example.com"}
    ids = [r["id"] for r in everyone["Resources"]]
    again = call(client, "GET", "/Users", token).get_json(force=True)
    assert [r["id"] for r in again["Resources"]] == ids  # stable ids

    page = call(client, "GET", "/Users?startIndex=2&count=2", token).get_json(force=True)
    assert page["startIndex"] == 2 and page["itemsPerPage"] == 2 and page["totalResults"] == 6
    assert [r["id"] for r in page["Resources"]] == ids[1:3]

    one = find(client, token, "USER3@example.com")  # userName is case-insensitive
    assert one["userName"] == "user3@example.com" and one["active"] is True
    assert one["meta"]["location"].endswith(f"/scim/v2/Users/{one['id']}")
    none = call(client, "GET", '/Users?filter=userName eq "nobody@example.com"', token)
    assert none.get_json(force=True)["totalResults"] == 0

    for query in ("startIndex=0&count=-5", f"startIndex={2**63}", f"count={2**31}"):
        assert call(client, "GET", f"/Users?{query}", token).status_code == 200, query
    capped = call(client, "GET", "/Users?count=100000", token).get_json(force=True)
    assert capped["itemsPerPage"] == 6
    empty = call(client, "GET", f"/Users?startIndex={2**63}", token).get_json(force=True)
    assert empty["Resources"] == [] and empty["totalResults"] == 6


@pytest.mark.parametrize(
    "query, scim_type",
    [
        ('filter=emails co "x"', "invalidFilter"),
        ("filter=userName eq x", "invalidFilter"),
        ('filter=userName eq "a" or userName eq "b"', "invalidFilter"),
        ('filter=userName eq "\\ud800"', "invalidFilter"),
        ('filter=userName eq "a\\u0000b"', "invalidFilter"),
        ("startIndex=abc", "invalidValue"),
        ("count=1.5", "invalidValue"),
        (f"count={10**20}", "invalidValue"),
        ("filter=" + "a" * 5000, "invalidFilter"),
    ],
)
def test_bad_list_queries_are_400(app, client, token, query, scim_type):
    assert_scim_error(call(client, "GET", f"/Users?{query}", token), 400, scim_type)


# --- create, get, replace -----------------------------------------------------------------


def test_create_get_and_replace(app, client, token):
    body = {
        "schemas": [scim.USER_SCHEMA],
        "userName": "Newbie@Example.com",
        "externalId": "okta-00u1",
        "name": {"givenName": "New", "familyName": "Bie"},
        "emails": [{"value": "newbie@example.com", "primary": True}],
        "active": True,
    }
    created = call(client, "POST", "/Users", token, body)
    assert created.status_code == 201 and created.mimetype == SCIM_JSON
    user = created.get_json(force=True)
    assert user["userName"] == "newbie@example.com" and user["externalId"] == "okta-00u1"
    assert created.headers["Location"] == user["meta"]["location"]
    with app.app_context():
        row = accounts.get_user_by_email("newbie@example.com")
        assert row.role == "member" and row.password_hash is None and row.tenant.slug == "acme"
    assert call(client, "GET", f"/Users/{user['id']}", token).get_json(force=True) == user

    duplicate = call(client, "POST", "/Users", token, body)
    assert_scim_error(duplicate, 409, "uniqueness")

    replaced = call(client, "PUT", f"/Users/{user['id']}", token,
                    {"userName": "renamed@example.com", "active": True})  # fmt: skip
    assert replaced.status_code == 200
    assert replaced.get_json(force=True)["userName"] == "renamed@example.com"
    assert "externalId" not in replaced.get_json(force=True)
    assert events(app, "scim.user_created") and events(app, "scim.user_renamed")


def test_another_tenants_user_is_404(app, client, token):
    create_user(app, "carol@globex.example", tenant="globex")
    globex = make_token(app, "globex")
    carol = find(client, globex, "carol@globex.example")
    for method, body in (("GET", None), ("PUT", {"userName": "x@example.com"}),
                         ("PATCH", {"Operations": [{"op": "replace", "path": "active",
                                                    "value": False}]}),
                         ("DELETE", None)):  # fmt: skip
        assert_scim_error(call(client, method, f"/Users/{carol['id']}", token, body), 404)
    acme_list = call(client, "GET", '/Users?filter=userName eq "carol@globex.example"', token)
    assert acme_list.get_json(force=True)["totalResults"] == 0
    with app.app_context():
        assert accounts.get_user_by_email("carol@globex.example").is_active
    for junk in ("nope", "9" * 30, str(2**63), "x" * 5000):
        assert_scim_error(call(client, "GET", f"/Users/{junk}", token), 404)


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'{"userName": "\\ud800@example.com"}', 400),
        (b'{"userName": "a\\u0000@example.com"}', 400),
        (b'{"userName": "ok@example.com\\u202e"}', 400),
        (b'{"userName": 12}', 400),
        (b'{"userName": ""}', 400),
        (b'{"userName": "' + b"a" * 300 + b'@example.com"}', 400),
        (b'{"userName": "ok@example.com", "active": "maybe"}', 400),
        (b'{"userName": "ok@example.com", "externalId": 5}', 400),
        (b"\xff\xfe", 400),
    ],
)
def test_bad_create_bodies_are_400_scim_json(app, client, token, raw, status):
    assert_scim_error(call(client, "POST", "/Users", token, raw=raw), status)


def test_a_huge_body_is_413_scim_json(app, client, token):
    huge = json.dumps({"userName": "a@example.com", "x": "y" * 70_000}).encode()
    assert_scim_error(call(client, "POST", "/Users", token, raw=huge), 413)


def test_create_needs_json(app, client, token):
    response = client.post(
        "/scim/v2/Users", headers={"Authorization": f"Bearer {token}"}, data={"userName": "x"}
    )
    assert_scim_error(response, 400)


# --- deactivation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "replace", "path": "active", "value": False}],
        [{"op": "Replace", "value": {"active": False}}],  # Entra ID sends this shape
        [{"op": "replace", "path": "active", "value": "False"}],
    ],
)
def test_patch_active_false_revokes_keys_and_ends_sessions_at_once(app, token, operations):
    create_user(app, "bob@example.com", role="member")
    key = issue_key(app, "bob@example.com", scopes=("api:read",))
    browser = app.test_client()
    login(browser, "bob@example.com")
    assert browser.get("/keys").status_code == 200
    idp = app.test_client()
    assert idp.get("/api/v1/me", headers=bearer(key)).status_code == 200

    bob = find(idp, token, "bob@example.com")
    patched = call(idp, "PATCH", f"/Users/{bob['id']}", token,
                   {"schemas": [scim.PATCH_SCHEMA], "Operations": operations})  # fmt: skip
    assert patched.status_code == 200 and patched.get_json(force=True)["active"] is False

    me = idp.get("/api/v1/me", headers=bearer(key))
    assert me.status_code == 401 and me.get_json()["error"] == "invalid_token"
    assert browser.get("/keys").status_code == 302  # the session ended
    assert login(browser, "bob@example.com").status_code == 401
    [deactivated] = events(app, "scim.user_deactivated")
    assert json.loads(deactivated.details)["keys_revoked"] == 1
    assert deactivated.actor.startswith("scim:") and token not in deactivated.details
    assert events(app, "member.deactivated")  # through the one deactivate function

    # Again: nothing more to do, still 200. Then back on: signs in again (keys stay revoked).
    again = call(idp, "PATCH", f"/Users/{bob['id']}", token, {"Operations": operations})
    assert again.status_code == 200
    on = [{"op": "replace", "path": "active", "value": True}]
    assert call(idp, "PATCH", f"/Users/{bob['id']}", token, {"Operations": on}).status_code == 200
    assert login(browser, "bob@example.com").status_code == 302
    assert idp.get("/api/v1/me", headers=bearer(key)).status_code == 401


def test_delete_deactivates_and_the_id_is_gone(app, client, token):
    create_user(app, "bob@example.com", role="member")
    key = issue_key(app, "bob@example.com")
    bob = find(client, token, "bob@example.com")
    deleted = call(client, "DELETE", f"/Users/{bob['id']}", token)
    assert deleted.status_code == 204 and deleted.get_data() == b""
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401
    assert_scim_error(call(client, "GET", f"/Users/{bob['id']}", token), 404)
    assert_scim_error(call(client, "DELETE", f"/Users/{bob['id']}", token), 404)
    listed = call(client, "GET", '/Users?filter=userName eq "bob@example.com"', token)
    assert listed.get_json(force=True)["totalResults"] == 0
    with app.app_context():  # kept for the audit log, deactivated
        assert not accounts.get_user_by_email("bob@example.com").is_active
    assert events(app, "scim.user_deleted")


def test_the_last_admin_cannot_be_deactivated(app, client, token):
    alice = find(client, token, "alice@example.com")
    ops = {"Operations": [{"op": "replace", "path": "active", "value": False}]}
    assert_scim_error(call(client, "PATCH", f"/Users/{alice['id']}", token, ops), 409)
    with app.app_context():
        assert accounts.get_user_by_email("alice@example.com").is_active


@pytest.mark.parametrize(
    "body, scim_type",
    [
        ({}, "invalidSyntax"),
        ({"Operations": []}, "invalidSyntax"),
        ({"Operations": "replace"}, "invalidSyntax"),
        ({"Operations": [{"op": "move", "path": "active", "value": False}]}, "invalidSyntax"),
        ({"Operations": [{"op": "replace", "path": "role", "value": "admin"}]}, "invalidPath"),
        ({"Operations": [{"op": "replace", "path": "active", "value": 0}]}, "invalidValue"),
        ({"Operations": [{"op": "replace", "value": "x"}]}, "invalidValue"),
        ({"Operations": [{"op": "remove", "path": "active"}]}, "mutability"),
        ({"Operations": [{"op": "replace", "path": 5, "value": 1}]}, "invalidPath"),
        ({"Operations": [{"op": "replace", "path": "userName", "value": "bad"}]}, "invalidValue"),
        ({"Operations": [{"op": "replace", "value": False}] * 101}, "invalidSyntax"),
    ],
)
def test_bad_patches_are_400_and_change_nothing(app, client, token, body, scim_type):
    create_user(app, "bob@example.com", role="member")
    bob = find(client, token, "bob@example.com")
    assert_scim_error(call(client, "PATCH", f"/Users/{bob['id']}", token, body), 400, scim_type)
    assert find(client, token, "bob@example.com")["active"] is True


def test_patch_ignores_profile_attributes_and_keeps_external_id(app, client, token):
    create_user(app, "bob@example.com", role="member")
    bob = find(client, token, "bob@example.com")
    ops = [
        {"op": "replace", "path": "name.givenName", "value": "Robert"},
        {"op": "add", "path": "externalId", "value": "ext-1"},
        {"op": "replace", "path": 'emails[type eq "work"].value', "value": "bob@example.com"},
        {"op": "replace", "path": f"{scim.USER_SCHEMA}:displayName", "value": "Bob"},
        {"op": "add", "path": f"{ENTERPRISE}:department", "value": "Ops"},
        {"op": "replace", "value": {ENTERPRISE: {"manager": {"value": "x"}}, "title": "Dev"}},
    ]
    patched = call(client, "PATCH", f"/Users/{bob['id']}", token, {"Operations": ops})
    assert patched.status_code == 200, patched.get_data(as_text=True)
    assert patched.get_json(force=True)["externalId"] == "ext-1"


def test_scim_changes_in_the_admin_audit_log(app, client, token):
    created = call(client, "POST", "/Users", token, {"userName": "temp@example.com"})
    temp = created.get_json(force=True)
    call(client, "DELETE", f"/Users/{temp['id']}", token)
    login(client)
    log = client.get("/admin/audit?format=json").get_json()
    actions = [e["action"] for e in (log["events"] if isinstance(log, dict) else log)]
    assert {"scim.user_created", "scim.user_deactivated", "scim.user_deleted"} <= set(actions)


# --- every worker ---------------------------------------------------------------------


def test_scim_deactivation_reaches_every_gunicorn_worker(app, database_url, tmp_path):
    """Deprovisioning through SCIM on one worker: the person's key answers 401 on every
    worker at its next call."""
    create_user(app)
    create_user(app, "bob@example.com", role="member")
    key = issue_key(app, "bob@example.com")
    token = make_token(app)
    with gunicorn(server_env(database_url), 3, tmp_path / "gunicorn.log") as server:
        pids_ok = _spread(server, key, 200, workers=3)
        assert len(pids_ok) == 3, "every worker served the key"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": SCIM_JSON}
        listed = requests.get(
            server.url + '/scim/v2/Users?filter=userName eq "bob@example.com"',
            headers=headers, timeout=30,
        ).json()  # fmt: skip
        bob = listed["Resources"][0]
        patched = requests.patch(
            f"{server.url}/scim/v2/Users/{bob['id']}",
            headers=headers,
            data=json.dumps({"Operations": [{"op": "replace", "path": "active", "value": False}]}),
            timeout=30,
        )
        assert patched.status_code == 200, patched.text
        assert len(_spread(server, key, 401, workers=3)) == 3, "every worker refused the key"


def _spread(server, key: str, expect: int, *, workers: int, timeout: float = 30) -> set[int]:
    """Call /api/v1/me until every worker has answered; every answer must be `expect`."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    start = len(server.access())

    def one(_: int) -> int:
        return requests.get(server.url + "/api/v1/me", headers=bearer(key), timeout=30).status_code

    pids: set[int] = set()
    with ThreadPoolExecutor(2 * workers) as pool:
        while time.monotonic() < deadline and len(pids) < workers:
            seen.extend(pool.map(one, range(2 * workers)))
            assert set(seen) == {expect}, seen
            pids = {
                pid
                for pid, status, path in server.access()[start:]
                if status == expect and path == "/api/v1/me"
            }
    return pids


def test_create_inactive_then_the_provider_sees_it_inactive(app, client, token):
    created = call(client, "POST", "/Users", token, {"userName": "later@example.com",
                                                     "active": False})  # fmt: skip
    assert created.status_code == 201 and created.get_json(force=True)["active"] is False
    with app.app_context():
        assert not accounts.get_user_by_email("later@example.com").is_active
