"""Invitations (issue 12, points 5 and 6; issue 13, point 10): one open invitation per
address, none outliving its inviter's rights, links mailed only to the invited address
(through a real SMTP server started here), and acceptance that reveals no other tenant."""

from __future__ import annotations

import json
import re
import socket
from email import message_from_bytes
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from bs4 import BeautifulSoup
from sqlalchemy import select

from app.accounts import service as accounts
from app.extensions import db
from app.models import AuditEvent, Invite
from tests.conftest import PASSWORD, create_user, login
from tests.servers import free_port

NEW_PASSWORD = "a different long passphrase 7"


def _invite(client, email: str):
    return client.post("/admin/members/invite", data={"email": email})


def _link(response) -> str | None:
    field = BeautifulSoup(response.get_data(as_text=True), "html.parser").find(id="invite-link")
    return field["value"] if field else None


def _path(link: str) -> str:
    return link[link.index("/invite/") :]


def _pending(client) -> list[str]:
    soup = BeautifulSoup(client.get("/admin/members").get_data(as_text=True), "html.parser")
    return [li["data-invite"] for li in soup.select("li[data-invite]")]


def _accept(app, link: str):
    return app.test_client().post(
        _path(link), data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )


def _audit(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# -- one open invitation per address (issue 13, point 10) --------------------------------


def test_inviting_again_renews_the_one_invitation(app, signed_in):
    first = _link(_invite(signed_in, "newbie@example.com"))
    again = _invite(signed_in, "Newbie@Example.com")
    second = _link(again)
    assert again.status_code == 200 and second and second != first
    assert "no longer works" in again.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(Invite)) == 1
    assert _pending(signed_in) == ["newbie@example.com"]
    assert len(_audit(app, "invite.resent")) == 1
    assert _accept(app, first).status_code == 410  # the old link is dead
    assert _accept(app, second).status_code == 302


def test_people_who_joined_leave_the_pending_list(app, signed_in):
    _invite(signed_in, "bob@example.com")
    _invite(signed_in, "carol@example.com")
    assert sorted(_pending(signed_in)) == ["bob@example.com", "carol@example.com"]
    create_user(app, "bob@example.com", role="member")  # joined another way (CLI)
    assert _pending(signed_in) == ["carol@example.com"]
    # An address with an account in another tenant stays listed: hiding it would tell.
    create_user(app, "carol@example.com", tenant="elsewhere")
    assert _pending(signed_in) == ["carol@example.com"]


# -- invitations end with the inviter's rights (issue 12, point 5) -----------------------


@pytest.mark.parametrize("how", ["deactivate", "demote"])
def test_an_inviters_open_invitations_end_with_their_rights(app, signed_in, how):
    create_user(app, "root@example.com", role="admin")  # stays admin: alice is not the last
    create_user(app, "other@example.com", role="admin")
    mine = _link(_invite(signed_in, "kept@example.com"))
    other = app.test_client()
    login(other, "other@example.com")
    theirs = _link(_invite(other, "ended@example.com"))
    with app.app_context():
        other_id = accounts.get_user_by_email("other@example.com").id
    if how == "deactivate":
        response = signed_in.post(f"/admin/members/{other_id}/deactivate")
    else:
        response = signed_in.post(f"/admin/members/{other_id}/role", data={"role": "member"})
    assert response.status_code == 302
    refused = _accept(app, theirs)
    assert refused.status_code == 410 and "withdrawn" in refused.get_data(as_text=True)
    [event] = _audit(app, "invite.revoked")
    assert event.target == "ended@example.com"
    reason = {"deactivate": "inviter_deactivated", "demote": "inviter_demoted"}[how]
    assert json.loads(event.details)["reason"] == reason
    assert _pending(signed_in) == ["kept@example.com"]
    assert _accept(app, mine).status_code == 302  # other admins' invitations still work


