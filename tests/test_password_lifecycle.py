"""Password change, forgot/reset by email (through a real SMTP server), and
`flask users set-password`: each ends the right sessions and is audited without secrets."""

from __future__ import annotations

import json
import re
import socket
import threading
from datetime import timedelta

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select, update

from app.accounts.credentials import token_digest
from app.auth.reset_mail import mailer
from app.clock import utcnow
from app.extensions import db
from app.models import AuditEvent, PasswordReset
from tests.conftest import PASSWORD, create_user, login
from tests.mail_helpers import body_of, smtp  # noqa: F401 - the fixture
from tests.session_helpers import (
    actions,
    events,
    leave_sudo_mode,
    signed_in_client,
    user_sessions,
)

NEW = "a brand new passphrase 77"
LINK_RE = re.compile(r"http://localhost/reset-password/([A-Za-z0-9_-]{43})")


@pytest.fixture
def mail_app(app, smtp):  # noqa: F811 - the fixture above
    url, inbox = smtp
    app.config["KEYDESK_MAIL_URL"] = url
    yield app, inbox
    assert mailer(app).drain(), "the reset mail worker did not finish"


def audit_text(app) -> str:
    with app.app_context():
        rows = db.session.execute(select(AuditEvent)).scalars()
        return " ".join(f"{r.action} {r.target} {r.details}" for r in rows)


# --- change -----------------------------------------------------------------------------


def change(client, current=PASSWORD, new=NEW, confirm=None):
    data = {"current_password": current, "password": new, "confirm": confirm or new}
    return client.post("/account/password", data=data)


def test_account_page_shows_email_tenant_and_sessions(signed_in):
    page = signed_in.get("/account")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "alice@example.com" in html and "acme" in html
    doc = BeautifulSoup(html, "html.parser")
    form = doc.find("form", action="/account/password")
    assert {i["name"] for i in form.find_all("input")} >= {
        "current_password",
        "password",
        "confirm",
    }
    assert len(doc.select("tr[data-session-id]")) == 1


def test_change_password_ends_every_other_session(app, user):
    here = signed_in_client(app, user)
    elsewhere = signed_in_client(app, user)
    answer = change(here)
    assert answer.status_code == 302 and answer.headers["Location"] == "/account"
    assert here.get("/keys").status_code == 200
    assert elsewhere.get("/keys").status_code == 302
    assert login(app.test_client(), user, PASSWORD).status_code == 401
    assert login(app.test_client(), user, NEW).status_code == 302
    [event] = events(app, "user.password_changed")
    assert json.loads(event.details)["sessions_ended"] == 1
    assert PASSWORD not in audit_text(app) and NEW not in audit_text(app)
    # The session that changed it got a new id (its old cookie value stops working).
    rows = user_sessions(app, user)
    assert [r.end_reason for r in rows][:2] == [None, "password_changed"]


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"current_password": "wrong one entirely"}, "current_password", "not correct"),
        ({"password": "short", "confirm": "short"}, "password", "12 to 128"),
        ({"confirm": "something else entirely"}, "confirm", "do not match"),
        ({"password": "password1234", "confirm": "password1234"}, "password", "too common"),
        ({"password": PASSWORD, "confirm": PASSWORD}, "password", "different"),
        ({"password": "x" * 5000, "confirm": "x" * 5000}, "password", "12 to 128"),
        ({"current_password": ["a", "b"]}, None, None),
        ({"password": "tab\tand\u202enewline\n long", "confirm": "nope"}, "confirm", "match"),
    ],
)
def test_change_password_refusals_name_the_field(app, signed_in, user, data, field, message):
    form = {"current_password": PASSWORD, "password": NEW, "confirm": NEW, **data}
    answer = signed_in.post("/account/password", data=form)
    assert answer.status_code == 400
    if field:
        doc = BeautifulSoup(answer.get_data(as_text=True), "html.parser")
        error = doc.find(id=f"{field}-error")
        assert error is not None and message in error.get_text()
    assert login(app.test_client(), user, PASSWORD).status_code == 302  # unchanged


def test_change_password_needs_sudo_mode(app, signed_in, user):
    leave_sudo_mode(app, user)
    answer = change(signed_in)
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/sudo?next=")
    assert "next=/account" in answer.headers["Location"].replace("%2F", "/")
    assert login(app.test_client(), user, PASSWORD).status_code == 302


# --- forgot and reset ------------------------------------------------------------------


def forgot(client, email):
    return client.post("/forgot-password", data={"email": email})


