"""Registration, sign-in and sign-out through the client, and the account services."""

import pytest
from sqlalchemy import select

from app.accounts import service as accounts
from app.clock import utcnow
from app.extensions import db
from app.models import AuditEvent, Tenant, User
from tests.conftest import PASSWORD, create_user, login, make_app

REGISTRATION = {
    "email": "dev@example.com",
    "password": PASSWORD,
    "confirm": PASSWORD,
    "organization": "Acme Corp",
}


def register(client, **overrides):
    return client.post("/register", data=REGISTRATION | overrides)


def test_register_creates_tenant_and_admin_signs_in_and_redirects_to_keys(app, client):
    response = register(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/keys"
    assert client.get("/keys").status_code == 200
    with app.app_context():
        user = accounts.get_user_by_email("dev@example.com")
        assert user.role == "admin"
        assert (user.tenant.slug, user.tenant.name) == ("acme-corp", "Acme Corp")
        assert user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash


def test_same_organization_name_twice_gets_a_unique_slug(app):
    for n, email in enumerate(("a@example.com", "b@example.com", "c@example.com")):
        client = app.test_client()
        assert register(client, email=email).status_code == 302, n
    with app.app_context():
        slugs = db.session.execute(select(Tenant.slug).order_by(Tenant.id)).scalars().all()
    assert slugs == ["acme-corp", "acme-corp-2", "acme-corp-3"]


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("  ACME  corp!! ", "acme-corp"),
        ("Café Zürich", "cafe-zurich"),
        ("!!!", "org"),
        ("x" * 300, "x" * 48),
    ],
)
def test_slug_is_derived_from_the_organization_name(ctx, name, slug):
    assert accounts.slugify(name) == slug
    assert accounts.SLUG_RE.match(accounts.slugify(name))


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"email": "not-an-email"}, "email", "valid email"),
        ({"password": "short", "confirm": "short"}, "password", "12"),
        ({"confirm": "something else entirely"}, "confirm", "do not match"),
        ({"organization": ""}, "organization", "required"),
        ({"password": "password1234", "confirm": "password1234"}, "password", "common"),
    ],
)
def test_register_bad_input_rerenders_with_message_beside_field(
    app, client, overrides, field, message
):
    from bs4 import BeautifulSoup

    response = register(client, **overrides)
    assert response.status_code == 400
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    error = soup.find(id=f"{field}-error")
    assert error is not None and message in error.get_text().lower() or message in error.get_text()
    with app.app_context():
        assert db.session.execute(select(User)).first() is None
        assert db.session.execute(select(Tenant)).first() is None


def test_register_with_an_existing_email_is_refused_without_a_new_tenant(app, client):
    create_user(app, "dev@example.com")
    response = register(client, organization="Other Org")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    # No account enumeration: the answer does not say that the address has an account.
    assert "We could not create an account with these details" in page
    assert "already exists" not in page
    with app.app_context():
        assert accounts.get_tenant_by_slug("other-org") is None


def test_login_unknown_email_and_wrong_password_answer_the_same(app, client, user):
    unknown = login(client, "nobody@example.com", PASSWORD)
    wrong = login(client, "alice@example.com", "the wrong password!!")
    assert unknown.status_code == wrong.status_code == 401
    assert "Incorrect email or password." in unknown.get_data(as_text=True)
    assert "Incorrect email or password." in wrong.get_data(as_text=True)
    # both are audited: the wrong password in alice's tenant, the unknown address outside
    # any tenant (no tenant admin sees it)
    with app.app_context():
        failed = db.session.execute(
            select(AuditEvent)
            .where(AuditEvent.action == "auth.login_failed")
            .order_by(AuditEvent.id)
        ).scalars()
        assert [(e.target, e.tenant_id is None) for e in failed] == [
            ("nobody@example.com", True),
            ("alice@example.com", False),
        ]
    assert client.get("/keys").status_code == 302


def test_login_is_case_insensitive_on_email(client, user):
    assert login(client, "  Alice@Example.COM ").status_code == 302


def test_login_empty_form_is_refused_not_500(client, user):
    response = client.post("/login", data={})
    assert response.status_code == 401
    assert "Incorrect email or password." in response.get_data(as_text=True)


def test_deactivated_user_cannot_sign_in(app, client, user):
    from app.clock import utcnow

    with app.app_context():
        accounts.get_user_by_email(user).deactivated_at = utcnow()
        db.session.commit()
    response = login(client)
    assert response.status_code == 401
    assert "Incorrect email or password." in response.get_data(as_text=True)


