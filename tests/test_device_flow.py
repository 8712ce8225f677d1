"""Signing in from a terminal (RFC 8628) and the user access tokens it hands out, on both
databases: every RFC error code, the /device page, and what a token may and may not do."""

from __future__ import annotations

import re
import zlib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.clock import utcnow
from app.extensions import db
from app.keys import format as keyformat
from app.models import ApiKey, AuditEvent, DeviceAuthorization
from tests.conftest import KEY_RE, bearer, create_user, issue_key, login
from tests.device_helpers import GRANT, decide, poll, sign_in_terminal, start

USER_CODE_RE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")
TOKEN_RE = re.compile(r"^kdu_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}$")


@pytest.fixture
def browser(app, user):
    """A second client, signed in to the portal as alice (the person approving)."""
    browser = app.test_client()
    assert login(browser).status_code == 302
    return browser


def error_of(response) -> str:
    assert response.status_code == 400, (response.status_code, response.get_data(as_text=True))
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["error_description"]
    return body["error"]


# --- device authorization endpoint ------------------------------------------------------


def test_device_authorization_answers_rfc_8628_fields(app, client):
    response = client.post("/api/v1/oauth/device_authorization", data={"client_id": "keydesk-cli"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert USER_CODE_RE.match(body["user_code"])
    assert body["verification_uri"] == "http://localhost/device"
    assert body["verification_uri_complete"] == (
        "http://localhost/device?user_code=" + body["user_code"]
    )
    assert body["expires_in"] == 600 and body["interval"] == 5
    assert len(body["device_code"]) >= 40
    # only digests are stored: neither code appears in the row
    with app.app_context():
        row = db.session.execute(select(DeviceAuthorization)).scalar_one()
        stored = repr([getattr(row, c.key) for c in DeviceAuthorization.__table__.columns])
    assert body["device_code"] not in stored
    assert body["user_code"] not in stored and body["user_code"].replace("-", "") not in stored


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"client_id": "other-cli"}, "invalid_client"),
        ({"client_id": ""}, "invalid_request"),
        ({}, "invalid_request"),
        ({"client_id": ["keydesk-cli", "keydesk-cli"]}, "invalid_request"),
        ({"client_id": "keydesk-cli", "scope": "api:read nope:nope"}, "invalid_scope"),
        ({"client_id": "keydesk-cli\u202e"}, "invalid_client"),
        ({"client_id": "k" * 5000}, "invalid_client"),
    ],
)
def test_device_authorization_refuses_bad_input(client, data, error):
    response = client.post("/api/v1/oauth/device_authorization", data=data)
    assert error_of(response) == error


def test_device_authorization_wants_a_form_not_json(client):
    response = client.post("/api/v1/oauth/device_authorization", json={"client_id": "keydesk-cli"})
    assert error_of(response) == "invalid_request"


# --- token endpoint: the RFC 8628 section 3.5 answers ----------------------------------


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"grant_type": None}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"client_id": None}, "invalid_request"),
        ({"client_id": "other"}, "invalid_client"),
        ({"device_code": None}, "invalid_request"),
        ({"device_code": "x"}, "invalid_grant"),
        ({"device_code": "x" * 60_000}, "invalid_grant"),
    ],
)
def test_token_endpoint_refuses_bad_input(client, overrides, error):
    flow = start(client)
    overrides = dict(overrides)  # shared by both databases' runs
    code = overrides.pop("device_code", flow["device_code"])
    assert error_of(poll(client, code, **overrides)) == error


@pytest.mark.parametrize("raw", ["%ED%B3%BF", "%FF%FE", "%C0%80", "%E2%80%AE"])
def test_token_endpoint_takes_undecodable_bytes_without_a_500(client, raw):
    start(client)
    body = f"grant_type={GRANT}&client_id=keydesk-cli&device_code={raw}"
    response = client.post(
        "/api/v1/oauth/token", data=body, content_type="application/x-www-form-urlencoded"
    )
    assert error_of(response) == "invalid_grant"


