"""Password reset links are built like every other mailed link (app.web.public_url):
KEYDESK_BASE_URL when set, whatever Host header the request that asked for it carried, and
with the path the app answers on (a mount prefix included), so the link leads back to the
reset page. Mailed through a real SMTP server (tests/mail_helpers.py)."""

from __future__ import annotations

import re

import pytest

from app.auth.reset_mail import mailer
from tests.mail_helpers import body_of, smtp  # noqa: F401 - the fixture

BASE = "https://keys.example.com"
LINK = re.compile(r"https?://\S+/reset-password/([A-Za-z0-9_-]{43})")


@pytest.fixture
def mail_app(app, smtp):  # noqa: F811 - the fixture above
    url, inbox = smtp
    app.config.update(KEYDESK_MAIL_URL=url, KEYDESK_BASE_URL=BASE)
    yield app, inbox
    assert mailer(app).drain(), "the reset mail worker did not finish"


def _mailed_link(app, inbox, **request) -> str:
    client = app.test_client()
    answer = client.post("/forgot-password", data={"email": "alice@example.com"}, **request)
    assert answer.status_code == 200
    [message] = inbox.wait_for(1)
    match = LINK.search(body_of(message))
    assert match, body_of(message)
    return match.group(0)


def test_a_forged_host_does_not_move_the_link(mail_app, user):
    app, inbox = mail_app
    link = _mailed_link(
        app, inbox, base_url="http://evil.example", headers={"X-Forwarded-Host": "evil.example"}
    )
    assert link.startswith(f"{BASE}/reset-password/") and "evil" not in link
    token = link.rsplit("/", 1)[1]
    assert app.test_client().get(f"/reset-password/{token}").status_code == 200


def test_under_a_mount_prefix_the_link_keeps_it(mail_app, user):
    # Served under /keydesk (SCRIPT_NAME from the proxy): the invitation links already carry
    # the prefix (public_url); the reset link must too, or it lands on someone else's page.
    app, inbox = mail_app
    link = _mailed_link(app, inbox, environ_overrides={"SCRIPT_NAME": "/keydesk"})
    assert link.startswith(f"{BASE}/keydesk/reset-password/"), link
    client = app.test_client()
    path = link.removeprefix(BASE).removeprefix("/keydesk")
    page = client.get(path, environ_overrides={"SCRIPT_NAME": "/keydesk"})
    assert page.status_code == 200


def test_without_a_base_url_the_requests_host_is_used(mail_app, user):
    app, inbox = mail_app
    app.config["KEYDESK_BASE_URL"] = None
    link = _mailed_link(app, inbox, base_url="http://localhost:8080")
    assert link.startswith("http://localhost:8080/reset-password/")
