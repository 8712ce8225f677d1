"""Usage counts on the key page, the expiry banner, and `flask keys remind` (print and SMTP)."""

from __future__ import annotations

import base64
import email
import socket
import socketserver
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import func, select, update

from app.clock import utcnow
from app.extensions import db
from app.models import ApiKey, KeyUsageDaily
from tests.conftest import bearer, create_user, issue_key, login, secret_from_page


def age_last_use(app, key_id: str, seconds: int = 120) -> None:
    """Make the key's recorded last use old enough that the next request flushes its counts."""
    with app.app_context():
        db.session.execute(
            update(ApiKey)
            .where(ApiKey.key_id == key_id)
            .values(last_used_at=utcnow() - timedelta(seconds=seconds))
        )
        db.session.commit()


def usage_rows(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.coalesce(func.sum(KeyUsageDaily.count), 0)))


def test_usage_chart_counts_real_api_calls_without_a_write_per_request(app, signed_in, monkeypatch):
    full = issue_key(app, scopes=("api:read",))
    key_id = full.split("_")[1]
    for _ in range(5):
        assert signed_in.get("/api/v1/me", headers=bearer(full)).status_code == 200
    # the first call recorded the key's use; the next four wait in memory for the next minute
    assert usage_rows(app) == 1
    age_last_use(app, key_id)
    # A minute later for the worker too: it keeps its own once-a-minute gate, since on
    # PostgreSQL the row it authenticates from may come from its key cache.
    from app.api import auth as api_auth

    later = time.time() + 61
    monkeypatch.setattr(api_auth, "time", SimpleNamespace(time=lambda: later))
    signed_in.get("/api/v1/me", headers=bearer(full))
    assert usage_rows(app) == 6

    for url in (f"/keys/{key_id}", f"/admin/keys/{key_id}"):
        html = signed_in.get(url).get_data(as_text=True)
        soup = BeautifulSoup(html, "html.parser")
        assert "6 requests in the last 30 days" in soup.find("desc").get_text()
        bars = soup.select("svg rect.bar")
        assert len(bars) == 30
        today = utcnow().date().isoformat()
        assert bars[-1].find("title").get_text() == f"{today}: 6 requests"
        assert float(bars[-1]["height"]) > 0 and float(bars[0]["height"]) == 0
        assert "127.0.0.1" in soup.get_text()  # last addresses
        assert "key.used_from_new_ip" in html and "key.issued" in html  # the key's events
        assert full not in html


def test_expiry_banner_offers_a_one_click_rotate(app, signed_in):
    soon = issue_key(app, days=30, name="expires soon")
    with app.app_context():  # issued 25 days ago, as it were
        db.session.execute(
            update(ApiKey)
            .where(ApiKey.key_id == soon.split("_")[1])
            .values(created_at=utcnow() - timedelta(days=25), expires_at=utcnow() + timedelta(5))
        )
        db.session.commit()
    issue_key(app, days=90, name="fine for now")
    soup = BeautifulSoup(signed_in.get("/keys").get_data(as_text=True), "html.parser")
    banner = soup.find(id="expiring-title").find_parent("section")
    assert "1 key expiring within 7 days" in banner.get_text(" ", strip=True)
    assert "expires soon" in banner.get_text() and "fine for now" not in banner.get_text()
    form = banner.find("form")
    response = signed_in.post(form["action"], data={"grace_hours": "24"})
    assert response.status_code == 200 and secret_from_page(response.get_data(as_text=True))
    assert soon.split("_")[1] in form["action"]
    # the successor lives 30 days again; the old key is in its grace period: no banner
    after = BeautifulSoup(signed_in.get("/keys").get_data(as_text=True), "html.parser")
    assert after.find(id="expiring-title") is None


@pytest.fixture
def expiring_keys(app, user):
    create_user(app, "bob@example.com", role="member")
    issue_key(app, days=3, name="alice deploy")
    issue_key(app, days=6, name="alice ci")
    issue_key(app, days=30, name="alice later")
    issue_key(app, days=0, name="alice forever")
    gone = issue_key(app, days=2, name="alice revoked")
    with app.app_context():
        db.session.execute(
            update(ApiKey).where(ApiKey.key_id == gone.split("_")[1]).values(revoked_at=utcnow())
        )
        db.session.commit()
    issue_key(app, "bob@example.com", days=1, name="bob nightly")


