"""The signed-in portal through the client: list, new key shown once, detail, revoke, rotate."""

from datetime import UTC, datetime, timedelta

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select

from app.accounts import service as accounts
from app.audit import Actor
from app.extensions import db
from app.keys import service as keys
from app.keys.scopes import ALL_SCOPES
from app.models import ApiKey
from tests.conftest import KEY_RE, bearer, create_user, issue_key, login, secret_from_page


def soup(response) -> BeautifulSoup:
    return BeautifulSoup(response.get_data(as_text=True), "html.parser")


def create(client, **overrides):
    data = {"name": "ci deploy", "scopes": ["api:read", "keys:read"], "expires_in_days": "30"}
    return client.post("/keys/new", data=data | overrides)


def key_id_of(full: str) -> str:
    return full.split("_")[1]


def error_beside(page: BeautifulSoup, field: str) -> str:
    error = page.find(id=f"{field}-error")
    assert error is not None, f"no error beside {field}"
    return error.get_text(" ", strip=True)


def test_new_key_form_offers_name_scopes_and_expiry_choices(signed_in):
    response = signed_in.get("/keys/new")
    assert response.status_code == 200
    page = soup(response)
    assert page.find("input", attrs={"name": "name"}) is not None
    boxes = page.find_all("input", attrs={"type": "checkbox", "name": "scopes"})
    assert [b["value"] for b in boxes] == list(ALL_SCOPES)
    for box in boxes:  # every checkbox has a label
        assert page.find("label", attrs={"for": box["id"]}) is not None
    options = page.find("select", attrs={"name": "expires_in_days"}).find_all("option")
    assert [o["value"] for o in options] == ["7", "30", "90", "365", "0", "custom"]
    assert [o.get_text() for o in options][-2:] == ["Never", "A date of your choice"]


def test_created_key_is_shown_once_with_no_store_and_a_warning(app, signed_in):
    response = create(signed_in)
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]
    page = soup(response)
    full = secret_from_page(response.get_data(as_text=True))
    assert KEY_RE.fullmatch(full)
    assert "will not be shown again" in page.get_text()
    assert page.find(attrs={"data-copy-target": "new-key-secret"}) is not None
    # it works against the API with the chosen scopes
    me = signed_in.get("/api/v1/me", headers=bearer(full))
    assert me.status_code == 200
    assert me.json["key"]["scopes"] == ["api:read", "keys:read"]
    assert me.json["key"]["expires_at"] - me.json["key"]["created_at"] == 30 * 86400

    # reloading the list and the detail page never shows the secret again
    secret_part = full.split("_")[2]
    for url in ("/keys", f"/keys/{key_id_of(full)}", "/keys/new"):
        html = signed_in.get(url).get_data(as_text=True)
        assert full not in html and secret_part[:20] not in html
    assert key_id_of(full) in signed_in.get("/keys").get_data(as_text=True)


def test_key_list_shows_name_id_scopes_and_status(app, signed_in):
    now = datetime.now(UTC)
    active = issue_key(app, name="plain", scopes=("api:read",), days=0)
    issue_key(app, name="soon", days=7)
    revoked = issue_key(app, name="gone")
    with app.app_context():
        user = accounts.get_user_by_email("alice@example.com")
        key = keys.get_user_key(user=user, key_id=key_id_of(revoked))
        keys.revoke_key(key=key, now=now, actor=Actor.cli())
        db.session.commit()
    page = soup(signed_in.get("/keys"))
    rows = {
        row.find("a").get_text(): row for row in page.select("table.keys tbody tr")
    }  # name -> row
    assert set(rows) == {"plain", "soon", "gone"}
    assert rows["plain"].find(class_="badge").get_text(strip=True) == "active"
    assert rows["soon"].find(class_="badge").get_text(strip=True) == "expiring"
    assert rows["gone"].find(class_="badge").get_text(strip=True) == "revoked"
    assert key_id_of(active) in rows["plain"].get_text()
    assert "api:read" in rows["plain"].get_text()
    assert "expiring within 7 days" in page.get_text()


