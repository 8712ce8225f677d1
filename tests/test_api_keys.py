"""Key management through /api/v1/tenant/<slug>/api-keys/...: own keys only, scope subsets,
tenant policy, tenant isolation, rotation and revocation."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, Tenant
from tests.conftest import bearer, create_user, issue_key

BASE = "/api/v1/tenant/acme/api-keys"


@pytest.fixture
def admin_key(app, user) -> str:
    return issue_key(app, scopes=("keys:read", "keys:write", "api:read", "api:write"))


def create(client, key, slug="acme", **body):
    body.setdefault("name", "deploy bot")
    body.setdefault("scopes", ["api:read"])
    return client.post(f"/api/v1/tenant/{slug}/api-keys/create", json=body, headers=bearer(key))


def test_create_returns_the_key_once_and_it_works(client, admin_key):
    response = create(client, admin_key, expires_in_days=30)
    assert response.status_code == 201
    body = response.json
    assert {"id", "name", "api_key", "scopes", "created_at", "expires_at", "last_used",
            "revoked"} <= set(body)  # fmt: skip
    assert body["scopes"] == ["api:read"] and body["revoked"] is False
    assert body["expires_at"] - body["created_at"] == 30 * 86400
    assert response.headers["Cache-Control"] == "no-store"
    me = client.get("/api/v1/me", headers=bearer(body["api_key"]))
    assert me.status_code == 200 and me.json["key"]["id"] == body["id"]

    listing = client.get(f"{BASE}/list", headers=bearer(admin_key))
    assert listing.status_code == 200
    assert body["id"] in [k["id"] for k in listing.json]
    assert body["api_key"] not in listing.get_data(as_text=True)
    one = client.get(f"{BASE}/{body['id']}", headers=bearer(admin_key))
    assert one.status_code == 200 and "api_key" not in one.json
    assert one.json["name"] == "deploy bot"


def test_create_writes_an_audit_event_naming_the_calling_key(app, client, admin_key):
    body = create(client, admin_key).json
    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.target == body["id"])
        ).scalar_one()
    assert event.action == "key.issued"
    assert event.actor_type == "key" and event.actor == admin_key.split("_")[1]
    assert body["api_key"] not in event.details


def test_new_key_scopes_must_be_a_subset_of_the_callers(client, admin_key):
    response = create(client, admin_key, scopes=["api:read", "deploy:production"])
    assert response.status_code == 400
    assert "deploy:production" in response.json["error_description"]


def test_admin_all_may_create_any_scope(app, client, user):
    key = issue_key(app, scopes=("admin:all",))
    assert create(client, key, scopes=["deploy:production", "billing:manage"]).status_code == 201


@pytest.mark.parametrize(
    "body",
    [{"name": ""}, {"name": "x" * 101}, {"scopes": []}, {"scopes": ["nope:nope"]},
     {"scopes": "api:read"}, {"expires_in_days": -1}, {"expires_in_days": "30"},
     {"expires_in_days": 1.5}, {"allowed_ips": ["999.1.1.1"]}, {"allowed_ips": "10.0.0.0/8"}],
)  # fmt: skip
def test_create_rejects_bad_input(client, admin_key, body):
    response = create(client, admin_key, **body)
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_request"


def test_create_enforces_tenant_policy_with_a_clear_message(app, client, admin_key):
    with app.app_context():
        tenant = db.session.execute(select(Tenant)).scalar_one()
        tenant.max_key_lifetime_days = 90
        db.session.commit()
    response = create(client, admin_key, expires_in_days=0)
    assert response.status_code == 400
    assert response.json["error"] == "policy_violation"
    assert "90 days" in response.json["error_description"]
    assert create(client, admin_key, expires_in_days=90).status_code == 201


def test_member_policy_limits_scopes(app, client):
    create_user(app, "bob@example.com", role="member")
    with app.app_context():
        tenant = db.session.execute(select(Tenant)).scalar_one()
        tenant.member_scopes = "api:read keys:read keys:write"
        db.session.commit()
    key = issue_key(app, "bob@example.com", scopes=("keys:write",))
    response = create(client, key, scopes=["keys:write"])
    assert response.status_code == 201
    with app.app_context():
        tenant = db.session.execute(select(Tenant)).scalar_one()
        tenant.member_scopes = "api:read"
        db.session.commit()
    response = create(client, key, scopes=["keys:write"])
    assert response.status_code == 400 and response.json["error"] == "policy_violation"
    assert "keys:write" in response.json["error_description"]


def test_allowed_ips_are_stored_normalized_and_enforced(client, admin_key):
    body = create(client, admin_key, allowed_ips=["192.0.2.7", "2001:db8::/32"]).json
    assert body["allowed_ips"] == ["192.0.2.7/32", "2001:db8::/32"]
    new = bearer(body["api_key"])
    assert client.get("/api/v1/me", headers=new).status_code == 403
    ok = client.get("/api/v1/me", headers=new, environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert ok.status_code == 200


def test_another_tenants_slug_is_404_and_other_users_keys_are_invisible(app, client, admin_key):
    create_user(app, "eve@evil.example", tenant="evil")
    eve_key = issue_key(app, "eve@evil.example", scopes=("keys:read", "keys:write"))
    create_user(app, "carol@example.com", role="member")
    carol_key = issue_key(app, "carol@example.com", scopes=("keys:read", "keys:write"))
    mine = create(client, admin_key).json["id"]

    assert create(client, eve_key, slug="acme").status_code == 404
    assert client.get(f"{BASE}/list", headers=bearer(eve_key)).status_code == 404
    assert client.get(f"{BASE}/{mine}", headers=bearer(eve_key)).status_code == 404
    assert (
        client.get("/api/v1/tenant/nope/api-keys/list", headers=bearer(eve_key)).status_code == 404
    )
    # Same tenant, another user: their keys are not "own" keys.
    assert client.get(f"{BASE}/{mine}", headers=bearer(carol_key)).status_code == 404
    revoke = client.post(f"{BASE}/{mine}/revoke", headers=bearer(carol_key))
    assert revoke.status_code == 404
    assert mine not in [k["id"] for k in client.get(f"{BASE}/list", headers=bearer(carol_key)).json]


def test_revoke_own_key(client, admin_key):
    new = create(client, admin_key).json
    response = client.post(f"{BASE}/{new['id']}/revoke", headers=bearer(admin_key))
    assert response.status_code == 200
    assert response.json == {"success": True, "message": "API key revoked successfully"}
    assert client.get("/api/v1/me", headers=bearer(new["api_key"])).status_code == 401
    again = client.post(f"{BASE}/{new['id']}/revoke", headers=bearer(admin_key))
    assert again.status_code == 409 and again.json["error"] == "conflict"
    listed = client.get(f"{BASE}/{new['id']}", headers=bearer(admin_key)).json
    assert listed["revoked"] is True and listed["status"] == "revoked"


def test_rotate_gives_a_successor_and_a_grace_period(client, admin_key):
    old = create(client, admin_key, scopes=["api:read"], expires_in_days=30).json
    response = client.post(
        f"{BASE}/{old['id']}/rotate", json={"grace_hours": 2}, headers=bearer(admin_key)
    )
    assert response.status_code == 201
    new = response.json
    assert new["id"] != old["id"] and new["name"] == old["name"]
    assert new["scopes"] == old["scopes"] and new["api_key"].startswith("kd_")
    assert client.get("/api/v1/me", headers=bearer(new["api_key"])).status_code == 200
    assert client.get("/api/v1/me", headers=bearer(old["api_key"])).status_code == 200  # grace
    again = client.post(f"{BASE}/{old['id']}/rotate", json={}, headers=bearer(admin_key))
    assert again.status_code == 409


def test_rotate_without_grace_ends_the_old_key_at_once(client, admin_key):
    old = create(client, admin_key).json
    client.post(f"{BASE}/{old['id']}/rotate", json={"grace_hours": 0}, headers=bearer(admin_key))
    response = client.get("/api/v1/me", headers=bearer(old["api_key"]))
    assert response.status_code == 401
    assert response.json["error_description"] == "API key has been revoked"


@pytest.mark.parametrize("grace", [-1, 169, "2", True])
def test_rotate_rejects_bad_grace(client, admin_key, grace):
    old = create(client, admin_key).json
    response = client.post(
        f"{BASE}/{old['id']}/rotate", json={"grace_hours": grace}, headers=bearer(admin_key)
    )
    assert response.status_code == 400


def test_rotate_refuses_keys_broader_than_the_caller(app, client, user):
    broad = issue_key(app, scopes=("deploy:production",), name="broad")
    narrow = issue_key(app, scopes=("keys:read", "keys:write"))
    broad_id = broad.split("_")[1]
    response = client.post(f"{BASE}/{broad_id}/rotate", json={}, headers=bearer(narrow))
    assert response.status_code == 400
    assert "deploy:production" in response.json["error_description"]
    assert client.get("/api/v1/me", headers=bearer(broad)).status_code == 200


def test_scopes_are_required_per_route(app, client, user):
    read_only = issue_key(app, scopes=("keys:read",))
    assert client.get(f"{BASE}/list", headers=bearer(read_only)).status_code == 200
    response = create(client, read_only)
    assert (
        response.status_code == 403
        and 'scope="keys:write"' in (response.headers["WWW-Authenticate"])
    )
    api_only = issue_key(app, scopes=("api:read",))
    assert client.get(f"{BASE}/list", headers=bearer(api_only)).status_code == 403


def test_client_keys_own_no_keys(app, client, user, runner):
    client_key = runner.invoke(args=["client-keys", "issue", "--name", "ops"]).output.strip()
    assert client.get(f"{BASE}/list", headers=bearer(client_key)).status_code == 403
    assert create(client, client_key).status_code == 403
    missing = client.get("/api/v1/tenant/nope/api-keys/list", headers=bearer(client_key))
    assert missing.status_code == 404


def _restricted_key(app, *, ips: str | None, days: int) -> str:
    """A keys:write key owned by alice with the given allow-list and lifetime."""
    from app.accounts import service as accounts
    from app.audit import Actor
    from app.clock import utcnow
    from app.keys import service as keys

    with app.app_context():
        _, full = keys.issue_key(
            user=accounts.get_user_by_email("alice@example.com"), name="restricted",
            scopes=("keys:write", "keys:read", "api:read"), expires_in_days=days,
            allowed_ips=ips, now=utcnow(), actor=Actor.cli(),
        )  # fmt: skip
        db.session.commit()
    return full


def test_a_key_cannot_mint_a_key_wider_than_itself(app, client, user):
    parent = _restricted_key(app, ips="127.0.0.0/8", days=30)
    # no allow-list given: the parent's is inherited
    inherited = create(client, parent, name="child", scopes=["api:read"], expires_in_days=7)
    assert inherited.status_code == 201 and inherited.json["allowed_ips"] == ["127.0.0.0/8"]
    # a narrower one is fine, a wider one is refused
    narrow = create(client, parent, name="c2", scopes=["api:read"], expires_in_days=7,
                    allowed_ips=["127.0.0.1/32"])  # fmt: skip
    assert narrow.status_code == 201
    wide = create(client, parent, name="c3", scopes=["api:read"], expires_in_days=7,
                  allowed_ips=["0.0.0.0/0"])  # fmt: skip
    assert wide.status_code == 400 and "outside the creating key" in wide.json["error_description"]
    # an expiring key cannot create one that never expires, or outlives it
    for days in (0, 31):
        late = create(client, parent, name="c4", scopes=["api:read"], expires_in_days=days)
        assert late.status_code == 400
        assert "expire no later than itself" in late.json["error_description"]


def test_a_restricted_key_cannot_rotate_an_unrestricted_one(app, client, user):
    parent = _restricted_key(app, ips="127.0.0.0/8", days=0)
    wide = issue_key(app, scopes=("api:read",))
    key_id = wide.split("_")[1]
    response = client.post(
        f"/api/v1/tenant/acme/api-keys/{key_id}/rotate", json={"grace_hours": 0},
        headers=bearer(parent),
    )  # fmt: skip
    assert response.status_code == 400
    assert client.get("/api/v1/me", headers=bearer(wide)).status_code == 200
