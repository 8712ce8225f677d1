"""Sudo mode: outside it, every route SPEC lists redirects to /sudo and does nothing;
/sudo re-authenticates, renews the session id and returns to the form."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from app.accounts import service as accounts
from app.extensions import db
from app.models import ApiKey, Invite, Tenant, User
from tests.conftest import PASSWORD, create_user, issue_key
from tests.session_helpers import actions, copy_client, leave_sudo_mode, user_sessions

# Every existing route SPEC "Account security" puts behind sudo mode.
SUDO_ENDPOINTS = {
    "portal.new_key",
    "portal.rotate",
    "portal.allowed_ips",
    "portal.change_password",
    "admin.policy",
    "admin.invite",
    "admin.change_role",
    "admin.confirm_deactivate",
    "admin.deactivate",
    "admin.revoke_matching",
}


def sudo_next(response) -> str:
    assert response.status_code == 302, response.status_code
    location = urlsplit(response.headers["Location"])
    assert location.path == "/sudo"
    return parse_qs(location.query)["next"][0]


def test_the_listed_routes_carry_sudo_required(app):
    marked = {
        name for name, view in app.view_functions.items() if getattr(view, "sudo_required", 0)
    }
    assert marked >= SUDO_ENDPOINTS


def test_signing_in_starts_sudo_mode(signed_in):
    assert signed_in.get("/keys/new").status_code == 200


def test_outside_sudo_mode_a_new_key_is_neither_shown_nor_created(app, signed_in, user):
    leave_sudo_mode(app, user)
    assert sudo_next(signed_in.get("/keys/new")) == "/keys/new"
    posted = signed_in.post(
        "/keys/new", data={"name": "ci", "scopes": ["api:read"], "expires_in_days": "30"}
    )
    assert sudo_next(posted) == "/keys/new"
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(ApiKey)).scalar() == 0


def test_sudo_returns_to_the_form_and_nothing_is_replayed(app, signed_in, user):
    leave_sudo_mode(app, user)
    signed_in.post("/keys/new", data={"name": "ci", "scopes": ["api:read"]})
    [before] = user_sessions(app, user)
    page = signed_in.get("/sudo?next=/keys/new")
    assert page.status_code == 200 and 'name="password"' in page.get_data(as_text=True)
    assert 'name="code"' not in page.get_data(as_text=True)  # no second factor enrolled
    answer = signed_in.post("/sudo?next=/keys/new", data={"password": PASSWORD})
    assert answer.status_code == 302 and answer.headers["Location"] == "/keys/new"
    form = signed_in.get("/keys/new")
    assert form.status_code == 200 and 'value="ci"' not in form.get_data(as_text=True)
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(ApiKey)).scalar() == 0
    [after] = user_sessions(app, user)
    assert after.id == before.id and after.digest != before.digest  # a new session id
    assert after.sudo_at > before.sudo_at
    assert "auth.sudo_granted" in actions(app)


def test_sudo_renews_the_session_id(app, signed_in, user):
    leave_sudo_mode(app, user)
    stale_copy = copy_client(app, signed_in)
    signed_in.post("/sudo", data={"password": PASSWORD})
    assert signed_in.get("/keys/new").status_code == 200
    assert stale_copy.get("/keys").status_code == 302


def test_a_wrong_password_grants_nothing(app, signed_in, user):
    leave_sudo_mode(app, user)
    answer = signed_in.post("/sudo?next=/keys/new", data={"password": "not it at all"})
    assert answer.status_code == 401
    assert "did not match" in answer.get_data(as_text=True)
    assert signed_in.post("/sudo", data={}).status_code == 401
    assert sudo_next(signed_in.get("/keys/new")) == "/keys/new"
    assert actions(app).count("auth.sudo_failed") == 1


@pytest.mark.parametrize(
    "target",
    ["//evil.example/x", "https%3A//evil.example/", "/%5Cevil", "/keys%0D%0AX-A:%20b", "%ED%A0%80"],
)
def test_sudo_returns_only_to_same_site_paths(app, signed_in, user, target):
    leave_sudo_mode(app, user)
    answer = signed_in.post(f"/sudo?next={target}", data={"password": PASSWORD})
    assert answer.status_code == 302 and answer.headers["Location"] == "/keys"


def test_in_sudo_mode_sudo_sends_you_on(signed_in):
    answer = signed_in.get("/sudo?next=/admin/policy")
    assert answer.status_code == 302 and answer.headers["Location"] == "/admin/policy"


def test_signed_out_sudo_asks_to_sign_in(client):
    answer = client.get("/sudo?next=/keys/new")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")


@pytest.mark.parametrize(
    "app_config", [{"KEYDESK_LOGIN_RATE_LIMIT": "3 per minute"}], indirect=True
)
def test_sudo_attempts_are_rate_limited_like_sign_in(app, signed_in, user):
    leave_sudo_mode(app, user)
    codes = [
        signed_in.post("/sudo", data={"password": "wrong guess"}).status_code for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    # Over the limit even the right password waits: no guessing through /sudo.
    assert signed_in.post("/sudo", data={"password": PASSWORD}).status_code == 429


def test_rotate_outside_sudo_mode_does_not_rotate(app, signed_in, user):
    key_id = issue_key(app).split("_")[1]
    leave_sudo_mode(app, user)
    answer = signed_in.post(f"/keys/{key_id}/rotate", data={"grace_hours": "0"})
    assert sudo_next(answer) == f"/keys/{key_id}"
    answer = signed_in.post(f"/keys/{key_id}/allowed-ips", data={"allowed_ips": "10.0.0.0/8"})
    assert sudo_next(answer) == f"/keys/{key_id}"
    with app.app_context():
        [key] = db.session.execute(select(ApiKey)).scalars()
        assert key.rotated_to is None and key.revoked_at is None and key.allowed_ips is None


def test_admin_actions_outside_sudo_mode_do_nothing(app, signed_in, user):
    create_user(app, "bob@example.com", role="member")
    issue_key(app, "bob@example.com")
    with app.app_context():
        bob_id = accounts.get_user_by_email("bob@example.com").id
    leave_sudo_mode(app, user)

    assert sudo_next(signed_in.get("/admin/policy")) == "/admin/policy"
    posted = signed_in.post("/admin/policy", data={"max_key_lifetime_days": "30"})
    assert sudo_next(posted) == "/admin/policy"
    posted = signed_in.post("/admin/members/invite", data={"email": "new@example.com"})
    assert sudo_next(posted) == "/admin/members"
    posted = signed_in.post(f"/admin/members/{bob_id}/role", data={"role": "admin"})
    assert sudo_next(posted) == "/admin/members"
    confirm = f"/admin/members/{bob_id}/deactivate"
    assert sudo_next(signed_in.get(confirm)) == confirm
    assert sudo_next(signed_in.post(confirm)) == confirm
    incident = "/admin/keys/revoke?owner=bob%40example.com"
    assert sudo_next(signed_in.get(incident)) == "/admin/keys/revoke?owner=bob%40example.com"
    assert sudo_next(signed_in.post(incident)) == "/admin/keys/revoke?owner=bob%40example.com"
    assert signed_in.get("/admin/members").status_code == 200  # looking needs no sudo

    with app.app_context():
        tenant = db.session.execute(select(Tenant)).scalar_one()
        assert tenant.max_key_lifetime_days == 0
        assert db.session.execute(select(func.count()).select_from(Invite)).scalar() == 0
        bob = db.session.get(User, bob_id)
        assert bob.role == "member" and bob.is_active
        assert db.session.execute(select(ApiKey.revoked_at)).scalar() is None


@pytest.mark.parametrize("app_config", [{"KEYDESK_SUDO_MINUTES": 5}], indirect=True)
def test_sudo_window_is_configurable(app, signed_in, user):
    from datetime import timedelta

    from tests.session_helpers import age_sessions

    age_sessions(app, user, sudo_at=timedelta(minutes=4))
    assert signed_in.get("/keys/new").status_code == 200
    age_sessions(app, user, sudo_at=timedelta(minutes=6))
    assert signed_in.get("/keys/new").status_code == 302


def test_bad_settings_refuse_to_start(tmp_path):
    from app.config import load_config

    for bad in ("0", "-5", "1.5", "ten", "99999999999"):
        with pytest.raises(ValueError, match="KEYDESK_SUDO_MINUTES"):
            load_config(str(tmp_path), env={"KEYDESK_SUDO_MINUTES": bad})
    config = load_config(str(tmp_path), env={})
    assert (
        config["KEYDESK_SESSION_IDLE_MINUTES"],
        config["KEYDESK_SESSION_MAX_HOURS"],
        config["KEYDESK_SUDO_MINUTES"],
    ) == (60, 24, 120)