def test_empty_list_invites_a_first_key(signed_in):
    assert "Create your first key" in signed_in.get("/keys").get_data(as_text=True)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": ""}, "name", "Give the key a name"),
        ({"name": "   "}, "name", "Give the key a name"),
        ({"name": "x" * 101}, "name", "at most 100 characters"),
        ({"name": "bad\x01name"}, "name", "control characters"),
        ({"scopes": []}, "scopes", "Choose at least one scope"),
        ({"scopes": ["api:read", "root:everything"]}, "scopes", "root:everything"),
        ({"expires_in_days": "3"}, "expires_in_days", "offered expiry"),
        ({"expires_in_days": "abc"}, "expires_in_days", "offered expiry"),
        ({"expires_in_days": "-7"}, "expires_in_days", "offered expiry"),
        ({"expires_in_days": ""}, "expires_in_days", "offered expiry"),
        ({"expires_in_days": "1e9"}, "expires_in_days", "offered expiry"),
        ({"allowed_ips": "not-an-ip"}, "allowed_ips", "not-an-ip"),
    ],
)
def test_bad_new_key_input_rerenders_the_form_with_a_message(
    app, signed_in, overrides, field, message
):
    response = create(signed_in, **overrides)
    assert response.status_code == 400
    page = soup(response)
    assert message in error_beside(page, field)
    assert page.find(id="new-key-secret") is None
    # what was typed is kept
    if field != "name":
        assert page.find("input", attrs={"name": "name"})["value"] == "ci deploy"
    with app.app_context():
        assert db.session.execute(select(ApiKey)).first() is None


def test_name_of_exactly_100_characters_is_fine(signed_in):
    response = create(signed_in, name="n" * 100)
    assert response.status_code == 200


def test_missing_expiry_field_is_a_form_error(app, signed_in):
    response = signed_in.post("/keys/new", data={"name": "x", "scopes": ["api:read"]})
    assert response.status_code == 400
    assert error_beside(soup(response), "expires_in_days")


def test_never_expiring_key(signed_in):
    response = create(signed_in, expires_in_days="0")
    full = secret_from_page(response.get_data(as_text=True))
    assert signed_in.get("/api/v1/me", headers=bearer(full)).json["key"]["expires_at"] is None


def test_key_detail_shows_details_but_never_the_secret(app, signed_in):
    full = secret_from_page(create(signed_in).get_data(as_text=True))
    response = signed_in.get(f"/keys/{key_id_of(full)}")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert key_id_of(full) in text and "ci deploy" in text and "keys:read" in text
    assert full not in text and full.split("_")[2] not in text
    assert "key.issued" in text  # recent events


def test_revoke_from_the_portal(app, signed_in):
    full = secret_from_page(create(signed_in).get_data(as_text=True))
    # GET is the no-JavaScript confirmation page; only its POST form revokes
    confirm = signed_in.get(f"/keys/{key_id_of(full)}/revoke")
    assert confirm.status_code == 200
    assert f'action="/keys/{key_id_of(full)}/revoke"' in confirm.get_data(as_text=True)
    assert signed_in.get("/api/v1/me", headers=bearer(full)).status_code == 200
    response = signed_in.post(f"/keys/{key_id_of(full)}/revoke", follow_redirects=True)
    assert response.status_code == 200
    assert "is revoked" in response.get_data(as_text=True)
    api = signed_in.get("/api/v1/me", headers=bearer(full))
    assert api.status_code == 401 and api.json["error_description"] == "API key has been revoked"
    # revoking again is a clear message, not an error page
    again = signed_in.post(f"/keys/{key_id_of(full)}/revoke", follow_redirects=True)
    assert again.status_code == 200 and "already revoked" in again.get_data(as_text=True)


def test_rotate_with_grace_shows_new_key_once_and_old_keeps_working(app, signed_in):
    old = secret_from_page(create(signed_in).get_data(as_text=True))
    response = signed_in.post(f"/keys/{key_id_of(old)}/rotate", data={"grace_hours": "24"})
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]
    new = secret_from_page(response.get_data(as_text=True))
    assert new != old and KEY_RE.fullmatch(new)
    assert "will not be shown again" in response.get_data(as_text=True)
    for key in (old, new):
        assert signed_in.get("/api/v1/me", headers=bearer(key)).status_code == 200
    me_new = signed_in.get("/api/v1/me", headers=bearer(new)).json["key"]
    assert me_new["name"] == "ci deploy" and me_new["scopes"] == ["api:read", "keys:read"]
    with app.app_context():
        row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id_of(old))).scalar_one()
        grace = row.revoked_at - datetime.now(UTC)
        assert timedelta(hours=23, minutes=55) < grace <= timedelta(hours=24)
        assert keys.status_of(row, row.revoked_at + timedelta(seconds=1)) == "rotated"
    listing = signed_in.get("/keys").get_data(as_text=True)
    assert old not in listing and new not in listing
    # revoking the old key during its grace ends it at once
    signed_in.post(f"/keys/{key_id_of(old)}/revoke")
    assert signed_in.get("/api/v1/me", headers=bearer(old)).status_code == 401
    assert signed_in.get("/api/v1/me", headers=bearer(new)).status_code == 200