# -- mail: the link goes only to the invited address (issue 12, point 6) -----------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.original_content)
        message["X-Rcpt-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


def test_with_mail_the_link_goes_only_to_the_invited_address(app, smtp):
    inbox, url = smtp
    app.config.update(KEYDESK_MAIL_URL=url, KEYDESK_BASE_URL="https://keys.example.com")
    create_user(app)
    client = app.test_client()
    login(client)
    # A forged Host header cannot point the mailed link elsewhere.
    evil = app.test_client()
    signed = evil.post(
        "/login", data={"email": "alice@example.com", "password": PASSWORD},
        base_url="http://evil.example",
    )  # fmt: skip
    assert signed.status_code == 302
    response = evil.post(
        "/admin/members/invite", data={"email": "newbie@example.com"},
        base_url="http://evil.example",
    )  # fmt: skip
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "Invitation sent to newbie@example.com" in page
    assert _link(response) is None and "/invite/" not in page
    [message] = inbox.messages
    assert message["To"] == "newbie@example.com" and message["X-Rcpt-To"] == "newbie@example.com"
    body = message.get_payload(decode=True).decode()
    [link] = re.findall(r"https://\S+/invite/\S+", body)
    assert link.startswith("https://keys.example.com/invite/") and "evil.example" not in body
    assert link.split("/invite/")[1] not in page
    with app.app_context():  # nor in the audit log
        assert all(link not in d for d in db.session.scalars(select(AuditEvent.details)))
    # Resending mails a new link and the old one stops working.
    resent = client.post("/admin/members/invite", data={"email": "newbie@example.com"})
    assert "sent again" in resent.get_data(as_text=True)
    [_, second] = inbox.messages
    [new_link] = re.findall(r"https://\S+/invite/\S+", second.get_payload(decode=True).decode())
    assert _accept(app, link).status_code == 410
    assert _accept(app, new_link).status_code == 302


def test_a_mail_failure_withdraws_the_invitation_and_says_so(app):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    app.config.update(KEYDESK_MAIL_URL=f"smtp://127.0.0.1:{port}")
    create_user(app)
    client = app.test_client()
    login(client)
    response = _invite(client, "newbie@example.com")
    assert response.status_code == 503
    assert "could not be sent" in response.get_data(as_text=True)
    assert _link(response) is None and _pending(client) == []


def test_without_mail_the_page_says_whoever_holds_the_link_can_claim_the_address(app, signed_in):
    response = _invite(signed_in, "newbie@example.com")
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    warning = soup.find(id="invite-holder-warning").get_text(" ", strip=True)
    assert "Whoever holds this link can claim newbie@example.com" in warning


def test_accepting_reveals_no_account_of_another_tenant(app, signed_in):
    """Whoever holds the link learns nothing about other tenants from accepting it: an
    address with an account elsewhere gets the page an address of this tenant gets."""
    create_user(app, "carol@example.com", tenant="elsewhere")
    elsewhere = _accept(app, _link(_invite(signed_in, "carol@example.com")))
    dave = _link(_invite(signed_in, "dave@example.com"))
    create_user(app, "dave@example.com", role="member")  # here, after the invitation
    here = _accept(app, dave)
    assert elsewhere.status_code == here.status_code == 409

    def text(response) -> str:
        soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
        return soup.find("main").get_text(" ", strip=True)

    assert text(elsewhere) == text(here)
    assert "exists" not in text(elsewhere)


@pytest.mark.parametrize(
    "url", ["keys.example.com", "ftp://keys.example.com", "https://", "https://k.example/?x=1"]
)
def test_an_unusable_base_url_stops_the_app_at_start(tmp_path, monkeypatch, url):
    from app import create_app

    monkeypatch.setenv("KEYDESK_BASE_URL", url)
    monkeypatch.setenv("KEYDESK_DATABASE_URL", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with pytest.raises(ValueError, match="KEYDESK_BASE_URL"):
        create_app({"TESTING": True})


def test_concurrent_invitations_of_one_address_make_one(app, signed_in):
    import threading

    create_user(app, "bob@example.com", role="admin")
    clients = [signed_in]
    for _ in range(3):
        extra = app.test_client()
        login(extra, "bob@example.com")
        clients.append(extra)
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []

    def invite(client):
        barrier.wait()
        statuses.append(_invite(client, "race@example.com").status_code)

    threads = [threading.Thread(target=invite, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * len(clients)
    with app.app_context():
        rows = db.session.scalars(select(Invite).where(Invite.email == "race@example.com")).all()
    assert len(rows) == 1 and _pending(signed_in) == ["race@example.com"]
