"""/api/v1/resources with user keys and with client keys issued by `flask client-keys`."""

from __future__ import annotations

import pytest

from tests.conftest import bearer, create_user, issue_key


@pytest.fixture
def rw_key(app, user) -> str:
    return issue_key(app, scopes=("api:read", "api:write"))


def test_create_list_get_delete(client, rw_key):
    created = client.post(
        "/api/v1/resources", json={"name": "db-1", "type": "database"}, headers=bearer(rw_key)
    )
    assert created.status_code == 201
    body = created.json
    assert set(body) == {"id", "name", "type", "created_at"}
    assert body["name"] == "db-1" and isinstance(body["created_at"], int)
    assert len(body["id"]) >= 16 and not body["id"].isdigit()

    listing = client.get("/api/v1/resources", headers=bearer(rw_key))
    assert [r["id"] for r in listing.json] == [body["id"]]
    assert client.get(f"/api/v1/resources/{body['id']}", headers=bearer(rw_key)).json == body
    same_tenant = client.get(f"/api/v1/resources/{body['id']}?tenant=acme", headers=bearer(rw_key))
    assert same_tenant.status_code == 200

    deleted = client.delete(f"/api/v1/resources/{body['id']}", headers=bearer(rw_key))
    assert deleted.status_code == 204 and deleted.data == b""
    assert client.get(f"/api/v1/resources/{body['id']}", headers=bearer(rw_key)).status_code == 404
    again = client.delete(f"/api/v1/resources/{body['id']}", headers=bearer(rw_key))
    assert again.status_code == 404 and again.json["error"] == "not_found"


def test_tenants_are_isolated(app, client, rw_key):
    create_user(app, "eve@evil.example", tenant="evil")
    eve = issue_key(app, "eve@evil.example", scopes=("api:read", "api:write"))
    mine = client.post(
        "/api/v1/resources", json={"name": "secret", "type": "t"}, headers=bearer(rw_key)
    ).json["id"]
    assert client.get("/api/v1/resources", headers=bearer(eve)).json == []
    assert client.get(f"/api/v1/resources/{mine}", headers=bearer(eve)).status_code == 404
    assert client.delete(f"/api/v1/resources/{mine}", headers=bearer(eve)).status_code == 404
    naming = client.get("/api/v1/resources?tenant=acme", headers=bearer(eve))
    assert naming.status_code == 404
    assert client.get(f"/api/v1/resources/{mine}", headers=bearer(rw_key)).status_code == 200


def test_read_scope_cannot_write(app, client, user):
    key = issue_key(app, scopes=("api:read",))
    assert client.get("/api/v1/resources", headers=bearer(key)).status_code == 200
    response = client.post(
        "/api/v1/resources", json={"name": "a", "type": "b"}, headers=bearer(key)
    )
    assert response.status_code == 403
    assert client.delete("/api/v1/resources/abc", headers=bearer(key)).status_code == 403


def test_client_key_lifecycle_through_the_cli(app, client, runner, rw_key):
    """`flask client-keys issue|list|revoke` end to end against the API."""
    create_user(app, "eve@evil.example", tenant="evil")
    issued = runner.invoke(args=["client-keys", "issue", "--name", "billing sync"])
    assert issued.exit_code == 0
    client_key = issued.output.strip()
    assert client_key.startswith("kd_") and "\n" not in client_key
    key_id = client_key.split("_")[1]

    me = client.get("/api/v1/me", headers=bearer(client_key)).json
    assert me["user"] is None and me["tenant"] is None and me["key"]["id"] == key_id

    no_tenant = client.get("/api/v1/resources", headers=bearer(client_key))
    assert no_tenant.status_code == 400 and no_tenant.json["error"] == "invalid_request"
    for slug in ("acme", "evil"):  # unscoped, every tenant
        made = client.post(
            f"/api/v1/resources?tenant={slug}", json={"name": slug, "type": "t"},
            headers=bearer(client_key),
        )  # fmt: skip
        assert made.status_code == 201
        listed = client.get(f"/api/v1/resources?tenant={slug}", headers=bearer(client_key))
        assert [r["name"] for r in listed.json] == [slug]
    assert (
        client.get("/api/v1/resources?tenant=nope", headers=bearer(client_key)).status_code == 404
    )
    # The user key sees what the client key made in its tenant, and only that.
    assert [r["name"] for r in client.get("/api/v1/resources", headers=bearer(rw_key)).json] == [
        "acme"
    ]

    listing = runner.invoke(args=["client-keys", "list"])
    assert listing.exit_code == 0
    line = next(line for line in listing.output.splitlines() if line.startswith(key_id))
    assert "active" in line and "billing sync" in line and "never" not in line
    assert client_key not in listing.output

    revoked = runner.invoke(args=["client-keys", "revoke", key_id])
    assert revoked.exit_code == 0
    response = client.get("/api/v1/resources?tenant=acme", headers=bearer(client_key))
    assert response.status_code == 401
    assert response.json["error_description"] == "API key has been revoked"
    assert "revoked" in runner.invoke(args=["client-keys", "list"]).output
    assert runner.invoke(args=["client-keys", "revoke", key_id]).exit_code != 0
    assert runner.invoke(args=["client-keys", "revoke", "nosuchkey"]).exit_code != 0