def test_rotate_with_zero_grace_stops_the_old_key(signed_in):
    old = secret_from_page(create(signed_in).get_data(as_text=True))
    response = signed_in.post(f"/keys/{key_id_of(old)}/rotate", data={"grace_hours": "0"})
    assert response.status_code == 200
    assert signed_in.get("/api/v1/me", headers=bearer(old)).status_code == 401
    badge = soup(signed_in.get(f"/keys/{key_id_of(old)}")).find(class_="badge")
    assert badge.get_text(strip=True) == "rotated"


@pytest.mark.parametrize("grace", ["-1", "169", "abc", "", "1.5", "9" * 40])
def test_rotate_with_bad_grace_hours_gives_a_clear_message(app, signed_in, grace):
    old = secret_from_page(create(signed_in).get_data(as_text=True))
    response = signed_in.post(f"/keys/{key_id_of(old)}/rotate", data={"grace_hours": grace})
    assert response.status_code == 400
    assert "0 to 168" in error_beside(soup(response), "grace_hours")
    assert signed_in.get("/api/v1/me", headers=bearer(old)).status_code == 200
    with app.app_context():
        assert db.session.execute(select(ApiKey)).scalars().all()[0].revoked_at is None


def test_rotate_twice_is_refused_with_a_message(signed_in):
    old = secret_from_page(create(signed_in).get_data(as_text=True))
    signed_in.post(f"/keys/{key_id_of(old)}/rotate", data={"grace_hours": "24"})
    again = signed_in.post(
        f"/keys/{key_id_of(old)}/rotate", data={"grace_hours": "24"}, follow_redirects=True
    )
    assert again.status_code == 200
    assert "new-key-secret" not in again.get_data(as_text=True)
    assert "rotated" in again.get_data(as_text=True)


def test_rotate_after_revoke_is_refused(signed_in):
    old = secret_from_page(create(signed_in).get_data(as_text=True))
    signed_in.post(f"/keys/{key_id_of(old)}/revoke")
    again = signed_in.post(
        f"/keys/{key_id_of(old)}/rotate", data={"grace_hours": "1"}, follow_redirects=True
    )
    assert "new-key-secret" not in again.get_data(as_text=True)
    assert "Only an active key can be rotated" in again.get_data(as_text=True)


@pytest.mark.parametrize(
    "other", [("bob@example.com", "acme", "member"), ("eve@example.com", "evil", "admin")]
)
def test_another_users_key_is_404_everywhere(app, client, user, other):
    email, tenant, role = other
    create_user(app, email, tenant=tenant, role=role)
    foreign = issue_key(app, email)
    login(client)  # alice, admin of acme: still not her own key
    kid = key_id_of(foreign)
    assert client.get(f"/keys/{kid}").status_code == 404
    assert client.post(f"/keys/{kid}/revoke").status_code == 404
    assert client.post(f"/keys/{kid}/rotate", data={"grace_hours": "1"}).status_code == 404
    assert client.get("/api/v1/me", headers=bearer(foreign)).status_code == 200


def test_unknown_key_id_is_404(signed_in):
    for kid in ("nope", "x" * 500, "<script>"):
        assert signed_in.get(f"/keys/{kid}").status_code == 404
        assert signed_in.post(f"/keys/{kid}/revoke").status_code == 404
    # A NUL byte is refused as a bad request before any lookup (PostgreSQL cannot hold it).
    assert signed_in.get("/keys/%00").status_code == 400


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/keys"),
        ("get", "/keys/new"),
        ("post", "/keys/new"),
        ("get", "/keys/abc"),
        ("post", "/keys/abc/revoke"),
        ("post", "/keys/abc/rotate"),
        ("get", "/"),
    ],
)
def test_signed_out_visitors_are_sent_to_login(client, method, url):
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_pages_send_security_headers(signed_in):
    response = signed_in.get("/keys")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_tenant_policy_limits_the_form_for_members(app, client):
    create_user(app, "bob@example.com", role="member")
    with app.app_context():
        tenant = accounts.get_tenant_by_slug("acme")
        tenant.member_scopes = "api:read keys:read"
        tenant.require_expiry = True
        db.session.commit()
    login(client, "bob@example.com")
    page = soup(client.get("/keys/new"))
    boxes = page.find_all("input", attrs={"type": "checkbox", "name": "scopes"})
    assert [b["value"] for b in boxes] == ["api:read", "keys:read"]
    options = page.find("select", attrs={"name": "expires_in_days"}).find_all("option")
    assert [o["value"] for o in options] == ["7", "30", "90", "365", "custom"]
    refused = create(client, scopes=["api:read", "admin:all"])
    assert refused.status_code == 400
    assert "admin:all" in error_beside(soup(refused), "scopes")
    never = create(client, expires_in_days="0")
    assert never.status_code == 400 and error_beside(soup(never), "expires_in_days")
    assert create(client).status_code == 200
