"""TOTP and recovery codes: the rules without HTTP (time passed in as `now`), then the pages
(/account/2fa, /login/2fa) on SQLite and PostgreSQL, with codes computed from the secret the
page shows."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.accounts import service as accounts
from app.accounts import twofactor
from app.audit import Actor
from app.auth import second_step
from app.errors import InvalidInput
from app.extensions import db
from app.models import AuditEvent, RecoveryCode, TotpFactor, UserSession
from tests.conftest import create_user, login
from tests.twofactor_helpers import (
    code_at,
    enable_totp,
    page_secret,
    password_step,
    recovery_codes,
)

NOW = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)


def _user(app, email="alice@example.com"):
    create_user(app, email)
    return accounts.get_user_by_email(email)


def _enabled(app, email="alice@example.com", now=NOW):
    user = _user(app, email)
    secret = twofactor.new_secret()
    codes = twofactor.enable_totp(
        user=user, secret=secret, code=code_at(secret, now.timestamp()), now=now,
        actor=Actor.cli(),
    )  # fmt: skip
    db.session.commit()
    return user, secret, codes


# --- rules ----------------------------------------------------------------------------


def test_a_code_is_accepted_once_and_never_again(app, ctx):
    user, secret, _ = _enabled(app)
    later = NOW + timedelta(seconds=60)
    code = code_at(secret, later.timestamp())
    assert twofactor.verify_code(user, code, now=later) == "totp"
    db.session.commit()
    with pytest.raises(InvalidInput) as replay:
        twofactor.verify_code(user, code, now=later + timedelta(seconds=5))
    assert replay.value.field == "code" and "already used" in str(replay.value)
    # An older code still inside the drift window is refused once a newer one was used.
    older = code_at(secret, later.timestamp() - 30)
    if older != code:
        with pytest.raises(InvalidInput):
            twofactor.verify_code(user, older, now=later)
    # The code of the next step works.
    nxt = later + timedelta(seconds=30)
    assert twofactor.verify_code(user, code_at(secret, nxt.timestamp()), now=nxt) == "totp"


def test_the_code_that_confirmed_the_set_up_signs_in_once(app, ctx):
    user, secret, _ = _enabled(app)
    code = code_at(secret, NOW.timestamp())
    assert twofactor.verify_code(user, code, now=NOW) == "totp"
    db.session.commit()
    with pytest.raises(InvalidInput, match="already used"):
        twofactor.verify_code(user, code, now=NOW)


def test_drift_of_one_step_is_allowed_and_two_is_not(app, ctx):
    user, secret, _ = _enabled(app)
    now = NOW + timedelta(minutes=10)
    assert twofactor.verify_code(user, code_at(secret, now.timestamp() - 30), now=now)
    db.session.commit()
    far = now + timedelta(minutes=5)
    stale = code_at(secret, far.timestamp() - 90)
    if stale not in {code_at(secret, far.timestamp() + d) for d in (-30, 0, 30)}:
        with pytest.raises(InvalidInput, match="not right"):
            twofactor.verify_code(user, stale, now=far)


@pytest.mark.parametrize(
    "bad",
    ["", " ", "12345", "1234567", "abcdef", "12345\x00", "١٢٣٤٥٦", "1" * 10_000, None, 123456,
     ["123456"], "\ud800" * 6, "\u202e123456", "zzzzz-zzzzz-zzzzz"],
)  # fmt: skip
def test_malformed_codes_are_refused_naming_the_field(app, ctx, bad):
    user, _, _ = _enabled(app)
    with pytest.raises(InvalidInput) as refused:
        twofactor.verify_code(user, bad, now=NOW + timedelta(minutes=1))
    assert refused.value.field == "code"


def test_recovery_codes_work_once_each_and_only_for_their_user(app, ctx):
    user, _, codes = _enabled(app)
    other, _, other_codes = _enabled(app, "bob@example.com")
    assert len(codes) == 10 and len(set(codes)) == 10
    assert twofactor.verify_code(user, codes[0], now=NOW) == "recovery_code"
    # Typed loosely: capitals, spaces, no dash.
    assert twofactor.verify_code(user, " " + codes[1].upper().replace("-", " "), now=NOW)
    db.session.commit()
    with pytest.raises(InvalidInput, match="already used"):
        twofactor.verify_code(user, codes[0], now=NOW)
    with pytest.raises(InvalidInput, match="not right"):
        twofactor.verify_code(user, other_codes[0], now=NOW)
    assert twofactor.recovery_codes_left(user) == 8
    assert twofactor.recovery_codes_left(other) == 10


def test_secrets_are_stored_sealed_and_codes_as_digests(app, ctx):
    user, secret, codes = _enabled(app)
    row = db.session.get(TotpFactor, user.id)
    assert secret.encode() not in row.secret_sealed
    digests = db.session.execute(select(RecoveryCode.digest)).scalars().all()
    for code in codes:
        assert all(code.replace("-", "") not in d and code not in d for d in digests)
    for event in db.session.execute(select(AuditEvent)).scalars():
        assert secret not in event.details
        assert not any(code in event.details for code in codes)


def test_new_recovery_codes_replace_the_old_ones(app, ctx):
    user, _, old = _enabled(app)
    new = twofactor.regenerate_recovery_codes(user=user, now=NOW, actor=Actor.cli())
    db.session.commit()
    with pytest.raises(InvalidInput):
        twofactor.verify_code(user, old[0], now=NOW)
    assert twofactor.verify_code(user, new[0], now=NOW) == "recovery_code"


def test_reset_removes_every_factor_and_ends_sessions(app, ctx):
    user, _, _ = _enabled(app)
    live = UserSession(
        public_id="s1", digest="d" * 64, user_id=user.id, method="password",
        created_at=NOW, last_seen_at=NOW,
    )  # fmt: skip
    db.session.add(live)
    db.session.commit()
    removed = twofactor.reset_second_factors(user=user, now=NOW, actor=Actor.cli())
    db.session.commit()
    assert removed == {"totp": 1, "recovery_codes": 10, "passkeys": 0}
    assert not twofactor.has_second_factor(user)
    db.session.refresh(live)
    assert live.ended_at == NOW and live.end_reason == "2fa_reset"


# --- pages ----------------------------------------------------------------------------


def test_enrollment_page_shows_a_secret_and_a_qr_code_and_turns_on_with_a_code(app, signed_in):
    page = signed_in.get("/account/2fa")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    secret = page_secret(html)
    assert len(secret) == 32 and set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert "<svg" in html and "<script" not in html.split("<main", 1)[1]

    wrong = signed_in.post("/account/2fa", data={"code": "000000"})
    assert wrong.status_code == 400
    assert "does not match" in wrong.get_data(as_text=True)
    # The same secret is shown again after a wrong code (the app already holds it).
    assert page_secret(wrong.get_data(as_text=True)) == secret
    malformed = signed_in.post("/account/2fa", data={"code": "12ab"})
    assert malformed.status_code == 400 and "6-digit" in malformed.get_data(as_text=True)

    done = signed_in.post("/account/2fa", data={"code": code_at(secret, time.time())})
    assert done.status_code == 200 and done.headers["Cache-Control"] == "no-store"
    assert len(recovery_codes(done.get_data(as_text=True))) == 10
    status = signed_in.get("/account/2fa").get_data(as_text=True)
    assert "Two-factor authentication is on" in status and "totp-secret" not in status
    with app.app_context():
        actions = db.session.execute(select(AuditEvent.action)).scalars().all()
        assert "2fa.totp_enabled" in actions


def test_a_new_get_shows_a_new_secret(app, signed_in):
    first = page_secret(signed_in.get("/account/2fa").get_data(as_text=True))
    second = page_secret(signed_in.get("/account/2fa").get_data(as_text=True))
    assert first != second
    # Only the newest one can be confirmed.
    old = signed_in.post("/account/2fa", data={"code": code_at(first, time.time())})
    assert old.status_code == 400


def test_posting_a_code_without_the_page_asks_to_start_again(app, signed_in):
    response = signed_in.post("/account/2fa", data={"code": "123456"})
    assert response.status_code == 400
    assert "too old" in response.get_data(as_text=True)


def test_sign_in_asks_for_the_code_and_refuses_a_replay(app, client, user):
    login(client)
    secret, _ = enable_totp(client)
    client.post("/logout")

    password_step(client)
    assert client.get("/keys").status_code == 302  # not signed in between the two steps
    page = client.get("/login/2fa")
    assert page.status_code == 200 and 'id="use-passkey"' not in page.get_data(as_text=True)
    wrong = client.post("/login/2fa", data={"code": "000000"})
    assert wrong.status_code == 400 and "not right" in wrong.get_data(as_text=True)

    # The code that confirmed the set-up may still be the current one: it is not spent.
    code = code_at(secret, time.time())
    ok = client.post("/login/2fa", data={"code": code})
    assert ok.status_code == 302 and ok.headers["Location"].endswith("/keys")
    assert client.get("/keys").status_code == 200
    client.post("/logout")

    password_step(client)
    replay = client.post("/login/2fa", data={"code": code})
    assert replay.status_code == 400
    assert "already used" in replay.get_data(as_text=True)
    with app.app_context():
        actions = db.session.execute(select(AuditEvent.action)).scalars().all()
        assert "auth.second_factor_failed" in actions and "auth.password_verified" in actions
        for event in db.session.execute(select(AuditEvent)).scalars():
            assert code not in event.details and secret not in event.details


def test_sign_in_with_a_recovery_code_keeps_next(app, client, user):
    login(client)
    _, codes = enable_totp(client)
    client.post("/logout")
    response = client.post(
        "/login?next=/keys/new", data={"email": "alice@example.com", "password": _pw()}
    )
    assert response.headers["Location"].endswith("/login/2fa")
    ok = client.post("/login/2fa", data={"code": codes[3]})
    assert ok.status_code == 302 and ok.headers["Location"].endswith("/keys/new")
    client.post("/logout")
    password_step(client)
    used = client.post("/login/2fa", data={"code": codes[3]})
    assert used.status_code == 400 and "already used" in used.get_data(as_text=True)


def _pw():
    from tests.conftest import PASSWORD

    return PASSWORD


def test_second_step_without_a_password_step_goes_back_to_login(app, client, user):
    assert client.get("/login/2fa").headers["Location"].endswith("/login")
    assert client.post("/login/2fa", data={"code": "123456"}).status_code == 302


def test_an_old_password_step_has_expired(app, client, user):
    login(client)
    enable_totp(client)
    client.post("/logout")
    password_step(client)
    with client.session_transaction() as session:
        marker = session[second_step.PENDING_KEY]
        marker["at"] -= second_step.PENDING_SECONDS + 1
        session[second_step.PENDING_KEY] = marker
    response = client.get("/login/2fa")
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")


def test_five_wrong_codes_end_the_half_sign_in(app, client, user):
    login(client)
    enable_totp(client)
    client.post("/logout")
    password_step(client)
    for _ in range(second_step.MAX_FAILURES - 1):
        assert client.post("/login/2fa", data={"code": "000000"}).status_code == 400
    last = client.post("/login/2fa", data={"code": "000000"})
    assert last.status_code == 302 and last.headers["Location"].endswith("/login")
    assert client.get("/login/2fa").status_code == 302


@pytest.mark.parametrize(
    "app_config", [{"KEYDESK_LOGIN_RATE_LIMIT": "4 per minute"}], indirect=True
)
def test_wrong_codes_count_against_the_sign_in_limit(app, client, user):
    login(client)  # 1 password attempt
    enable_totp(client)
    client.post("/logout")
    password_step(client)  # 2
    assert client.post("/login/2fa", data={"code": "000000"}).status_code == 400  # 3
    assert client.post("/login/2fa", data={"code": "000001"}).status_code == 400  # 4
    assert client.post("/login/2fa", data={"code": "000002"}).status_code == 429
    # The account's budget is spent for the password form too, from any address.
    other = app.test_client()
    response = other.post(
        "/login",
        data={"email": "alice@example.com", "password": _pw()},
        environ_base={"REMOTE_ADDR": "10.9.8.7"},
    )
    assert response.status_code == 429


@pytest.mark.parametrize(
    "bad", ["\x00", "1" * 65, "\ud800", "\u202e12345", "𝟙𝟚𝟛𝟜𝟝𝟞", "' OR 1=1 --"]
)
def test_bad_input_on_the_code_fields_is_a_clear_400(app, client, user, bad):
    login(client)
    enable_totp(client)
    client.post("/logout")
    password_step(client)
    if bad == "\ud800":  # a lone surrogate as a browser could send it: invalid UTF-8
        response = client.post(
            "/login/2fa", data=b"code=%ED%A0%80", content_type="application/x-www-form-urlencoded"
        )
    else:
        response = client.post("/login/2fa", data={"code": bad})
    assert response.status_code == 400
    if bad != "\x00":  # NUL is refused before any view (app/web.py)
        assert 'id="code-error"' in response.get_data(as_text=True)


def test_turning_totp_off_removes_it_and_its_recovery_codes(app, client, user):
    login(client)
    enable_totp(client)
    response = client.post("/account/2fa/disable")
    assert response.status_code == 302
    client.post("/logout")
    response = login(client)
    assert response.headers["Location"].endswith("/keys")
    with app.app_context():
        assert db.session.execute(select(RecoveryCode)).first() is None
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "2fa.totp_disabled")
        ).scalar_one()
        assert json.loads(event.details) == {}


def test_account_pages_need_a_sign_in(app, client):
    for path in ("/account", "/account/2fa"):
        assert client.get(path).headers["Location"].startswith("/login")
    assert client.post("/account/2fa/disable").status_code == 302


def test_regenerated_recovery_codes_are_shown_once(app, client, user):
    login(client)
    _, old = enable_totp(client)
    response = client.post("/account/2fa/recovery-codes")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    new = recovery_codes(response.get_data(as_text=True))
    assert len(new) == 10 and not set(new) & set(old)


def test_a_changed_secret_key_leaves_recovery_codes_working(app, ctx):
    user, secret, codes = _enabled(app)
    app.config["SECRET_KEY"] = "a rotated session key"
    later = NOW + timedelta(minutes=3)
    with pytest.raises(InvalidInput, match="secret key changed") as refused:
        twofactor.verify_code(user, code_at(secret, later.timestamp()), now=later)
    assert refused.value.field == "code"
    assert twofactor.verify_code(user, codes[0], now=later) == "recovery_code"


def test_two_requests_racing_with_one_code_let_exactly_one_in(app):
    import threading

    with app.app_context():
        user, secret, _ = _enabled(app)
        user_id = user.id
    later = NOW + timedelta(minutes=2)
    code = code_at(secret, later.timestamp())
    barrier = threading.Barrier(2)
    results: list[str] = []

    def attempt():
        with app.app_context():
            from app.models import User

            barrier.wait()  # before any query: on SQLite the first one takes the write lock
            me = db.session.get(User, user_id)
            try:
                results.append(twofactor.verify_code(me, code, now=later))
                db.session.commit()
            except InvalidInput:
                db.session.rollback()
                results.append("refused")
            finally:
                db.session.remove()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(results) == ["refused", "totp"]