def test_password_is_rehashed_on_login_when_parameters_change(app, client, user):
    with app.app_context():
        before = accounts.get_user_by_email(user).password_hash
    assert "m=8,t=1,p=1" in before
    app.config["KEYDESK_ARGON2"] = {"time_cost": 2, "memory_cost": 16, "parallelism": 1}
    assert login(client).status_code == 302
    with app.app_context():
        after = accounts.get_user_by_email(user).password_hash
    assert after != before and "m=16,t=2,p=1" in after
    # and the new hash still signs in
    client.post("/logout")
    assert login(app.test_client()).status_code == 302


def test_no_rehash_when_parameters_are_unchanged(app, client, user):
    with app.app_context():
        before = accounts.get_user_by_email(user).password_hash
    assert login(client).status_code == 302
    with app.app_context():
        assert accounts.get_user_by_email(user).password_hash == before


@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "//evil.com/keys",
        "https://evil.com",
        "http://evil.com/keys",
        "/\\evil.com",
        "\\\\evil.com",
        "/\t/evil.com",
        "/\n/evil.com",
        " //evil.com",
        "javascript:alert(1)",
        "evil.com",
        "https:evil.com",
    ],
)
def test_next_must_be_same_site(client, user, target):
    response = client.post(
        "/login", query_string={"next": target}, data={"email": user, "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/keys"


def test_next_same_site_path_is_followed(client, user):
    response = client.post(
        "/login?next=/keys/new%3Fa%3D1", data={"email": user, "password": PASSWORD}
    )
    assert response.headers["Location"] == "/keys/new?a=1"
    # a hidden `next` field in the form works too
    client.post("/logout")
    response = client.post(
        "/login", data={"email": user, "password": PASSWORD, "next": "/keys/new"}
    )
    assert response.headers["Location"] == "/keys/new"


def test_login_page_carries_next_through_the_form(client):
    html = client.get("/login?next=/keys/new").get_data(as_text=True)
    assert 'name="next" value="/keys/new"' in html


def test_signed_out_visitor_is_sent_to_login_with_next(client):
    response = client.get("/keys/new")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_logout_is_post_only_and_ends_the_session(signed_in):
    assert signed_in.get("/logout").status_code == 405
    assert signed_in.get("/keys").status_code == 200
    response = signed_in.post("/logout")
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert signed_in.get("/keys").status_code == 302


def test_sign_in_starts_a_fresh_session(app, client, user):
    with client.session_transaction() as sess:
        sess["planted"] = "by an attacker"
        sess["_fresh"] = False
    client.get("/login")
    cookie_before = client.get_cookie("session").value
    assert login(client).status_code == 302
    cookie_after = client.get_cookie("session").value
    assert cookie_after != cookie_before
    with client.session_transaction() as sess:
        assert "planted" not in sess
        # Only the server session's token: who is signed in lives in user_sessions.
        assert set(sess) <= {"keydesk_session", "csrf_token", "_flashes"}
        assert len(sess["keydesk_session"]) >= 40


def test_session_cookie_flags(client, user):
    response = login(client)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_registration_closed_refuses_get_and_post(tmp_path):
    app = make_app(tmp_path, KEYDESK_ALLOW_REGISTRATION=False)
    client = app.test_client()
    page = client.get("/register")
    assert page.status_code == 403
    assert "Registration is closed" in page.get_data(as_text=True)
    assert register(client).status_code == 403
    with app.app_context():
        assert db.session.execute(select(User)).first() is None
        db.session.remove()
        db.engine.dispose()
    # the sign-in page no longer links to it
    assert "/register" not in client.get("/login").get_data(as_text=True)


def test_allow_registration_is_read_from_the_environment(tmp_path):
    from app.config import load_config

    for value, expected in (("false", False), ("0", False), ("no", False), ("true", True)):
        config = load_config(str(tmp_path), env={"KEYDESK_ALLOW_REGISTRATION": value})
        assert config["KEYDESK_ALLOW_REGISTRATION"] is expected


def test_ending_the_users_sessions_signs_out_old_sessions(app, signed_in, user):
    from app.accounts import sessions

    with app.app_context():
        ended = sessions.end_user_sessions(
            user=accounts.get_user_by_email(user), reason="test", now=utcnow()
        )
        db.session.commit()
    assert ended == 1
    assert signed_in.get("/keys").status_code == 302


def test_register_when_signed_in_goes_to_keys(signed_in):
    assert signed_in.get("/register").headers["Location"] == "/keys"
