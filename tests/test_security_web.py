"""Browser-facing hardening: headers, cookies, sign-in throttling, password rules, and no
account enumeration at registration or sign-in."""

from __future__ import annotations

import re

import pytest
from bs4 import BeautifulSoup

from tests.conftest import PASSWORD, create_user, issue_key, login

PAGES = ["/login", "/register", "/keys", "/keys/new"]


def _csp(response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    return {part.split()[0]: part for part in (p.strip() for p in policy.split(";")) if part}


def test_security_headers_on_every_kind_of_response(app, signed_in):
    key = issue_key(app)
    responses = [signed_in.get(p) for p in PAGES]
    responses.append(signed_in.get(f"/keys/{key.split('_')[1]}"))
    responses.append(signed_in.get("/nothing-here"))
    responses.append(signed_in.get("/api/v1/me"))
    responses.append(signed_in.delete("/keys"))  # 405
    with signed_in.get("/static/style.css") as static:  # closes the file it streams
        responses.append(static)
    responses.append(signed_in.get("/admin/audit?format=csv"))  # a download
    responses.append(signed_in.options("/api/v1/me"))
    statuses = {response.status_code for response in responses}
    assert {200, 401, 404, 405} <= statuses
    for response in responses:
        csp = _csp(response)
        assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
        assert "'unsafe-eval'" not in response.headers["Content-Security-Policy"]
        assert csp["script-src"] == "script-src 'self'"
        assert csp["frame-ancestors"] == "frame-ancestors 'none'"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "Strict-Transport-Security" not in response.headers  # plain http


def test_pages_are_never_stored_and_api_answers_keep_their_own_caching(app, signed_in):
    """Every HTML page gets Cache-Control: no-store from the WSGI layer unless it set its
    own; a JSON answer is left as it is (the middleware reads Content-Type to tell)."""
    page = signed_in.get("/keys")
    assert page.content_type.startswith("text/html")
    assert page.headers.get_all("Cache-Control") == ["no-store"]
    ping = signed_in.get("/api/v1/ping")
    assert ping.content_type == "application/json" and "Cache-Control" not in ping.headers
    assert ping.headers.get_all("X-Frame-Options") == ["DENY"]  # added once, not twice


def test_pages_have_no_inline_script_or_event_handlers(app, signed_in):
    """CSP forbids them, so a page that used one would be broken in a browser."""
    key = issue_key(app)
    for path in [*PAGES, f"/keys/{key.split('_')[1]}"]:
        soup = BeautifulSoup(signed_in.get(path).get_data(as_text=True), "html.parser")
        for script in soup.find_all("script"):
            assert script.get("src"), f"inline <script> on {path}"
        for tag in soup.find_all(True):
            handlers = [a for a in tag.attrs if a.lower().startswith("on")]
            assert not handlers, f"inline event handler {handlers} on {path}"
            assert not str(tag.get("href", "")).lower().startswith("javascript:")


def test_hsts_only_over_https(client):
    assert "Strict-Transport-Security" not in client.get("/login").headers
    https = client.get("/login", base_url="https://keydesk.example")
    assert https.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    # Without a trusted proxy, X-Forwarded-Proto is the client's word: ignored.
    spoofed = client.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in spoofed.headers


@pytest.mark.parametrize("app_config", [{"KEYDESK_TRUSTED_PROXIES": 1}], indirect=True)
def test_hsts_and_secure_cookie_behind_a_trusted_tls_proxy(client, user):
    response = client.post(
        "/login",
        data={"email": user, "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"},
    )
    assert response.status_code == 302
    assert "Strict-Transport-Security" in response.headers
    assert "secure" in _cookie_flags(response, "session")


def _cookie_flags(response, name: str) -> set[str]:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(name + "="):
            return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]} | {
                part.strip().lower() for part in header.split(";")[1:]
            }
    raise AssertionError(f"no {name} cookie set")


def test_session_cookie_flags_over_http_and_https(client, user):
    plain = login(client)
    flags = _cookie_flags(plain, "session")
    assert "httponly" in flags and "samesite=lax" in flags
    assert "secure" not in flags  # so plain-http development still signs in

    https_client = client.application.test_client()
    response = https_client.post(
        "/login", data={"email": user, "password": PASSWORD}, base_url="https://keydesk.example"
    )
    flags = _cookie_flags(response, "session")
    assert {"httponly", "samesite=lax", "secure"} <= flags


@pytest.mark.parametrize("app_config", [{"SESSION_COOKIE_SECURE": True}], indirect=True)
def test_secure_cookies_setting_forces_secure(client, user):
    assert "secure" in _cookie_flags(login(client), "session")