def test_remind_prints_one_message_per_owner_and_only_once_a_day(app, runner, expiring_keys):
    result = runner.invoke(args=["keys", "remind", "--within-days", "7"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("Would send to") == 2
    alice = out[out.index("Would send to alice") :]
    alice = alice[: alice.index("Would send to bob")] if "Would send to bob" in alice else alice
    assert "alice deploy" in alice and "alice ci" in alice
    assert "alice later" not in out and "alice forever" not in out and "alice revoked" not in out
    assert "bob nightly" in out and "Printed 2 reminders" in out

    again = runner.invoke(args=["keys", "remind", "--within-days", "7"])
    assert again.exit_code == 0 and "No reminders to send" in again.output
    wider = runner.invoke(args=["keys", "remind", "--within-days", "30"])
    assert "alice later" in wider.output and "alice deploy" not in wider.output
    assert runner.invoke(args=["keys", "remind", "--within-days", "0"]).exit_code != 0


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        server = self.server
        self.reply("220 test SMTP")
        envelope: dict = {"rcpt": []}
        while line := self.rfile.readline():
            command = line.decode().strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250-test\r\n250 AUTH PLAIN")
            elif verb == "AUTH":
                server.logins.append(base64.b64decode(command.split()[-1]).split(b"\0")[1:])
                self.reply("235 ok")
            elif verb == "MAIL":
                envelope["from"] = command
                self.reply("250 ok")
            elif verb == "RCPT":
                envelope["rcpt"].append(command)
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go on")
                data = b""
                while (chunk := self.rfile.readline()) != b".\r\n":
                    data += chunk
                server.messages.append(email.message_from_bytes(data))
                self.reply("250 queued")
            elif verb == "RSET" or verb == "NOOP":
                self.reply("250 ok")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 no")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.daemon_threads = True
    server.messages, server.logins = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_remind_sends_through_smtp_once(app, runner, expiring_keys, smtp_server):
    port = smtp_server.server_address[1]
    app.config["KEYDESK_MAIL_URL"] = f"smtp://mailer:p%40ss@127.0.0.1:{port}"
    app.config["KEYDESK_MAIL_FROM"] = "keydesk@acme.example"
    result = runner.invoke(args=["keys", "remind", "--within-days", "7"])
    assert result.exit_code == 0, result.output
    assert "Sent 2 reminders" in result.output and "Would send" not in result.output
    by_owner = {m["To"]: m for m in smtp_server.messages}
    assert set(by_owner) == {"alice@example.com", "bob@example.com"}
    body = by_owner["alice@example.com"].get_payload(decode=True).decode()
    assert "alice deploy" in body and "alice ci" in body and "alice later" not in body
    assert by_owner["alice@example.com"]["From"] == "keydesk@acme.example"
    assert "2 API keys expiring soon" in by_owner["alice@example.com"]["Subject"]
    assert smtp_server.logins[0] == [b"mailer", b"p@ss"]

    again = runner.invoke(args=["keys", "remind", "--within-days", "7"])
    assert again.exit_code == 0 and len(smtp_server.messages) == 2


def test_remind_reports_an_unreachable_mail_server_and_retries_later(app, runner, expiring_keys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.config["KEYDESK_MAIL_URL"] = f"smtp://127.0.0.1:{port}"
    result = runner.invoke(args=["keys", "remind"])
    assert result.exit_code != 0 and "Could not send" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).where(ApiKey.reminded_at.is_not(None))) == 0
    app.config["KEYDESK_MAIL_URL"] = "http://example.com"
    bad = runner.invoke(args=["keys", "remind"])
    assert bad.exit_code != 0 and "KEYDESK_MAIL_URL" in bad.output


def test_member_sees_no_admin_link_and_banner_only_for_own_keys(app, client, expiring_keys):
    login(client, "bob@example.com")
    html = client.get("/keys").get_data(as_text=True)
    assert "bob nightly" in html and "alice deploy" not in html and "/admin/keys" not in html
