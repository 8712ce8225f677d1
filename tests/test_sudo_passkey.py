"""/sudo by passkey (SPEC "Account security": the password and code, or a passkey): the
JSON ceremony answered by a software authenticator, on SQLite and PostgreSQL. A passkey
grants sudo mode and lets a sudo-mode page through; another user's passkey, a replayed
answer or garbage grant nothing."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD, create_user, login
from tests.session_helpers import actions, events, leave_sudo_mode
from tests.twofactor_helpers import HOST, SoftAuthenticator, register_passkey


@pytest.fixture
def mine(app, signed_in):
    authenticator = SoftAuthenticator()
    assert register_passkey(signed_in, authenticator).status_code == 200
    return authenticator


def _sudo_by_passkey(client, authenticator, next_path="/keys/new"):
    options = client.post("/sudo/passkey/options", json={}, **HOST)
    assert options.status_code == 200, options.get_data(as_text=True)
    assert options.get_json()["userVerification"] == "required"
    credential = authenticator.get(options.get_json())
    answer = client.post(
        "/sudo/passkey", json={"credential": credential, "next": next_path}, **HOST
    )
    return answer, credential


def _in_sudo(client) -> bool:
    return client.get("/keys/new").status_code == 200


def test_the_sudo_page_offers_a_passkey_only_to_who_has_one(app, signed_in, user):
    leave_sudo_mode(app, user)
    assert 'data-passkey="sudo"' not in signed_in.get("/sudo").get_data(as_text=True)
    register = signed_in.get("/keys/new")  # registration itself needs sudo: sign in afresh
    assert register.status_code == 302
    signed_in.post("/logout")
    login(signed_in)
    assert register_passkey(signed_in, SoftAuthenticator()).status_code == 200
    leave_sudo_mode(app, user)
    page = signed_in.get("/sudo?next=/keys/new").get_data(as_text=True)
    assert 'id="sudo-passkey"' in page and 'data-passkey="sudo"' in page
    assert 'data-finish-url="/sudo/passkey"' in page and 'name="csrf-token"' in page


def test_a_passkey_grants_sudo_mode(app, signed_in, user, mine):
    leave_sudo_mode(app, user)
    assert not _in_sudo(signed_in)
    answer, _ = _sudo_by_passkey(signed_in, mine)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["redirect"] == "/keys/new"
    assert _in_sudo(signed_in)
    granted = events(app, "auth.sudo_granted")
    assert len(granted) == 1 and '"method":"passkey"' in granted[0].details


def test_the_redirect_stays_on_this_site(app, signed_in, user, mine):
    leave_sudo_mode(app, user)
    answer, _ = _sudo_by_passkey(signed_in, mine, next_path="https://evil.example/x")
    assert answer.status_code == 200
    assert answer.get_json()["redirect"] == "/keys"


def test_a_replayed_answer_grants_nothing(app, signed_in, user, mine):
    leave_sudo_mode(app, user)
    answer, credential = _sudo_by_passkey(signed_in, mine)
    assert answer.status_code == 200
    leave_sudo_mode(app, user)
    # No challenge waiting, then a fresh challenge the old signature does not cover.
    again = signed_in.post("/sudo/passkey", json={"credential": credential}, **HOST)
    assert again.status_code == 400 and again.get_json()["field"] == "passkey"
    signed_in.post("/sudo/passkey/options", json={}, **HOST)
    stale = signed_in.post("/sudo/passkey", json={"credential": credential}, **HOST)
    assert stale.status_code == 400 and stale.get_json()["error"]
    assert not _in_sudo(signed_in)
    assert actions(app).count("auth.sudo_failed") == 2


def test_another_users_passkey_grants_nothing(app, signed_in, user, mine):
    create_user(app, "bob@example.com", tenant="other")
    bob = app.test_client()
    login(bob, "bob@example.com")
    bobs = SoftAuthenticator()
    assert register_passkey(bob, bobs).status_code == 200
    leave_sudo_mode(app, user)
    options = signed_in.post("/sudo/passkey/options", json={}, **HOST).get_json()
    answer = signed_in.post("/sudo/passkey", json={"credential": bobs.get(options)}, **HOST)
    assert answer.status_code == 400
    assert "not registered for this account" in answer.get_json()["error"]
    assert not _in_sudo(signed_in)
    assert "auth.sudo_granted" not in actions(app)


@pytest.mark.parametrize(
    "credential",
    [None, "x", 7, [], {"id": "\ud800"}, {"id": "a" * 60_000}, {"rawId": 2**64, "response": {}}],
)
def test_garbage_is_a_clear_400(app, signed_in, user, mine, credential):
    leave_sudo_mode(app, user)
    signed_in.post("/sudo/passkey/options", json={}, **HOST)
    answer = signed_in.post("/sudo/passkey", json={"credential": credential}, **HOST)
    assert answer.status_code == 400 and answer.get_json()["field"] == "passkey"
    assert not _in_sudo(signed_in)


def test_a_nul_is_refused(app, signed_in, user, mine):
    leave_sudo_mode(app, user)
    signed_in.post("/sudo/passkey/options", json={}, **HOST)
    answer = signed_in.post("/sudo/passkey", json={"credential": {"id": "a\x00b"}}, **HOST)
    assert answer.status_code == 400
    assert not _in_sudo(signed_in)


def test_without_a_passkey_or_a_sign_in(app, client, user):
    assert client.post("/sudo/passkey/options", json={}).status_code == 302
    assert client.post("/sudo/passkey", json={}).status_code == 302
    login(client)
    none = client.post("/sudo/passkey/options", json={}, **HOST)
    assert none.status_code == 400 and none.get_json()["field"] == "passkey"


@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}], indirect=True)
def test_the_ceremony_needs_the_pages_csrf_token(app, client, user):
    from bs4 import BeautifulSoup

    def token(path):
        page = BeautifulSoup(client.get(path).get_data(as_text=True), "html.parser")
        return page.find("meta", {"name": "csrf-token"})["content"]

    signed = client.post(
        "/login", data={"email": user, "password": PASSWORD, "csrf_token": token("/login")}
    )
    assert signed.status_code == 302
    refused = client.post("/sudo/passkey/options", json={}, **HOST)
    # Refused before the view: an error page, not the JSON answer about passkeys.
    assert refused.status_code == 400 and refused.get_json(silent=True) is None
    ok = client.post(
        "/sudo/passkey/options", json={}, headers={"X-CSRFToken": token("/account")}, **HOST
    )
    # Past the CSRF check: the answer is about the (missing) passkey.
    assert ok.status_code == 400 and ok.get_json()["field"] == "passkey"


def test_with_passkeys_only_the_password_alone_is_no_sudo(app, signed_in, user, mine):
    """A passkey is this account's second factor: the password form asks for no code, and
    a right password alone (one factor) grants nothing; the passkey does."""
    leave_sudo_mode(app, user)
    page = signed_in.get("/sudo?next=/keys/new").get_data(as_text=True)
    assert 'name="code"' not in page
    refused = signed_in.post("/sudo?next=/keys/new", data={"password": PASSWORD})
    assert refused.status_code == 401
    assert "passkey" in refused.get_data(as_text=True)
    assert not _in_sudo(signed_in)
    answer, _ = _sudo_by_passkey(signed_in, mine)
    assert answer.status_code == 200 and _in_sudo(signed_in)
