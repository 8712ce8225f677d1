"""A tenant that enforces SSO (SPEC /admin/sso `enforce`): members get in only by SSO, so
neither a password reset nor a passwordless passkey lets them in; admins keep both as a way
back in. On SQLite and PostgreSQL; reset mail through a real SMTP server."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from app.auth.reset_mail import mailer
from app.clock import utcnow
from app.extensions import db
from app.models import SsoConfig, User
from tests.conftest import create_user, login
from tests.mail_helpers import body_of, smtp  # noqa: F401 - the fixture
from tests.session_helpers import events
from tests.twofactor_helpers import HOST, SoftAuthenticator, register_passkey

MEMBER, ADMIN = "bob@acme.example", "alice@example.com"
NEW = "a brand new passphrase 77"
LINK = re.compile(r"http://localhost/reset-password/([A-Za-z0-9_-]{43})")


def enforce(app, on: bool = True, tenant: str = "acme") -> None:
    """The tenant's SSO settings as /admin/sso saves them (the provider itself is not
    needed here: nobody signs in through it)."""
    with app.app_context():
        from app.accounts import service as accounts

        t = accounts.get_tenant_by_slug(tenant)
        row = db.session.get(SsoConfig, t.id) or SsoConfig(
            tenant_id=t.id, issuer="https://idp.acme.example", client_id="keydesk",
            email_domains="acme.example", default_role="member", provider="{}",
            created_at=utcnow(), updated_at=utcnow(),
        )  # fmt: skip
        row.enforce = on
        db.session.add(row)
        db.session.commit()


@pytest.fixture
def people(app):
    create_user(app, ADMIN)
    create_user(app, MEMBER, role="member")


@pytest.fixture
def mail_app(app, smtp, people):  # noqa: F811 - the fixture above
    url, inbox = smtp
    app.config["KEYDESK_MAIL_URL"] = url
    yield app, inbox
    assert mailer(app).drain(), "the reset mail worker did not finish"


def forgot(app, email):
    answer = app.test_client().post("/forgot-password", data={"email": email})
    assert mailer(app).drain()
    return answer


def token_of(message) -> str:
    return LINK.search(body_of(message)).group(1)


# --- password reset -------------------------------------------------------------------


def test_no_reset_link_for_a_member_but_the_same_answer(mail_app):
    app, inbox = mail_app
    enforce(app)
    member = forgot(app, MEMBER)
    unknown = forgot(app, "nobody@acme.example")
    assert member.status_code == unknown.status_code == 200
    assert member.get_data(as_text=True) == unknown.get_data(as_text=True)
    assert inbox.messages == []
    [requested, _] = events(app, "user.password_reset_requested")
    assert requested.target == MEMBER and '"reason":"sso_enforced"' in requested.details
    assert '"sent":false' in requested.details


def test_an_admin_still_gets_a_link_and_resets(mail_app):
    app, inbox = mail_app
    enforce(app)
    forgot(app, ADMIN)
    [message] = inbox.wait_for(1)
    link = f"/reset-password/{token_of(message)}"
    done = app.test_client().post(link, data={"password": NEW, "confirm": NEW})
    assert done.status_code == 302
    assert login(app.test_client(), ADMIN, NEW).status_code == 302


def test_a_link_from_before_enforcement_sets_no_password(mail_app):
    app, inbox = mail_app
    forgot(app, MEMBER)
    [message] = inbox.wait_for(1)
    link = f"/reset-password/{token_of(message)}"
    enforce(app)
    client = app.test_client()
    page = client.get(link)
    assert page.status_code == 410 and "single sign-on" in page.get_data(as_text=True)
    posted = client.post(link, data={"password": NEW, "confirm": NEW})
    assert posted.status_code == 410
    with app.app_context():
        user = db.session.execute(select(User).where(User.email == MEMBER)).scalar_one()
        from app.accounts.passwords import verify_password

        assert verify_password(user.password_hash, NEW)[0] is False
    assert not events(app, "user.password_reset")
    # Turned off again, the same link works (it was never spent).
    enforce(app, on=False)
    assert client.post(link, data={"password": NEW, "confirm": NEW}).status_code == 302


# --- passwordless passkey sign-in -----------------------------------------------------


def _with_passkey(app, email) -> SoftAuthenticator:
    client = app.test_client()
    assert login(client, email).status_code == 302
    authenticator = SoftAuthenticator()
    assert register_passkey(client, authenticator).status_code == 200
    return authenticator


def _passwordless(client, authenticator):
    options = client.post("/login/passkey/options", json={}, **HOST).get_json()
    return client.post("/login/passkey", json={"credential": authenticator.get(options)}, **HOST)


def test_a_members_passkey_does_not_sign_in(app, client, people):
    authenticator = _with_passkey(app, MEMBER)
    enforce(app)
    refused = _passwordless(client, authenticator)
    assert refused.status_code == 403
    body = refused.get_json()
    assert body["field"] == "passkey" and "single sign-on" in body["error"]
    assert client.get("/keys").status_code == 302
    [event] = events(app, "sso.password_refused")
    assert event.target == MEMBER and '"method":"passkey"' in event.details
    assert not [
        e for e in events(app, "auth.login") if e.target == MEMBER and "passkey" in e.details
    ]


def test_an_admins_passkey_still_signs_in(app, client, people):
    authenticator = _with_passkey(app, ADMIN)
    enforce(app)
    answer = _passwordless(client, authenticator)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert client.get("/keys").status_code == 200


def test_without_enforcement_a_members_passkey_signs_in(app, client, people):
    authenticator = _with_passkey(app, MEMBER)
    enforce(app, on=False)
    assert _passwordless(client, authenticator).status_code == 200
    assert client.get("/keys").status_code == 200
