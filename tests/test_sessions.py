"""Server-side sessions: an ended session signs nobody in, whatever cookie comes with it;
idle and absolute timeouts; /account/sessions lists and ends them; deactivation ends them."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import event

from app.accounts import service as accounts
from app.accounts.sessions import describe_device, token_digest
from app.extensions import db
from tests.conftest import PASSWORD, create_user, issue_key, login
from tests.session_helpers import (
    age_sessions,
    copy_client,
    events,
    signed_in_client,
    user_sessions,
)

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


def session_ids(html: str) -> list[str]:
    page = BeautifulSoup(html, "html.parser")
    return [row["data-session-id"] for row in page.select("tr[data-session-id]")]


def test_a_copied_cookie_dies_with_sign_out(app, signed_in):
    thief = copy_client(app, signed_in)
    assert thief.get("/admin/members").status_code == 200  # the copy works while it lives
    assert signed_in.post("/logout").status_code == 302
    answer = thief.get("/admin/members")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")
    assert thief.get("/keys").status_code == 302
    [row] = user_sessions(app, "alice@example.com")
    assert row.ended_at is not None and row.end_reason == "signed_out"


def test_the_cookie_holds_a_token_whose_digest_only_is_stored(app, client, user):
    client.environ_base.update(HTTP_USER_AGENT=FIREFOX, REMOTE_ADDR="198.51.100.7")
    login(client)
    with client.session_transaction() as sess:
        token = sess["keydesk_session"]
    [row] = user_sessions(app, user)
    assert row.digest == token_digest(token) and token not in row.digest
    assert row.ip == "198.51.100.7" and row.user_agent == FIREFOX
    assert row.method == "password" and row.sudo_at == row.created_at
    # No user id or identity in the cookie: Flask-Login's keys are not kept there.
    with client.session_transaction() as sess:
        assert "_user_id" not in sess and "_id" not in sess


def test_an_old_style_cookie_with_a_user_id_signs_nobody_in(app, client, user):
    with client.session_transaction() as sess:
        sess["_user_id"] = "1"
        sess["_fresh"] = True
    assert client.get("/keys").status_code == 302


def test_a_forged_or_junk_token_signs_nobody_in(app, client, user):
    for token in ("x", "a" * 5000, "\udc80", 12345, ["list"], None):
        with client.session_transaction() as sess:
            sess["keydesk_session"] = token
        assert client.get("/keys").status_code == 302


def test_idle_sessions_end(app, signed_in, user):
    age_sessions(app, user, last_seen_at=timedelta(minutes=59))
    assert signed_in.get("/keys").status_code == 200
    age_sessions(app, user, last_seen_at=timedelta(minutes=61))
    assert signed_in.get("/keys").status_code == 302


@pytest.mark.parametrize("app_config", [{"KEYDESK_SESSION_IDLE_MINUTES": 5}], indirect=True)
def test_idle_timeout_is_configurable(app, signed_in, user):
    age_sessions(app, user, last_seen_at=timedelta(minutes=6))
    assert signed_in.get("/keys").status_code == 302


def test_every_session_ends_after_the_absolute_timeout(app, signed_in, user):
    # In use a minute ago, but signed in more than 24 hours ago.
    age_sessions(app, user, created_at=timedelta(hours=24, minutes=1))
    assert signed_in.get("/keys").status_code == 302


def test_last_seen_is_written_at_most_once_a_minute(app, signed_in, user):
    [before] = user_sessions(app, user)
    for _ in range(3):
        assert signed_in.get("/keys").status_code == 200
    [same] = user_sessions(app, user)
    assert same.last_seen_at == before.last_seen_at
    age_sessions(app, user, last_seen_at=timedelta(minutes=2))
    signed_in.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    assert signed_in.get("/keys").status_code == 200
    [after] = user_sessions(app, user)
    assert after.last_seen_at >= before.last_seen_at and after.ip == "203.0.113.9"


def test_a_request_racing_a_revoke_does_not_revive_the_session(app, signed_in, user):
    from app.accounts import sessions
    from app.clock import utcnow

    age_sessions(app, user, last_seen_at=timedelta(minutes=2))
    [row] = user_sessions(app, user)
    with app.app_context():
        sessions.end_user_sessions(user=accounts.get_user_by_email(user), reason="t", now=utcnow())
        sessions.touch(session_id=row.id, ip="1.2.3.4", now=utcnow())
        db.session.commit()
    [ended] = user_sessions(app, user)
    assert ended.ended_at is not None and ended.ip != "1.2.3.4"


def test_the_api_does_no_session_work(app, signed_in, user):
    key = issue_key(app)
    statements = []
    with app.app_context():
        engine = db.engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        answer = signed_in.get("/api/v1/ping")
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert answer.status_code == 200
    assert statements == []  # the ORM engine is not touched (the hot path has its own)
    assert "Set-Cookie" not in answer.headers and "Cookie" not in answer.headers.get("Vary", "")
    assert (
        signed_in.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    )


@pytest.mark.parametrize(
    "app_config", [{"RATELIMIT_STORAGE_URI": "redis://127.0.0.1:1/0"}], indirect=True
)
def test_an_unreachable_redis_never_fails_a_sign_in(app, user):
    client = app.test_client()
    assert login(client).status_code == 302
    assert client.get("/account/sessions").status_code == 200


def test_signing_in_again_ends_the_browsers_previous_session(app, signed_in, user):
    login(signed_in)
    rows = user_sessions(app, user)
    assert [r.end_reason for r in rows] == ["replaced", None]


def test_sessions_page_lists_devices_and_ends_one(app, user):
    laptop = signed_in_client(app, user, HTTP_USER_AGENT=FIREFOX, REMOTE_ADDR="198.51.100.1")
    phone = signed_in_client(app, user, HTTP_USER_AGENT=CHROME_MAC, REMOTE_ADDR="198.51.100.2")
    page = laptop.get("/account/sessions")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Firefox on Linux" in html and "Chrome on macOS" in html
    assert "198.51.100.1" in html and "198.51.100.2" in html
    ids = session_ids(html)
    assert len(ids) == 2
    doc = BeautifulSoup(html, "html.parser")
    current = doc.select_one("tr.current")["data-session-id"]
    other = next(i for i in ids if i != current)

    answer = laptop.post(f"/account/sessions/{other}/revoke")
    assert answer.status_code == 302
    assert phone.get("/keys").status_code == 302  # ended at its next request
    assert laptop.get("/keys").status_code == 200
    assert session_ids(laptop.get("/account/sessions").get_data(as_text=True)) == [current]
    [revoked] = events(app, "session.revoked")
    assert json.loads(revoked.details)["session"] == other
    # Ending it again, or any junk id, is 404.
    assert laptop.post(f"/account/sessions/{other}/revoke").status_code == 404


def test_ending_your_own_session_signs_you_out(app, signed_in):
    [current] = session_ids(signed_in.get("/account/sessions").get_data(as_text=True))
    answer = signed_in.post(f"/account/sessions/{current}/revoke")
    assert answer.status_code == 302 and answer.headers["Location"] == "/login"
    assert signed_in.get("/keys").status_code == 302


def test_sign_out_everywhere_else(app, user):
    here = signed_in_client(app, user)
    others = [signed_in_client(app, user) for _ in range(2)]
    assert here.post("/account/sessions/revoke-others").status_code == 302
    assert all(o.get("/keys").status_code == 302 for o in others)
    assert here.get("/keys").status_code == 200
    [done] = events(app, "session.revoked_others")
    assert json.loads(done.details)["count"] == 2


BAD_IDS = [
    "0",
    "9" * 20,
    str(2**63),
    str(2**31),
    "x" * 300,
    "%E2%80%AE",
    "a%0d%0ab",
    "a.b",
    "%F0%9F%94%91",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_junk_session_ids_are_404(signed_in, bad):
    assert signed_in.post(f"/account/sessions/{bad}/revoke").status_code == 404


def test_another_users_session_is_404_and_stays(app, user):
    create_user(app, "mallory@other.example", tenant="other")
    alice = signed_in_client(app, user)
    mallory = signed_in_client(app, "mallory@other.example")
    [alice_id] = session_ids(alice.get("/account/sessions").get_data(as_text=True))
    assert mallory.post(f"/account/sessions/{alice_id}/revoke").status_code == 404
    assert alice.get("/keys").status_code == 200


def test_revoking_needs_the_csrf_token(app, user):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = BeautifulSoup(page, "html.parser").find("input", {"name": "csrf_token"})["value"]
    client.post("/login", data={"email": user, "password": PASSWORD, "csrf_token": token})
    [current] = session_ids(client.get("/account/sessions").get_data(as_text=True))
    assert client.post(f"/account/sessions/{current}/revoke").status_code == 400
    assert client.get("/keys").status_code == 200


def test_deactivation_ends_the_members_sessions_at_once(app, signed_in):
    create_user(app, "bob@example.com", role="member")
    bob = signed_in_client(app, "bob@example.com")
    assert bob.get("/keys").status_code == 200
    with app.app_context():
        bob_id = accounts.get_user_by_email("bob@example.com").id
    assert signed_in.post(f"/admin/members/{bob_id}/deactivate").status_code == 302
    assert bob.get("/keys").status_code == 302
    [row] = user_sessions(app, "bob@example.com")
    assert row.end_reason == "deactivated"
    [deactivated] = events(app, "member.deactivated")
    assert json.loads(deactivated.details)["sessions_ended"] == 1


def test_signed_out_visitors_are_sent_to_login(client):
    for path in ("/account", "/account/sessions"):
        answer = client.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")
    assert client.post("/account/sessions/abc/revoke").status_code == 302


def test_device_labels():
    assert describe_device(FIREFOX) == "Firefox on Linux"
    assert describe_device(CHROME_MAC) == "Chrome on macOS"
    assert describe_device(None) == "Unknown device"
    assert describe_device("curl/8.5.0") == "curl"


def test_long_ended_sessions_are_pruned_at_sign_in(app, user):
    first = signed_in_client(app, user)
    first.post("/logout")
    second = signed_in_client(app, user)
    second.post("/logout")
    rows = user_sessions(app, user)
    with app.app_context():
        from sqlalchemy import update

        from app.clock import utcnow
        from app.models import UserSession

        for row, days in zip(rows, (31, 29), strict=True):
            db.session.execute(
                update(UserSession)
                .where(UserSession.id == row.id)
                .values(ended_at=utcnow() - timedelta(days=days))
            )
        db.session.commit()
    signed_in_client(app, user)
    kept = user_sessions(app, user)
    assert [r.id for r in kept][:1] == [rows[1].id] and len(kept) == 2
