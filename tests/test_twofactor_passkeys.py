"""Passkeys through the portal's JSON ceremonies, answered by a software authenticator
(tests/twofactor_helpers.py), on SQLite and PostgreSQL: register, name, remove, use as a
second factor and as a passwordless sign-in; replays, foreign credentials and garbage are
refused with a clear message, never a 500."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEvent, Passkey
from tests.conftest import create_user, login
from tests.twofactor_helpers import HOST, SoftAuthenticator, password_step, register_passkey


@pytest.fixture
def with_passkey(app, signed_in):
    authenticator = SoftAuthenticator()
    response = register_passkey(signed_in, authenticator, "Work laptop")
    assert response.status_code == 200, response.get_data(as_text=True)
    return authenticator


def _passwordless(client, authenticator, **answer):
    options = client.post("/login/passkey/options", json={}, **HOST)
    assert options.status_code == 200
    credential = authenticator.get(options.get_json(), **answer)
    return client.post("/login/passkey", json={"credential": credential}, **HOST), credential


def test_register_lists_and_audits_a_passkey(app, signed_in, with_passkey):
    page = signed_in.get("/account").get_data(as_text=True)
    assert 'id="add-passkey"' in page and "Work laptop" in page
    with app.app_context():
        row = db.session.execute(select(Passkey)).scalar_one()
        assert row.name == "Work laptop" and row.public_key
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "2fa.passkey_added")
        ).scalar_one()
        assert "Work laptop" in event.details


def test_several_passkeys_share_one_user_handle(app, signed_in, with_passkey):
    second = SoftAuthenticator()
    assert register_passkey(signed_in, second, "YubiKey").status_code == 200
    assert second.user_handle == with_passkey.user_handle
    with app.app_context():
        assert db.session.execute(select(Passkey.name)).scalars().all() == [
            "Work laptop",
            "YubiKey",
        ]


def test_passkey_as_second_factor(app, client, user):
    login(client)
    authenticator = SoftAuthenticator()
    assert register_passkey(client, authenticator).status_code == 200
    client.post("/logout")

    password_step(client)
    page = client.get("/login/2fa").get_data(as_text=True)
    assert 'id="use-passkey"' in page
    assert client.get("/keys").status_code == 302
    options = client.post("/login/2fa/passkey/options", json={}, **HOST).get_json()
    assert [c["id"] for c in options["allowCredentials"]]
    credential = authenticator.get(options)
    response = client.post("/login/2fa/passkey", json={"credential": credential}, **HOST)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["redirect"].endswith("/keys")
    assert client.get("/keys").status_code == 200

    # The same assertion posted again (a replay) is refused with a message.
    client.post("/logout")
    password_step(client)
    client.post("/login/2fa/passkey/options", json={}, **HOST)
    replay = client.post("/login/2fa/passkey", json={"credential": credential}, **HOST)
    assert replay.status_code == 400 and replay.get_json()["error"]
    assert client.get("/keys").status_code == 302


def test_passwordless_sign_in_and_replay(app, client, user):
    login(client)
    authenticator = SoftAuthenticator()
    register_passkey(client, authenticator)
    client.post("/logout")

    response, credential = _passwordless(client, authenticator)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert client.get("/keys").status_code == 200
    with app.app_context():
        event = (
            db.session.execute(select(AuditEvent).where(AuditEvent.action == "auth.login"))
            .scalars()
            .all()[-1]
        )
        assert '"method":"passkey"' in event.details
    client.post("/logout")

    # Posting the very same answer twice: no challenge is waiting the second time.
    again = client.post("/login/passkey", json={"credential": credential}, **HOST)
    assert again.status_code == 400 and "expired or was already used" in again.get_json()["error"]
    # Even with a fresh challenge, the old answer (its signature covers the old one) fails.
    client.post("/login/passkey/options", json={}, **HOST)
    stale = client.post("/login/passkey", json={"credential": credential}, **HOST)
    assert stale.status_code == 400
    assert client.get("/keys").status_code == 302


def test_another_users_passkey_is_no_second_factor_for_me(app, client, user):
    create_user(app, "bob@example.com", tenant="other")
    bob = app.test_client()
    login(bob, "bob@example.com")
    bobs = SoftAuthenticator()
    register_passkey(bob, bobs)
    login(client)
    mine = SoftAuthenticator()
    register_passkey(client, mine)
    client.post("/logout")

    password_step(client)
    options = client.post("/login/2fa/passkey/options", json={}, **HOST).get_json()
    response = client.post("/login/2fa/passkey", json={"credential": bobs.get(options)}, **HOST)
    assert response.status_code == 400
    assert "not registered for this account" in response.get_json()["error"]
    assert client.get("/keys").status_code == 302


def test_wrong_origin_or_relying_party_is_refused(app, client, user):
    login(client)
    authenticator = SoftAuthenticator()
    register_passkey(client, authenticator)
    client.post("/logout")
    response, _ = _passwordless(client, authenticator, origin="http://evil.example")
    assert response.status_code == 400
    response, _ = _passwordless(client, authenticator, rp_id="evil.example")
    assert response.status_code == 400
    assert client.get("/keys").status_code == 302


def test_a_deactivated_users_passkey_signs_nobody_in(app, client, user):
    from app.clock import utcnow
    from app.models import User

    login(client)
    authenticator = SoftAuthenticator()
    register_passkey(client, authenticator)
    client.post("/logout")
    with app.app_context():
        db.session.execute(select(User)).scalar_one().deactivated_at = utcnow()
        db.session.commit()
    response, _ = _passwordless(client, authenticator)
    assert response.status_code == 400


GARBAGE = [
    None,
    "not json",
    [],
    {},
    {"id": 1},
    {"id": "AA", "rawId": "AA", "type": "public-key", "response": {}},
    {"id": "\ud800", "rawId": "\ud800", "type": "public-key", "response": {"clientDataJSON": "x"}},
    {
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {"clientDataJSON": "!!!", "authenticatorData": "@@", "signature": "%%"},
    },
    {"id": "A" * 5000, "rawId": "A" * 5000, "type": "nope", "response": {"a": [1] * 100}},
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_answers_are_a_clear_400(app, client, user, garbage):
    login(client)
    SoftAuthenticator()
    client.post("/account/passkeys/options", json={}, **HOST)
    response = client.post("/account/passkeys", json={"credential": garbage, "name": "x"}, **HOST)
    assert response.status_code == 400 and response.get_json()["field"] == "passkey"
    client.post("/logout")
    client.post("/login/passkey/options", json={}, **HOST)
    response = client.post("/login/passkey", json={"credential": garbage}, **HOST)
    assert response.status_code == 400 and response.get_json()["error"]


def test_non_json_bodies_are_a_clear_400(app, client, user):
    client.post("/login/passkey/options", json={}, **HOST)
    response = client.post("/login/passkey", data="{{{", content_type="application/json", **HOST)
    assert response.status_code == 400 and response.get_json()["error"]
    response = client.post("/login/passkey", data=b"\xff\xfe", **HOST)
    assert response.status_code == 400


def test_a_registration_answer_for_another_origin_is_refused(app, signed_in):
    options = signed_in.post("/account/passkeys/options", json={}, **HOST).get_json()
    credential = SoftAuthenticator().create(options, origin="http://localhost.evil.example")
    response = signed_in.post(
        "/account/passkeys", json={"credential": credential, "name": "x"}, **HOST
    )
    assert response.status_code == 400
    with app.app_context():
        assert db.session.execute(select(Passkey)).first() is None


@pytest.mark.parametrize(
    "name", ["", " ", "x" * 101, "bad\u202ename", "zero\u200bwidth", "ctl\x07", "c1\x85", "\ud800"]
)
def test_bad_passkey_names_are_refused_naming_the_field(app, signed_in, name):
    options = signed_in.post("/account/passkeys/options", json={}, **HOST).get_json()
    credential = SoftAuthenticator().create(options)
    response = signed_in.post(
        "/account/passkeys", json={"credential": credential, "name": name}, **HOST
    )
    assert response.status_code == 400 and response.get_json()["field"] == "name"


def test_rename_and_remove(app, signed_in, with_passkey):
    with app.app_context():
        pk = db.session.execute(select(Passkey)).scalar_one().id
    ok = signed_in.post(f"/account/passkeys/{pk}/rename", data={"name": "Home desktop"})
    assert ok.status_code == 302
    assert "Home desktop" in signed_in.get("/account").get_data(as_text=True)
    bad = signed_in.post(f"/account/passkeys/{pk}/rename", data={"name": "evil\u202e"})
    assert bad.status_code == 400 and 'role="alert"' in bad.get_data(as_text=True)
    removed = signed_in.post(f"/account/passkeys/{pk}/remove")
    assert removed.status_code == 302
    with app.app_context():
        assert db.session.execute(select(Passkey)).first() is None
        actions = db.session.execute(select(AuditEvent.action)).scalars().all()
        assert {"2fa.passkey_renamed", "2fa.passkey_removed"} <= set(actions)


@pytest.mark.parametrize("passkey_id", ["2147483648", "9223372036854775808", "99999"])
def test_unknown_or_huge_passkey_ids_are_404(app, signed_in, with_passkey, passkey_id):
    assert signed_in.post(f"/account/passkeys/{passkey_id}/remove").status_code == 404
    assert (
        signed_in.post(f"/account/passkeys/{passkey_id}/rename", data={"name": "x"}).status_code
        == 404
    )


def test_another_users_passkey_cannot_be_renamed_or_removed(app, signed_in, with_passkey):
    with app.app_context():
        pk = db.session.execute(select(Passkey)).scalar_one().id
    create_user(app, "mallory@example.com", tenant="evil")
    mallory = app.test_client()
    login(mallory, "mallory@example.com")
    assert mallory.post(f"/account/passkeys/{pk}/remove").status_code == 404
    assert mallory.post(f"/account/passkeys/{pk}/rename", data={"name": "x"}).status_code == 404
    with app.app_context():
        assert db.session.execute(select(Passkey)).scalar_one().name == "Work laptop"


def test_the_relying_party_follows_keydesk_base_url(app, signed_in):
    app.config["KEYDESK_BASE_URL"] = "https://keys.example.com"
    options = signed_in.post("/account/passkeys/options", json={}, **HOST).get_json()
    assert options["rp"]["id"] == "keys.example.com"
    credential = SoftAuthenticator(origin="https://keys.example.com").create(options)
    response = signed_in.post(
        "/account/passkeys", json={"credential": credential, "name": "x"}, **HOST
    )
    assert response.status_code == 200


def test_registration_needs_a_sign_in(app, client):
    assert client.post("/account/passkeys/options", json={}).status_code == 302
    assert client.post("/account/passkeys", json={}).status_code == 302


@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}], indirect=True)
def test_the_json_ceremonies_need_the_pages_csrf_token(app, client, user):
    from bs4 import BeautifulSoup

    page = BeautifulSoup(client.get("/login").get_data(as_text=True), "html.parser")
    token = page.find("meta", {"name": "csrf-token"})["content"]
    assert client.post("/login/passkey/options", json={}, **HOST).status_code == 400
    ok = client.post("/login/passkey/options", json={}, headers={"X-CSRFToken": token}, **HOST)
    assert ok.status_code == 200 and ok.get_json()["challenge"]
    assert client.post("/login/2fa", data={"code": "123456"}).status_code == 400
