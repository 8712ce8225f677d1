"""Tenant policy `require_2fa`, the members page's second-factor column and the operator's
`users reset-2fa`, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from bs4 import BeautifulSoup
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, Passkey, RecoveryCode, Tenant, TotpFactor
from tests.conftest import create_user, login
from tests.twofactor_helpers import HOST, SoftAuthenticator, enable_totp, register_passkey


def _require_2fa(admin, on=True):
    data = {"max_key_lifetime_days": "0", "member_scopes": ["api:read"]}
    if on:
        data["require_2fa"] = "y"
    response = admin.post("/admin/policy", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)


def test_policy_checkbox_saves_and_is_audited(app, signed_in):
    page = BeautifulSoup(signed_in.get("/admin/policy").get_data(as_text=True), "html.parser")
    assert not page.find("input", {"name": "require_2fa"}).has_attr("checked")
    _require_2fa(signed_in)
    page = BeautifulSoup(signed_in.get("/admin/policy").get_data(as_text=True), "html.parser")
    assert page.find("input", {"name": "require_2fa"}).has_attr("checked")
    with app.app_context():
        assert db.session.execute(select(Tenant.require_2fa)).scalar_one() is True
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "policy.changed")
        ).scalar_one()
        details = json.loads(event.details)
        assert details["before"]["require_2fa"] is False and details["after"]["require_2fa"]


def test_a_member_without_a_second_factor_can_use_nothing_but_the_set_up(app, signed_in):
    _require_2fa(signed_in)
    create_user(app, "member@example.com", role="member")
    member = app.test_client()
    response = login(member, "member@example.com")
    assert response.status_code == 302
    for path in ("/keys", "/keys/new", "/account", "/"):
        blocked = member.get(path)
        assert blocked.status_code == 302, path
        assert blocked.headers["Location"].endswith("/account/2fa"), path
    assert member.post("/keys/new", data={"name": "x"}).headers["Location"].endswith("/account/2fa")
    page = member.get("/account/2fa")
    assert page.status_code == 200
    assert "requires a second factor" in page.get_data(as_text=True)
    enable_totp(member)
    assert member.get("/keys").status_code == 200
    # The admin who set the policy is not held back (SPEC: "a member").
    assert signed_in.get("/keys").status_code == 200


def test_a_passkey_satisfies_the_policy(app, signed_in):
    _require_2fa(signed_in)
    create_user(app, "member@example.com", role="member")
    member = app.test_client()
    login(member, "member@example.com")
    assert register_passkey(member, SoftAuthenticator()).status_code == 200
    assert member.get("/keys", **HOST).status_code == 200


def test_the_policy_off_lets_members_in(app, signed_in):
    _require_2fa(signed_in, on=False)
    create_user(app, "member@example.com", role="member")
    member = app.test_client()
    login(member, "member@example.com")
    assert member.get("/keys").status_code == 200


def test_members_page_shows_who_has_a_second_factor(app, signed_in):
    create_user(app, "member@example.com", role="member")
    enable_totp(signed_in)
    page = BeautifulSoup(signed_in.get("/admin/members").get_data(as_text=True), "html.parser")
    cells = {
        row["data-user"]: row.find(class_="second-factor").get_text(strip=True)
        for row in page.select("tr[data-user]")
    }
    assert cells == {"alice@example.com": "yes", "member@example.com": "none"}


def test_reset_2fa_removes_everything_audits_and_ends_sessions(app, runner, signed_in):
    enable_totp(signed_in)
    register_passkey(signed_in, SoftAuthenticator())
    assert signed_in.get("/keys").status_code == 200
    result = runner.invoke(args=["users", "reset-2fa", "alice@example.com"])
    assert result.exit_code == 0, result.output
    assert "alice@example.com" in result.output
    with app.app_context():
        assert db.session.execute(select(TotpFactor)).first() is None
        assert db.session.execute(select(RecoveryCode)).first() is None
        assert db.session.execute(select(Passkey)).first() is None
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "2fa.reset")
        ).scalar_one()
        assert event.actor_type == "cli"
        assert json.loads(event.details) == {"passkeys": 1, "recovery_codes": 10, "totp": 1}
    # The old session no longer signs anybody in; the password alone does again.
    assert signed_in.get("/keys").status_code == 302
    assert login(signed_in).headers["Location"].endswith("/keys")


def test_reset_2fa_for_an_unknown_user_fails_in_one_line(app, runner):
    result = runner.invoke(args=["users", "reset-2fa", "nobody@example.com"])
    assert result.exit_code != 0
    assert "No user with email nobody@example.com" in result.output
    assert len(result.output.strip().splitlines()) == 1