THROTTLE = {"KEYDESK_LOGIN_RATE_LIMIT": "3 per minute"}


def _attempt(client, email: str, ip: str):
    return client.post(
        "/login",
        data={"email": email, "password": "wrong password!!"},
        environ_base={"REMOTE_ADDR": ip},
    )


@pytest.mark.parametrize("app_config", [THROTTLE], indirect=True)
def test_sign_in_throttled_per_account_across_addresses(client, user):
    statuses = [_attempt(client, user, f"198.51.100.{i}").status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    # The right password does not get through the throttle either.
    blocked = client.post(
        "/login",
        data={"email": user, "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "1.2.3.4"},
    )
    assert blocked.status_code == 429
    # Another account from a fresh address is unaffected.
    assert _attempt(client, "bob@example.com", "192.0.2.50").status_code == 401


@pytest.mark.parametrize("app_config", [THROTTLE], indirect=True)
def test_sign_in_throttled_per_address_across_accounts(client, user):
    statuses = [_attempt(client, f"u{i}@example.com", "192.0.2.9").status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]


def _visible_text(response) -> str:
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    for tag in soup.find_all(["input"]):
        tag.decompose()
    return " ".join(soup.get_text(" ").split())


@pytest.mark.parametrize("app_config", [THROTTLE], indirect=True)
def test_429_page_is_generic_and_reveals_nothing(client, user):
    for _ in range(3):
        _attempt(client, user, "192.0.2.1")
        _attempt(client, "ghost@example.com", "192.0.2.2")
    known = _attempt(client, user, "192.0.2.1")
    unknown = _attempt(client, "ghost@example.com", "192.0.2.2")
    assert known.status_code == unknown.status_code == 429
    assert "Retry-After" in known.headers
    assert _visible_text(known) == _visible_text(unknown)
    text = _visible_text(known)
    assert "Too many attempts" in text
    assert user not in text and "ghost" not in text
    assert not re.search(r"password|account|exist", text, re.IGNORECASE)


def test_sign_in_failure_is_the_same_for_unknown_email_and_wrong_password(client, user):
    wrong = login(client, password="not the right password")
    unknown = login(client, email="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert _visible_text(wrong).replace(user, "X") == _visible_text(unknown).replace(
        "nobody@example.com", "X"
    )


def _register(client, email="new@example.com", password="a fine long passphrase 7"):
    return client.post(
        "/register",
        data={"email": email, "password": password, "confirm": password, "organization": "Org"},
    )


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short pass", "12"),
        ("new@example.com", "email"),
        ("NEW@example.com", "email"),
        ("new@Example.COM", "email"),
        ("password1234", "common"),
        ("QwertyUiop12", "common"),
    ],
)
def test_register_password_rules(client, password, message):
    response = _register(client, password=password)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)


def test_register_existing_email_does_not_reveal_the_account(client, user):
    taken = _register(client, email=user.upper())
    assert taken.status_code == 400
    text = _visible_text(taken)
    assert "already exists" not in text and "taken" not in text
    assert "If you already have an account, sign in" in text
    soup = BeautifulSoup(taken.get_data(as_text=True), "html.parser")
    assert not soup.select(".field-error, .errors, [aria-invalid=true]"), "no field is blamed"
    # The account was not touched and no second one appeared.
    assert login(client.application.test_client()).status_code == 302


def test_register_then_same_email_again_after_sign_out(client):
    assert _register(client).status_code == 302
    client.post("/logout")
    assert _register(client).status_code == 400


def test_throttle_page_for_registration_is_generic(app_config, app):
    create_user(app)
    client = app.test_client()
    responses = [_register(client, email=f"r{i}@example.com") for i in range(12)]
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "registration is rate limited per address"
    assert "Too many attempts" in _visible_text(limited[0])


def test_secure_cookie_and_redis_prefix_settings_from_the_environment(tmp_path):
    from app.config import load_config

    base = {"KEYDESK_SECRET_KEY": "s", "KEYDESK_KEY_PEPPER": "p"}
    default = load_config(str(tmp_path), env=base)
    assert default["SESSION_COOKIE_SECURE"] is False  # Secure then follows the request scheme
    assert default["RATELIMIT_KEY_PREFIX"] == "keydesk"
    forced = load_config(
        str(tmp_path),
        env={**base, "KEYDESK_SECURE_COOKIES": "true", "KEYDESK_RATELIMIT_KEY_PREFIX": "kd-prod"},
    )
    assert forced["SESSION_COOKIE_SECURE"] is True and forced["REMEMBER_COOKIE_SECURE"] is True
    assert forced["RATELIMIT_KEY_PREFIX"] == "kd-prod"