def test_reset_by_mail_end_to_end(mail_app, user):
    app, inbox = mail_app
    elsewhere = signed_in_client(app, user)
    client = app.test_client()
    page = client.get("/forgot-password")
    assert page.status_code == 200 and 'name="email"' in page.get_data(as_text=True)

    assert forgot(client, "Alice@Example.com").status_code == 200
    [message] = inbox.wait_for(1)
    assert message["To"] == user and "reset" in message["Subject"].lower()
    token = LINK_RE.search(body_of(message)).group(1)
    link = f"/reset-password/{token}"

    form = client.get(link)
    assert form.status_code == 200 and form.headers["Cache-Control"] == "no-store"
    assert user in form.get_data(as_text=True)
    done = client.post(link, data={"password": NEW, "confirm": NEW})
    assert done.status_code == 302 and done.headers["Location"] == "/login"

    assert elsewhere.get("/keys").status_code == 302  # every session ended
    assert login(app.test_client(), user, NEW).status_code == 302
    assert login(app.test_client(), user, PASSWORD).status_code == 401
    # Single use: the same link again is 410, on GET and POST.
    assert client.get(link).status_code == 410
    assert client.post(link, data={"password": NEW, "confirm": NEW}).status_code == 410
    # Only a digest is stored; no token or password in the audit log.
    with app.app_context():
        [reset] = db.session.execute(select(PasswordReset)).scalars()
        assert reset.token_digest == token_digest(token) and reset.used_at is not None
    text = audit_text(app)
    assert token not in text and NEW not in text
    assert {"user.password_reset_requested", "user.password_reset"} <= set(actions(app))


def test_unknown_and_known_addresses_get_the_same_answer(mail_app, user):
    app, inbox = mail_app
    create_user(app, "gone@example.com", role="member")
    with app.app_context():
        from app.accounts import service as accounts

        accounts.get_user_by_email("gone@example.com").deactivated_at = utcnow()
        db.session.commit()
    answers = [
        forgot(app.test_client(), email)
        for email in (user, "nobody@example.com", "gone@example.com", "not an address")
    ]
    assert mailer(app).drain()
    assert {a.status_code for a in answers} == {200}
    bodies = {a.get_data(as_text=True) for a in answers}
    assert len(bodies) == 1  # byte for byte the same page
    headers = [sorted(k for k, _ in a.headers if k != "Set-Cookie") for a in answers]
    assert all(h == headers[0] for h in headers)
    inbox.wait_for(1)
    assert [m["To"] for m in inbox.messages] == [user]  # only the real, active account
    requested = events(app, "user.password_reset_requested")
    assert [json.loads(e.details)["sent"] for e in requested] == [True, False, False, False]