def test_pending_then_slow_down_when_polled_sooner_than_interval(app, client):
    flow = start(client)
    assert error_of(poll(client, flow["device_code"])) == "authorization_pending"
    assert error_of(poll(client, flow["device_code"])) == "slow_down"
    with app.app_context():
        assert db.session.execute(select(DeviceAuthorization.interval)).scalar_one() == 10
    # polled on time again: pending, not slow_down
    with app.app_context():
        db.session.execute(
            update(DeviceAuthorization).values(last_polled_at=utcnow() - timedelta(seconds=11))
        )
        db.session.commit()
    assert error_of(poll(client, flow["device_code"])) == "authorization_pending"


def test_approved_code_exchanges_once_for_a_user_access_token(app, client, browser):
    flow = start(client)
    assert error_of(poll(client, flow["device_code"])) == "authorization_pending"
    page = browser.get("/device?user_code=" + flow["user_code"])
    assert page.status_code == 200 and flow["user_code"] in page.get_data(as_text=True)
    confirm = browser.post("/device", data={"user_code": flow["user_code"].lower()})
    text = confirm.get_data(as_text=True)
    assert confirm.status_code == 200
    assert "keydesk-cli" in text and "127.0.0.1" in text  # the client and who asked
    assert "keys:write" in text and "8 hours" in text  # the access it will get
    assert decide(browser, flow["user_code"]).status_code == 200

    response = poll(client, flow["device_code"])  # right after a poll: approved beats slow_down
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert TOKEN_RE.match(body["access_token"])
    assert body["token_type"] == "Bearer" and body["expires_in"] == 8 * 3600
    assert "keys:write" in body["scope"].split()
    # exchangeable once
    assert error_of(poll(client, flow["device_code"])) == "invalid_grant"

    me = client.get("/api/v1/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json["key"]["kind"] == "user_token"
    assert me.json["key"]["expires_at"] - me.json["key"]["created_at"] == 8 * 3600
    assert me.json["user"] == {"email": "alice@example.com", "role": "admin"}
    assert me.json["tenant"]["slug"] == "acme"
    with app.app_context():
        actions = list(db.session.execute(select(AuditEvent.action, AuditEvent.details)).all())
    assert {"device.approved", "user_token.issued"} <= {a for a, _ in actions}
    assert all(body["access_token"] not in d for _, d in actions)


def test_denied_request_answers_access_denied(client, browser):
    flow = start(client)
    assert "deny" in browser.post("/device", data={"user_code": flow["user_code"]}).get_data(
        as_text=True
    )
    done = decide(browser, flow["user_code"], "deny")
    assert done.status_code == 200 and "denied" in done.get_data(as_text=True)
    assert error_of(poll(client, flow["device_code"])) == "access_denied"
    # and it cannot be approved afterwards
    assert decide(browser, flow["user_code"]).status_code == 400
    assert error_of(poll(client, flow["device_code"])) == "access_denied"


def test_expired_codes(app, client, browser):
    flow = start(client)
    with app.app_context():
        db.session.execute(
            update(DeviceAuthorization).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    assert decide(browser, flow["user_code"]).status_code == 400  # no longer approvable
    assert error_of(poll(client, flow["device_code"])) == "expired_token"


def test_an_approved_code_that_expired_before_the_exchange_is_expired(app, client, browser):
    flow = start(client)
    decide(browser, flow["user_code"])
    with app.app_context():
        db.session.execute(
            update(DeviceAuthorization).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    assert error_of(poll(client, flow["device_code"])) == "expired_token"


# --- /device: the approval page ----------------------------------------------------------


def test_device_page_needs_a_signed_in_user(client):
    response = client.get("/device?user_code=BCDF-GHJK")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


@pytest.mark.parametrize(
    "code",
    ["BCDF-GHJK", "", "AAAA-AAAA", "bcdf\x00ghjk", "BCDF\u202eGHJK", "x" * 5000, "1"],
)
def test_device_page_refuses_wrong_codes_without_a_500(client, browser, code):
    start(client)  # some other, real request is pending
    response = browser.post("/device", data={"user_code": code, "decision": "approve"})
    assert response.status_code == 400
    with browser.application.app_context():
        assert db.session.execute(select(DeviceAuthorization.status)).scalar_one() == "pending"


def test_a_bad_decision_is_refused(client, browser):
    flow = start(client)
    response = browser.post("/device", data={"user_code": flow["user_code"], "decision": "yes"})
    assert response.status_code == 400
    assert error_of(poll(client, flow["device_code"])) == "authorization_pending"


@pytest.mark.parametrize(
    "app_config", [{"KEYDESK_LOGIN_RATE_LIMIT": "3 per minute"}], indirect=True
)
def test_user_code_guessing_is_limited_per_account_and_per_address(app, client, browser):
    flow = start(client)
    for _ in range(3):
        assert browser.post("/device", data={"user_code": "BCDF-GHJK"}).status_code == 400
    # the right code is refused too now: the limit is on the guesser, not the code
    assert browser.post("/device", data={"user_code": flow["user_code"]}).status_code == 429
    # the same account from another address
    create_user(app, "bob@example.com", role="member")
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    assert login(elsewhere).status_code == 302
    assert elsewhere.post("/device", data={"user_code": flow["user_code"]}).status_code == 429
    # another account from the same address
    bob = app.test_client()
    assert login(bob, "bob@example.com").status_code == 302
    assert bob.post("/device", data={"user_code": flow["user_code"]}).status_code == 429
    # another account from another address may still approve
    carol = app.test_client()
    carol.environ_base["REMOTE_ADDR"] = "203.0.113.10"
    create_user(app, "carol@example.com")
    assert login(carol, "carol@example.com").status_code == 302
    assert carol.post("/device", data={"user_code": flow["user_code"]}).status_code == 200


# --- what a user access token may do -----------------------------------------------------


def test_token_creates_90_day_and_never_expiring_keys(client, browser):
    token = sign_in_terminal(client, browser)
    for days in (90, 0):
        response = client.post(
            "/api/v1/tenant/acme/api-keys/create",
            json={"name": f"ci {days}", "scopes": ["api:read"], "expires_in_days": days},
            headers=bearer(token),
        )
        assert response.status_code == 201, response.get_json()
        assert KEY_RE.match(response.get_json()["api_key"])
        expires = response.get_json()["expires_at"]
        assert (
            (expires is None)
            if days == 0
            else (expires - response.json["created_at"]) == (90 * 86400)
        )


def test_token_keys_follow_tenant_policy(app, client, browser):
    from app.models import Tenant

    with app.app_context():
        tenant = db.session.execute(select(Tenant)).scalar_one()
        tenant.max_key_lifetime_days = 30
        db.session.commit()
    token = sign_in_terminal(client, browser)
    response = client.post(
        "/api/v1/tenant/acme/api-keys/create",
        json={"name": "too long", "scopes": ["api:read"], "expires_in_days": 0},
        headers=bearer(token),
    )
    assert response.status_code == 400 and response.json["error"] == "policy_violation"


def test_member_token_carries_the_member_scopes_of_the_policy(app, client):
    from app.models import Tenant

    create_user(app, "admin@example.com")
    create_user(app, "bob@example.com", role="member")
    with app.app_context():
        tenant = db.session.execute(select(Tenant)).scalar_one()
        tenant.member_scopes = "api:read keys:read keys:write"
        db.session.commit()
    bob = app.test_client()
    assert login(bob, "bob@example.com").status_code == 302
    token = sign_in_terminal(client, bob)
    me = client.get("/api/v1/me", headers=bearer(token)).json
    assert me["key"]["scopes"] == ["api:read", "keys:read", "keys:write"]
    assert me["user"]["role"] == "member"
    denied = client.post(
        "/api/v1/resources", json={"name": "r", "type": "t"}, headers=bearer(token)
    )
    assert denied.status_code == 403 and denied.json["error"] == "insufficient_scope"


def test_token_is_no_key_in_key_lists(app, client, browser):
    token = sign_in_terminal(client, browser)
    token_id = token.split("_")[1]
    key = issue_key(app, scopes=("keys:read", "keys:write"))
    listing = client.get("/api/v1/tenant/acme/api-keys/list", headers=bearer(token)).json
    assert listing and token_id not in [k["id"] for k in listing]
    assert (
        client.get(f"/api/v1/tenant/acme/api-keys/{token_id}", headers=bearer(key)).status_code
        == 404
    )
    assert (
        client.post(
            f"/api/v1/tenant/acme/api-keys/{token_id}/revoke", headers=bearer(key)
        ).status_code
        == 404
    )
    assert token_id not in browser.get("/keys").get_data(as_text=True)
    assert token_id not in browser.get("/admin/keys").get_data(as_text=True)
    admin = client.get("/api/v1/tenant/acme/admin/api-keys", headers=bearer(token))
    assert admin.status_code == 200 and token_id not in admin.get_data(as_text=True)
    # ... but it is listed among the signed-in terminals
    assert token_id in browser.get("/account/tokens").get_data(as_text=True)


def test_revoked_token_is_refused_at_its_next_request(client, browser):
    token = sign_in_terminal(client, browser)
    token_id = token.split("_")[1]
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    page = browser.post(f"/account/tokens/{token_id}/revoke", follow_redirects=True)
    assert page.status_code == 200 and token_id not in page.get_data(as_text=True)
    response = client.get("/api/v1/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.json == {
        "error": "invalid_token",
        "error_description": "API key has been revoked",
    }
    # revoking again or someone else's: no 500
    assert browser.post(f"/account/tokens/{token_id}/revoke").status_code == 302
    assert browser.post("/account/tokens/AAAAAAAAAAAA/revoke").status_code == 404


def test_the_sessions_page_lists_and_ends_a_terminal(client, browser):
    """SPEC: /account/sessions lists user access tokens, and POST
    /account/sessions/<id>/revoke ends one at its next request."""
    token = sign_in_terminal(client, browser)
    token_id = token.split("_")[1]
    page = browser.get("/account/sessions").get_data(as_text=True)
    assert "Signed-in terminals" in page and token_id in page
    ended = browser.post(f"/account/sessions/{token_id}/revoke", follow_redirects=True)
    assert ended.status_code == 200 and "That terminal is signed out." in ended.get_data(
        as_text=True
    )
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    assert browser.post("/account/sessions/AAAAAAAAAAAA/revoke").status_code == 404


def test_another_users_token_cannot_be_revoked(app, client, browser):
    token = sign_in_terminal(client, browser)
    create_user(app, "mallory@example.com", tenant="evil")
    mallory = app.test_client()
    assert login(mallory, "mallory@example.com").status_code == 302
    assert mallory.post(f"/account/tokens/{token.split('_')[1]}/revoke").status_code == 404
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200


def test_end_user_tokens_and_deactivation_refuse_tokens(app, client, browser):
    from app.accounts import members
    from app.accounts import service as accounts
    from app.audit import Actor
    from app.keys.tokens import end_user_tokens, list_user_tokens

    first = sign_in_terminal(client, browser)
    with app.app_context():
        alice = accounts.get_user_by_email("alice@example.com")
        assert [t.id for t in list_user_tokens(alice, now=utcnow())] == [first.split("_")[1]]
        assert end_user_tokens(alice, now=utcnow(), reason="password_changed") == 1
        db.session.commit()
        assert list_user_tokens(alice, now=utcnow()) == []
    assert client.get("/api/v1/me", headers=bearer(first)).status_code == 401

    create_user(app, "bob@example.com", role="member")
    bob = app.test_client()
    assert login(bob, "bob@example.com").status_code == 302
    second = sign_in_terminal(client, bob)
    with app.app_context():
        tenant = accounts.get_tenant_by_slug("acme")
        members.deactivate(
            tenant=tenant,
            user=accounts.get_user_by_email("bob@example.com"),
            actor=Actor.cli(),
            now=utcnow(),
        )
        db.session.commit()
        reason = db.session.execute(
            select(ApiKey.revoke_reason).where(ApiKey.key_id == second.split("_")[1])
        ).scalar_one()
    assert reason == "deactivated"  # ended with the user's sessions (sessions.end_user_sessions)
    assert client.get("/api/v1/me", headers=bearer(second)).status_code == 401


def test_other_prefixes_and_kinds_are_refused(app, client, browser):
    token = sign_in_terminal(client, browser)
    _, key_id, rest = token.split("_")
    secret = rest[: keyformat.SECRET_LENGTH]
    # the token's id and secret under the key prefix (with a correct checksum): refused
    as_key = keyformat.assemble("kd", key_id, secret)
    assert client.get("/api/v1/me", headers=bearer(as_key)).status_code == 401
    for prefix in ("kds", "xx", "kduu"):
        other = keyformat.assemble(prefix, key_id, secret)
        response = client.get("/api/v1/me", headers=bearer(other))
        assert response.status_code == 401 and response.json["error"] == "invalid_token"
    # a key's id under the token prefix: refused too
    key = issue_key(app)
    _, kid, krest = key.split("_")
    as_token = keyformat.assemble("kdu", kid, krest[: keyformat.SECRET_LENGTH])
    assert client.get("/api/v1/me", headers=bearer(as_token)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(key)).json["key"]["kind"] == "user"
    # a mistyped token fails its checksum
    typo = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert zlib.crc32(typo.encode()) != zlib.crc32(token.encode())
    assert client.get("/api/v1/me", headers=bearer(typo)).status_code == 401


def test_report_leak_revokes_a_token(app, client, browser):
    token = sign_in_terminal(client, browser)
    assert re.search(keyformat.scanner_regex("kd"), f"TOKEN={token}\n")
    response = client.post("/api/v1/keys/report-leak", json={"key": token, "source_url": "x"})
    assert response.status_code == 202
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401


def test_verify_does_not_vouch_for_a_token(app, client, browser):
    token = sign_in_terminal(client, browser)
    verifier = issue_key(app, scopes=("keys:verify",))
    response = client.post("/api/v1/keys/verify", json={"key": token}, headers=bearer(verifier))
    assert response.json == {"valid": False, "reason": "invalid"}


def test_token_revocation_endpoint_signs_the_token_out(app, client, browser):
    token = sign_in_terminal(client, browser)
    other = sign_in_terminal(client, browser)
    url = "/api/v1/oauth/revoke"
    assert error_of(client.post(url, data={"token": token})) == "invalid_request"
    assert error_of(client.post(url, data={"client_id": "x", "token": token})) == "invalid_client"
    # wrong, mistyped or foreign tokens: the same answer, nothing revoked
    key = issue_key(app)
    for garbage in (
        "nope",
        token[:-1] + ("x" if token[-1] != "x" else "y"),
        key,
        token.replace("kdu_", "kd_"),
        "\u202e" * 50,
    ):
        response = client.post(url, data={"client_id": "keydesk-cli", "token": garbage})
        assert response.status_code == 200 and response.json == {"revoked": True}
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 200
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    response = client.post(url, data={"client_id": "keydesk-cli", "token": token})
    assert response.status_code == 200
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 200
    again = client.post(url, data={"client_id": "keydesk-cli", "token": token})
    assert again.status_code == 200


def test_demoting_an_admin_ends_their_terminal_sign_ins(app, client, browser):
    from app.accounts import members
    from app.accounts import service as accounts
    from app.audit import Actor

    token = sign_in_terminal(client, browser)
    create_user(app, "other-admin@example.com")
    with app.app_context():
        members.change_role(
            tenant=accounts.get_tenant_by_slug("acme"),
            user=accounts.get_user_by_email("alice@example.com"),
            role="member",
            actor=Actor.cli(),
            now=utcnow(),
        )
        db.session.commit()
    assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401


@pytest.mark.parametrize(
    "app_config", [{"KEYDESK_BASE_URL": "https://keys.example.com/"}], indirect=True
)
def test_verification_uri_uses_the_public_base_url(client):
    flow = start(client)
    assert flow["verification_uri"] == "https://keys.example.com/device"
    assert flow["verification_uri_complete"].startswith("https://keys.example.com/device?")


@pytest.mark.parametrize(
    "app_config", [{"KEYDESK_LOGIN_RATE_LIMIT": "2 per minute"}], indirect=True
)
def test_device_authorization_is_rate_limited_per_address(client):
    for _ in range(2):
        start(client)
    response = client.post("/api/v1/oauth/device_authorization", data={"client_id": "keydesk-cli"})
    assert response.status_code == 429 and response.json["error"] == "rate_limited"
    assert int(response.headers["Retry-After"]) >= 1
