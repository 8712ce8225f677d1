"""Issue 13.5, SPEC "Keys after creation": /keys/<id>/edit, a custom date on /keys/new and
PATCH /api/v1/tenant/<slug>/api-keys/<id>, under the rules a new key meets."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select

from app.clock import utcnow
from app.extensions import db
from app.models import ApiKey, AuditEvent, Tenant
from tests.conftest import bearer, create_user, issue_key, login

BASE = "/api/v1/tenant/acme/api-keys"


def row(app, key_id: str) -> ApiKey:
    with app.app_context():
        key = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()
        db.session.expunge(key)
        return key


def events(app, action: str) -> list[dict]:
    with app.app_context():
        found = db.session.execute(select(AuditEvent).where(AuditEvent.action == action))
        return [json.loads(e.details) for e in found.scalars()]


def set_policy(app, *, days=0, require=False, member_scopes=None):
    with app.app_context():
        tenant = db.session.execute(select(Tenant)).scalars().first()
        tenant.max_key_lifetime_days, tenant.require_expiry = days, require
        tenant.member_scopes = member_scopes
        db.session.commit()


def field_error(response, name: str) -> str:
    error = BeautifulSoup(response.get_data(as_text=True), "html.parser").find(id=f"{name}-error")
    assert error is not None, f"no error shown at {name}"
    return error.get_text(" ", strip=True)


# --- portal --------------------------------------------------------------------------


def edit_data(**changes) -> dict:
    data = {"name": "renamed", "description": "", "scopes": ["api:read"], "expires_on": "",
            "allowed_ips": ""}  # fmt: skip
    data.update(changes)
    return data


def test_edit_page_is_prefilled_and_saves_every_field_with_old_to_new_audit(app, signed_in):
    key_id = issue_key(app, days=30, scopes=("api:read",), name="first name").split("_")[1]
    page = BeautifulSoup(
        signed_in.get(f"/keys/{key_id}/edit").get_data(as_text=True), "html.parser"
    )
    assert page.find("input", attrs={"name": "name"})["value"] == "first name"
    expiry = page.find("input", attrs={"name": "expires_on"})
    assert (
        expiry["type"] == "date"
        and expiry["value"] == row(app, key_id).expires_at.date().isoformat()
    )
    new_day = (utcnow() + timedelta(days=10)).date()
    response = signed_in.post(
        f"/keys/{key_id}/edit",
        data=edit_data(name="CI deploy", description="used by the nightly job",
                       scopes=["api:read", "api:write"], expires_on=new_day.isoformat(),
                       allowed_ips="10.0.0.0/8\n192.0.2.7"),
    )  # fmt: skip
    assert response.status_code == 302 and response.location.endswith(f"/keys/{key_id}")
    key = row(app, key_id)
    assert key.name == "CI deploy" and key.description == "used by the nightly job"
    assert key.scopes == "api:read api:write" and key.allowed_ips == "10.0.0.0/8 192.0.2.7/32"
    assert key.expires_at.date() == new_day
    assert key.expires_at.time() == key.created_at.time()  # that day, at the time of creation
    (event,) = events(app, "key.updated")
    assert event["before"]["name"] == "first name" and event["after"]["name"] == "CI deploy"
    assert event["before"]["scopes"] == ["api:read"]
    assert event["after"]["scopes"] == ["api:read", "api:write"]
    assert isinstance(event["after"]["expires_at"], int)  # Unix seconds (issue 13.11)
    detail = signed_in.get(f"/keys/{key_id}").get_data(as_text=True)
    assert "used by the nightly job" in detail
    # The audit page shows old → new.
    audit = signed_in.get("/admin/audit?action=key.updated").get_data(as_text=True)
    assert "first name → CI deploy" in audit


def test_empty_date_means_never_where_the_policy_allows(app, signed_in):
    key_id = issue_key(app, days=30).split("_")[1]
    assert signed_in.post(f"/keys/{key_id}/edit", data=edit_data()).status_code == 302
    assert row(app, key_id).expires_at is None
    set_policy(app, require=True)
    key_id = issue_key(app, days=30).split("_")[1]
    refused = signed_in.post(f"/keys/{key_id}/edit", data=edit_data())
    assert refused.status_code == 400
    assert "requires every key to expire" in field_error(refused, "expires_on")
    assert row(app, key_id).expires_at is not None


def test_edit_keeps_the_policy_lifetime_counted_from_creation(app, signed_in):
    set_policy(app, days=30)
    key_id = issue_key(app, days=30).split("_")[1]
    later = (utcnow() + timedelta(days=31)).date().isoformat()
    refused = signed_in.post(f"/keys/{key_id}/edit", data=edit_data(expires_on=later))
    assert refused.status_code == 400
    assert "30 days" in field_error(refused, "expires_on")
    sooner = (utcnow() + timedelta(days=5)).date().isoformat()
    assert (
        signed_in.post(f"/keys/{key_id}/edit", data=edit_data(expires_on=sooner)).status_code == 302
    )


def test_a_member_cannot_grant_a_scope_the_policy_keeps_from_members(app, client, user):
    create_user(app, "bob@example.com", role="member")
    set_policy(app, member_scopes="api:read")
    key_id = issue_key(app, "bob@example.com").split("_")[1]
    login(client, "bob@example.com")
    page = BeautifulSoup(client.get(f"/keys/{key_id}/edit").get_data(as_text=True), "html.parser")
    offered = [b["value"] for b in page.find_all("input", attrs={"name": "scopes"})]
    assert offered == ["api:read"]
    refused = client.post(
        f"/keys/{key_id}/edit", data=edit_data(scopes=["api:read", "deploy:production"])
    )
    assert refused.status_code == 400
    assert "does not let members grant: deploy:production" in field_error(refused, "scopes")
    assert row(app, key_id).scopes == "api:read"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"name": ""}, "name", "name"),
        ({"name": "x" * 101}, "name", "100"),
        ({"description": "d" * 101}, "description", "100"),
        ({"description": "zero\u200bwidth"}, "description", "zero-width"),
        ({"description": "bell\x07"}, "description", "control"),
        ({"scopes": []}, "scopes", "at least one scope"),
        ({"scopes": ["root:everything"]}, "scopes", "root:everything"),
        ({"expires_on": "31/12/2027"}, "expires_on", "YYYY-MM-DD"),
        ({"expires_on": "9999-12-31"}, "expires_on", "3650"),
        ({"expires_on": "2000-01-01"}, "expires_on", "future"),
        ({"allowed_ips": "not-an-ip"}, "allowed_ips", "not-an-ip"),
    ],
)
def test_bad_edits_are_400_naming_the_field(app, signed_in, changes, field, message):
    key_id = issue_key(app, days=30, name="kept").split("_")[1]
    response = signed_in.post(f"/keys/{key_id}/edit", data=edit_data(**changes))
    assert response.status_code == 400
    assert message.lower() in field_error(response, field).lower()
    assert row(app, key_id).name == "kept"


def test_only_your_own_working_keys_can_be_edited(app, client, user):
    create_user(app, "eve@other.example", tenant="other")
    foreign = issue_key(app, "eve@other.example").split("_")[1]
    login(client)
    assert client.get(f"/keys/{foreign}/edit").status_code == 404
    assert client.post(f"/keys/{foreign}/edit", data=edit_data()).status_code == 404
    assert client.get(f"/keys/{'9' * 40}/edit").status_code == 404
    key_id = issue_key(app).split("_")[1]
    client.post(f"/keys/{key_id}/rotate", data={"grace_hours": "24"})
    assert client.get(f"/keys/{key_id}/edit").status_code == 302  # rotated: no edits
    assert client.post(f"/keys/{key_id}/edit", data=edit_data()).status_code == 302
    assert row(app, key_id).name == "test key"


def test_edit_needs_csrf(app, tmp_path):
    from tests.conftest import make_app

    csrf_app = make_app(tmp_path, WTF_CSRF_ENABLED=True)
    create_user(csrf_app)
    key_id = issue_key(csrf_app).split("_")[1]
    client = csrf_app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = BeautifulSoup(page, "html.parser").find("input", attrs={"name": "csrf_token"})["value"]
    from tests.conftest import PASSWORD

    client.post(
        "/login", data={"email": "alice@example.com", "password": PASSWORD, "csrf_token": token}
    )
    assert client.post(f"/keys/{key_id}/edit", data=edit_data()).status_code == 400
    assert row(csrf_app, key_id).name == "test key"


def test_new_key_with_a_custom_date(app, signed_in):
    day = (utcnow() + timedelta(days=45)).date()
    response = signed_in.post(
        "/keys/new",
        data={"name": "custom", "scopes": ["api:read"], "expires_in_days": "custom",
              "expires_on": day.isoformat()},
    )  # fmt: skip
    assert response.status_code == 200 and "new-key-secret" in response.get_data(as_text=True)
    with app.app_context():
        key = db.session.execute(select(ApiKey)).scalar_one()
        assert key.expires_at.date() == day
        assert key.expires_at - key.created_at == timedelta(days=45)


@pytest.mark.parametrize(
    ("expires_on", "message"),
    [("", "Choose the date"), ("2000-01-01", "after today"), ("tomorrow", "YYYY-MM-DD")],
)
def test_custom_date_refusals_name_the_date_field(app, signed_in, expires_on, message):
    data = {
        "name": "c",
        "scopes": ["api:read"],
        "expires_in_days": "custom",
        "expires_on": expires_on,
    }
    response = signed_in.post("/keys/new", data=data)
    assert response.status_code == 400
    assert message in field_error(response, "expires_on")


def test_custom_date_beyond_the_policy_is_refused_at_the_date(app, signed_in):
    set_policy(app, days=30)
    day = (utcnow() + timedelta(days=31)).date().isoformat()
    data = {"name": "c", "scopes": ["api:read"], "expires_in_days": "custom", "expires_on": day}
    response = signed_in.post("/keys/new", data=data)
    assert response.status_code == 400
    assert "30 days" in field_error(response, "expires_on")


# --- API -----------------------------------------------------------------------------


@pytest.fixture
def manager(app, user) -> str:
    return issue_key(app, scopes=("keys:read", "keys:write", "api:read", "api:write"), days=60)


def patch(client, key, key_id, slug="acme", **body):
    return client.patch(f"/api/v1/tenant/{slug}/api-keys/{key_id}", json=body, headers=bearer(key))


def test_patch_changes_fields_and_answers_with_the_key(app, client, manager):
    target = issue_key(app, scopes=("api:read",), days=30, name="old").split("_")[1]
    end = int((utcnow() + timedelta(days=20)).timestamp())
    response = patch(client, manager, target, name="new", description="for the CI",
                     scopes=["api:read", "api:write"], expires_at=end,
                     allowed_ips=["10.1.0.0/16"])  # fmt: skip
    assert response.status_code == 200, response.json
    body = response.json
    assert body["id"] == target and body["name"] == "new" and body["description"] == "for the CI"
    assert body["scopes"] == ["api:read", "api:write"] and body["expires_at"] == end
    assert body["allowed_ips"] == ["10.1.0.0/16"] and "api_key" not in body
    (event,) = events(app, "key.updated")
    assert event["after"]["expires_at"] == end and event["before"]["name"] == "old"
    cleared = patch(client, manager, target, description=None, allowed_ips=None)
    assert cleared.status_code == 200
    assert cleared.json["description"] is None and cleared.json["allowed_ips"] is None


def test_a_key_may_not_widen_itself_or_another(app, client, manager):
    me = manager.split("_")[1]
    wider = patch(client, manager, me, scopes=["keys:read", "keys:write", "admin:all"])
    assert wider.status_code == 400 and "admin:all" in wider.json["error_description"]
    longer = patch(client, manager, me, expires_at=None)
    assert longer.status_code == 400 and "no later than itself" in longer.json["error_description"]
    beyond = int((utcnow() + timedelta(days=90)).timestamp())
    assert patch(client, manager, me, expires_at=beyond).status_code == 400
    other = issue_key(app, scopes=("deploy:production",)).split("_")[1]
    # another key already holding a scope the caller lacks: its scopes cannot be changed to it
    assert (
        patch(client, manager, other, scopes=["deploy:production", "api:read"]).status_code == 400
    )
    narrower = patch(client, manager, me, scopes=["keys:read", "keys:write"])
    assert narrower.status_code == 200 and narrower.json["scopes"] == ["keys:read", "keys:write"]
    assert row(app, me).scopes == "keys:read keys:write"


def test_patch_respects_the_callers_allow_list(app, client, user):
    key = issue_key(app, scopes=("keys:write",))
    with app.app_context():
        k = db.session.execute(select(ApiKey)).scalar_one()
        k.allowed_ips = "127.0.0.0/8"
        db.session.commit()
    target = issue_key(app, scopes=("api:read",)).split("_")[1]
    with app.app_context():
        t = db.session.execute(select(ApiKey).where(ApiKey.key_id == target)).scalar_one()
        t.allowed_ips = "127.0.0.1/32"
        db.session.commit()
    env = {"REMOTE_ADDR": "127.0.0.1"}
    url = f"{BASE}/{target}"
    assert (
        client.patch(
            url, json={"allowed_ips": None}, headers=bearer(key), environ_base=env
        ).status_code
        == 400
    )
    outside = client.patch(
        url, json={"allowed_ips": ["10.0.0.0/8"]}, headers=bearer(key), environ_base=env
    )
    assert outside.status_code == 400 and "allow-list" in outside.json["error_description"]
    inside = client.patch(
        url, json={"allowed_ips": ["127.0.0.1"]}, headers=bearer(key), environ_base=env
    )
    assert inside.status_code == 200


def test_patch_applies_the_tenant_policy(app, client, manager):
    target = issue_key(app, days=0).split("_")[1]  # made before the policy
    set_policy(app, days=30, require=True)
    too_long = int((utcnow() + timedelta(days=40)).timestamp())
    refused = patch(client, manager, target, expires_at=too_long)
    assert refused.status_code == 400 and refused.json["field"] == "expires_at"
    assert "30 days" in refused.json["error_description"]
    assert row(app, target).expires_at is None
    ok = patch(client, manager, target, name="still allowed")  # unchanged expiry passes
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"name": None}, "name"),
        ({"description": ["x"]}, "description"),
        ({"description": "z\u200b"}, "description"),
        ({"scopes": "api:read"}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"scopes": [1]}, "scopes"),
        ({"scopes": None}, "scopes"),
        ({"description": 5}, "description"),
        ({"expires_at": 1.5}, "expires_at"),
        ({"allowed_ips": [1]}, "allowed_ips"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_at": True}, "expires_at"),
        ({"expires_at": 2**63}, "expires_at"),
        ({"expires_at": -1}, "expires_at"),
        ({"expires_at": 1e30}, "expires_at"),
        ({"expires_at": 1000}, "expires_at"),
        ({"allowed_ips": ["300.1.1.1"]}, "allowed_ips"),
        ({"allowed_ips": "10.0.0.1"}, "allowed_ips"),
        ({"owner": "eve@example.com"}, "owner"),
        ({}, None),
    ],
)
def test_bad_patches_are_400_naming_the_field(app, client, manager, body, field):
    target = issue_key(app, days=30, name="kept").split("_")[1]
    response = patch(client, manager, target, **body)
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_request"
    assert response.json.get("field") == field
    assert row(app, target).name == "kept"


def test_patch_bodies_that_are_not_json_objects(app, client, manager):
    target = issue_key(app).split("_")[1]
    url = f"{BASE}/{target}"
    assert (
        client.patch(
            url, data="[1]", content_type="application/json", headers=bearer(manager)
        ).status_code
        == 400
    )
    assert client.patch(url, data="name=x", headers=bearer(manager)).status_code == 415


def test_patch_needs_keys_write_and_finds_only_the_owners_keys(app, client, manager):
    reader = issue_key(app, scopes=("keys:read",))
    target = issue_key(app).split("_")[1]
    assert patch(client, reader, target, name="x").status_code == 403
    create_user(app, "bob@example.com", role="member")
    bobs = issue_key(app, "bob@example.com").split("_")[1]
    assert patch(client, manager, bobs, name="x").status_code == 404
    assert patch(client, manager, "Z" * 12, name="x").status_code == 404
    assert patch(client, manager, target, slug="other", name="x").status_code == 404
    assert patch(client, manager, str(2**63), name="x").status_code == 404


def test_rotate_through_the_api_under_a_tightened_policy(app, client, user):
    manager = issue_key(app, scopes=("keys:write", "api:read"), days=0)
    target = issue_key(app, days=0).split("_")[1]
    set_policy(app, days=30)
    url = f"{BASE}/{target}/rotate"
    refused = client.post(url, json={"grace_hours": 1}, headers=bearer(manager))
    assert "no longer allows this key's lifetime" in refused.json["error_description"]
    assert refused.status_code == 400 and refused.json["field"] == "expires_in_days"
    done = client.post(url, json={"grace_hours": 1, "expires_in_days": 30}, headers=bearer(manager))
    assert done.status_code == 201
    assert done.json["expires_at"] - done.json["created_at"] == 30 * 86400


def test_openapi_documents_the_patch(client):
    doc = client.get("/api/v1/openapi.json").json
    op = doc["paths"]["/api/v1/tenant/{slug}/api-keys/{key_id}"]["patch"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    props = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert set(props) == {"name", "description", "scopes", "expires_at", "allowed_ips"}
    assert "200" in op["responses"]