class _SilentSmtp:
    """Accepts connections and says nothing until released: an SMTP server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.release = threading.Event()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        self.connected.set()
        self.release.wait(30)
        conn.close()
        self.sock.close()


def test_the_request_does_not_wait_for_the_mail_server(app, user, caplog):
    """Known addresses cost the request no lookup and no SMTP round trip: the page is
    answered while the mail server is still silent (the worker does the rest)."""
    silent = _SilentSmtp()
    app.config["KEYDESK_MAIL_URL"] = silent.url
    try:
        answer = forgot(app.test_client(), user)
        assert answer.status_code == 200
        assert silent.connected.wait(10)  # the worker is talking to it now
        assert not silent.release.is_set()
    finally:
        silent.release.set()
    assert mailer(app).drain()
    assert "could not mail a password reset link" in caplog.text
    assert "reset-password/" not in caplog.text  # never the link


def test_without_mail_the_page_says_so_and_sends_nothing(app, user):
    app.config["KEYDESK_MAIL_URL"] = ""
    page = app.test_client().get("/forgot-password").get_data(as_text=True)
    assert "cannot send mail" in page and "users set-password" in page
    assert forgot(app.test_client(), user).status_code == 200
    assert mailer(app).drain()
    with app.app_context():
        assert db.session.execute(select(PasswordReset)).first() is None


def _request_token(app, email) -> str:
    from app.accounts import credentials
    from app.audit import Actor

    with app.app_context():
        _, token = credentials.request_reset(email=email, actor=Actor.cli(), now=utcnow())
        db.session.commit()
    return token


def test_an_old_link_is_410(app, user):
    token = _request_token(app, user)
    with app.app_context():
        db.session.execute(update(PasswordReset).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    client = app.test_client()
    assert client.get(f"/reset-password/{token}").status_code == 410
    assert (
        client.post(f"/reset-password/{token}", data={"password": NEW, "confirm": NEW}).status_code
        == 410
    )
    assert login(app.test_client(), user, PASSWORD).status_code == 302


def test_a_link_lasts_one_hour(app, user):
    token = _request_token(app, user)
    with app.app_context():
        reset = db.session.execute(select(PasswordReset)).scalar_one()
        assert reset.expires_at - reset.created_at == timedelta(hours=1)
    assert app.test_client().get(f"/reset-password/{token}").status_code == 200


def test_a_password_change_voids_outstanding_links(app, signed_in, user):
    token = _request_token(app, user)
    assert change(signed_in).status_code == 302
    assert app.test_client().get(f"/reset-password/{token}").status_code == 410


@pytest.mark.parametrize(
    "bad", ["x", "a" * 43 + "b", "a" * 5000, "%ED%A0%80" * 15, "%E2%80%AE" * 15, "..", "%20"]
)
def test_junk_tokens_are_410(client, bad):
    assert client.get(f"/reset-password/{bad}").status_code in (404, 410)
    assert client.post(f"/reset-password/{bad}", data={"password": NEW}).status_code in (404, 410)


def test_reset_form_refusals_name_the_field(app, user):
    token = _request_token(app, user)
    client = app.test_client()
    answer = client.post(f"/reset-password/{token}", data={"password": "password1234",
                                                            "confirm": "password1234"})  # fmt: skip
    assert answer.status_code == 400
    assert (
        "too common"
        in BeautifulSoup(answer.get_data(as_text=True), "html.parser")
        .find(id="password-error")
        .get_text()
    )
    answer = client.post(f"/reset-password/{token}", data={"password": NEW, "confirm": "x"})
    assert answer.status_code == 400
    # The link still works after a refused attempt.
    assert (
        client.post(f"/reset-password/{token}", data={"password": NEW, "confirm": NEW}).status_code
        == 302
    )


def test_forgot_password_needs_an_email_and_is_rate_limited(app, user):
    app.config["KEYDESK_MAIL_URL"] = ""
    client = app.test_client()
    assert client.post("/forgot-password", data={}).status_code == 400
    assert client.post("/forgot-password", data={"email": "x" * 300}).status_code == 400


@pytest.mark.parametrize(
    "app_config", [{"KEYDESK_LOGIN_RATE_LIMIT": "2 per minute"}], indirect=True
)
def test_forgot_password_is_rate_limited_per_address(app, user):
    app.config["KEYDESK_MAIL_URL"] = ""
    codes = [forgot(app.test_client(), user).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- operators ----------------------------------------------------------------------


def test_set_password_cli_ends_every_session(app, runner, user):
    signed = signed_in_client(app, user)
    result = runner.invoke(args=["users", "set-password", user, "--password", NEW])
    assert result.exit_code == 0, result.output
    assert "1 session ended" in result.output and NEW not in result.output
    assert signed.get("/keys").status_code == 302
    assert login(app.test_client(), user, NEW).status_code == 302
    [event] = events(app, "user.password_set")
    assert event.actor == "cli" and NEW not in event.details


def test_set_password_cli_refusals(app, runner, user):
    result = runner.invoke(args=["users", "set-password", "nobody@example.com", "--password", NEW])
    assert result.exit_code == 1 and "No user" in result.output
    result = runner.invoke(args=["users", "set-password", user])
    assert result.exit_code != 0 and "--password" in result.output
    result = runner.invoke(args=["users", "set-password", user, "--password", ""])
    assert result.exit_code == 1 and "empty" in result.output
    weak = runner.invoke(args=["users", "set-password", user, "--password", "short"])
    assert weak.exit_code == 0 and "Warning: weak password" in weak.output
    assert login(app.test_client(), user, "short").status_code == 302


def test_mail_worker_survives_a_failing_job(mail_app, user, caplog):
    app, inbox = mail_app
    from app.audit import Actor
    from app.auth.reset_mail import ResetJob

    broken = ResetJob(email=user, actor=Actor.cli(), link_prefix=None)  # type: ignore[arg-type]
    mailer(app).submit(broken)
    assert mailer(app).drain()
    assert "password reset request failed" in caplog.text
    forgot(app.test_client(), user)
    [message] = inbox.wait_for(1)
    assert message["To"] == user


def test_password_change_and_sudo_check_the_csrf_token(app, user):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = BeautifulSoup(page, "html.parser").find("input", {"name": "csrf_token"})["value"]
    client.post("/login", data={"email": user, "password": PASSWORD, "csrf_token": token})
    account = BeautifulSoup(client.get("/account").get_data(as_text=True), "html.parser")
    form_token = account.find("form", action="/account/password").find(
        "input", {"name": "csrf_token"}
    )["value"]
    data = {"current_password": PASSWORD, "password": NEW, "confirm": NEW}
    assert client.post("/account/password", data=data).status_code == 400
    assert client.post("/sudo", data={"password": PASSWORD}).status_code in (400, 401)
    assert password_is(app, user, PASSWORD)  # unchanged
    answer = client.post("/account/password", data={**data, "csrf_token": form_token})
    assert answer.status_code == 302
    assert password_is(app, user, NEW)


def password_is(app, email: str, password: str) -> bool:
    from app.accounts import service as accounts
    from app.accounts.passwords import verify_password

    with app.app_context():
        return verify_password(accounts.get_user_by_email(email).password_hash, password)[0]
