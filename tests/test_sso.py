"""Single sign-on (SPEC "Single sign-on (OIDC) and deprovisioning"): a tenant admin sets up
the provider on /admin/sso, people sign in through it, and every bad answer from a
provider is refused with a page that says why, nobody signed in.

The good paths run against a real OpenID provider (oidc-provider, tests/oidc/provider.mjs);
the bad answers come from CraftedProvider, which signs whatever ID token a test makes."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from bs4 import BeautifulSoup
from joserfc.jwk import RSAKey
from sqlalchemy import select

from app.accounts import service as accounts
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.models import AuditEvent, SsoConfig, SsoLogin, User
from app.sso import oidc
from app.sso import service as sso
from tests.conftest import PASSWORD, create_user, login
from tests.oidc_helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    CraftedProvider,
    RealProvider,
    query,
    sign_in_at_provider,
)

CALLBACK_BASE = "http://localhost/"


@pytest.fixture
def app_config(request):
    # The test providers listen on loopback over http://: the operator's opt-in, unless a
    # test parametrizes it off (PRIVATE_OFF below).
    config = {"KEYDESK_SSO_ALLOW_PRIVATE_ISSUERS": True, "KEYDESK_LOGIN_RATE_LIMIT": "1000/minute"}
    config.update(getattr(request, "param", {}))
    return config


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """No test here may open a connection off this machine, even if the SSRF guard broke:
    every outgoing connection the provider client makes goes through urllib3's
    create_connection, and anything but loopback fails the test instead of connecting."""
    import ipaddress

    from urllib3.util import connection

    real = connection.create_connection

    def loopback_only(address, *args, **kwargs):
        host = str(address[0])
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise AssertionError(f"a test tried to connect to {host}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(connection, "create_connection", loopback_only)


@pytest.fixture(autouse=True)
def _fresh_jwks_cache():
    # Ports are reused between tests: never let one test's provider keys reach another.
    oidc.jwks_cache.clear()
    yield
    oidc.jwks_cache.clear()


@pytest.fixture(scope="module")
def real_provider():
    provider = RealProvider([f"{CALLBACK_BASE}sso/{slug}/callback" for slug in ("acme", "globex")])
    yield provider
    provider.stop()


@pytest.fixture
def crafted():
    provider = CraftedProvider()
    yield provider
    provider.stop()


def configure(app, issuer, *, tenant="acme", domains="acme.example", role="member", enforce=False):
    with app.app_context():
        row = accounts.get_tenant_by_slug(tenant)
        sso.save_config(
            tenant=row, issuer=issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            email_domains=domains, default_role=role, enforce=enforce, allow_private=True,
            actor=Actor.cli(), now=utcnow(),
        )  # fmt: skip
        db.session.commit()


def events(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        rows = db.session.execute(select(AuditEvent).where(AuditEvent.action == action))
        return list(rows.scalars())


def user_emails(app) -> set[str]:
    with app.app_context():
        return set(db.session.execute(select(User.email)).scalars())


def signed_in_as(client) -> str | None:
    page = client.get("/keys")
    if page.status_code != 200:
        return None
    who = BeautifulSoup(page.get_data(as_text=True), "html.parser").find(class_="whoami")
    return who.get_text(strip=True) if who else None


def sso_via_real(client, login_name: str, slug: str = "acme"):
    start = client.get(f"/sso/{slug}/login")
    assert start.status_code == 302, start.get_data(as_text=True)
    back = sign_in_at_provider(start.headers["Location"], login_name, stop_at=CALLBACK_BASE)
    return client.get(back), back


def continue_target(response) -> str:
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    refresh = soup.find("meta", attrs={"http-equiv": "refresh"})["content"]
    link = soup.find(id="sso-continue")["href"]
    assert refresh == f"0;url={link}"
    return link


def refusal_text(response) -> str:
    tag = BeautifulSoup(response.get_data(as_text=True), "html.parser").find(id="sso-error")
    assert tag is not None, response.get_data(as_text=True)[:800]
    return tag.get_text(" ", strip=True)


# --- the real provider -------------------------------------------------------------------


def test_admin_sets_up_sso_on_the_page_and_the_secret_is_write_only(app, client, real_provider):
    create_user(app)
    login(client)
    page = client.post(
        "/admin/sso",
        data={
            "issuer": real_provider.issuer, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET, "email_domains": "acme.example  Example.ORG",
            "default_role": "member", "enforce": "",
        },
    )  # fmt: skip
    assert page.status_code == 302, page.get_data(as_text=True)
    shown = client.get("/admin/sso")
    html = shown.get_data(as_text=True)
    assert real_provider.issuer in html and "acme.example example.org" in html
    assert CLIENT_SECRET not in html
    assert "http://localhost/sso/acme/callback" in html  # the redirect URI to register
    with app.app_context():
        config = db.session.get(SsoConfig, accounts.get_tenant_by_slug("acme").id)
        assert CLIENT_SECRET.encode() not in config.client_secret_sealed  # sealed, not clear
        assert sso.client_secret(config) == CLIENT_SECRET
        assert json.loads(config.provider)["jwks_uri"] == real_provider.issuer + "/jwks"
    [event] = events(app, "sso.config_changed")
    assert CLIENT_SECRET not in event.details
    assert json.loads(event.details)["client_secret_changed"] is True

    # Saving again without a secret keeps the stored one.
    again = client.post(
        "/admin/sso",
        data={"issuer": real_provider.issuer, "client_id": CLIENT_ID, "client_secret": "",
              "email_domains": "acme.example", "default_role": "admin"},
    )  # fmt: skip
    assert again.status_code == 302
    with app.app_context():
        config = db.session.get(SsoConfig, accounts.get_tenant_by_slug("acme").id)
        assert sso.client_secret(config) == CLIENT_SECRET and config.default_role == "admin"
    assert json.loads(events(app, "sso.config_changed")[-1].details)["before"]["default_role"] == (
        "member"
    )


def test_a_new_person_from_an_allowed_domain_joins_by_sso(app, client, real_provider):
    create_user(app)
    configure(app, real_provider.issuer, domains="acme.example")
    response, _ = sso_via_real(client, "newbie@acme.example")
    assert response.status_code == 302, refusal_text(response)
    assert response.headers["Location"] == "/keys"
    assert signed_in_as(client) == "newbie@acme.example"
    with app.app_context():
        user = accounts.get_user_by_email("newbie@acme.example")
        assert user.role == "member" and user.tenant.slug == "acme"
        assert user.password_hash is None and user.last_login_at is not None
    [event] = events(app, "sso.signed_in")
    details = json.loads(event.details)
    assert details["created"] is True and details["issuer"] == real_provider.issuer
    assert "eyJ" not in event.details  # never an ID token

    # Next time the same person signs in again: no second account.
    client.post("/logout")
    response, _ = sso_via_real(client, "newbie@acme.example")
    assert response.status_code == 302 and signed_in_as(client) == "newbie@acme.example"
    assert sorted(user_emails(app)) == ["alice@example.com", "newbie@acme.example"]


def test_an_existing_member_signs_in_by_sso_whatever_the_domain(app, client, real_provider):
    create_user(app)
    create_user(app, "bob@example.com", role="member")
    configure(app, real_provider.issuer, domains="acme.example")
    response, _ = sso_via_real(client, "Bob@Example.com")
    assert response.status_code == 302
    assert signed_in_as(client) == "bob@example.com"


def test_default_role_admin_makes_new_people_admins(app, client, real_provider):
    create_user(app)
    configure(app, real_provider.issuer, domains="acme.example", role="admin")
    sso_via_real(client, "boss@acme.example")
    assert client.get("/admin/keys").status_code == 200


def test_refused_by_the_real_provider_path(app, client, real_provider):
    """A domain that is not allowed, an unverified address, another tenant's user."""
    create_user(app)
    create_user(app, "carol@globex.example", tenant="globex")
    configure(app, real_provider.issuer, domains="acme.example")
    before = user_emails(app)

    response, _ = sso_via_real(client, "mallory@elsewhere.example")
    assert response.status_code == 403
    assert "elsewhere.example is not among the domains" in refusal_text(response)

    response, _ = sso_via_real(client, "unverified@acme.example")
    assert response.status_code == 403
    assert "has not verified unverified@acme.example" in refusal_text(response)

    response, _ = sso_via_real(client, "carol@globex.example")
    assert response.status_code == 403
    assert "belongs to another organization" in refusal_text(response)

    assert signed_in_as(client) is None and user_emails(app) == before
    reasons = [json.loads(e.details)["reason"] for e in events(app, "sso.refused")]
    assert reasons == ["domain_not_allowed", "email_unverified", "other_tenant"]


def test_a_replayed_callback_is_refused(app, client, real_provider):
    create_user(app)
    configure(app, real_provider.issuer)
    response, back = sso_via_real(client, "newbie@acme.example")
    assert response.status_code == 302
    with client.session_transaction() as session:
        signed_in_session = dict(session)
    client.post("/logout")

    # The same answer again, in the same browser: its state was spent.
    replay = client.get(back)
    assert replay.status_code == 400 and "state" in refusal_text(replay)
    assert signed_in_as(client) is None

    # Even with the old cookie's state put back (a copied cookie), the attempt is used.
    state = query(back)["state"]
    with client.session_transaction() as session:
        session.clear()
        session["sso_state"] = state
    replay = client.get(back)
    assert replay.status_code == 400
    assert "already used" in refusal_text(replay)
    assert signed_in_as(client) is None
    assert "keydesk_session" in signed_in_session  # the first answer did sign in


def test_deactivated_users_cannot_sign_in_by_sso(app, client, real_provider):
    from app.accounts import members

    create_user(app)
    create_user(app, "bob@acme.example", role="member")
    configure(app, real_provider.issuer)
    with app.app_context():
        bob = accounts.get_user_by_email("bob@acme.example")
        members.deactivate(tenant=bob.tenant, user=bob, actor=Actor.cli(), now=utcnow())
        db.session.commit()
    response, _ = sso_via_real(client, "bob@acme.example")
    assert response.status_code == 403 and "deactivated" in refusal_text(response)
    assert signed_in_as(client) is None


def test_login_page_sso_button_picks_the_tenant_by_domain(app, client, real_provider):
    create_user(app)
    configure(app, real_provider.issuer, domains="acme.example")
    page = client.get("/login").get_data(as_text=True)
    button = BeautifulSoup(page, "html.parser").find(id="sso-login")
    assert button is not None and button.get("name") == "sso"

    start = client.post("/login", data={"email": "newbie@ACME.example", "sso": "1"})
    # A page that moves on by itself (a redirect chain from a form to another origin would
    # break the CSP's form-action 'self').
    assert start.status_code == 200
    target = continue_target(start)
    assert target.startswith("/sso/acme/login?")
    assert query(target)["login_hint"] == "newbie@ACME.example"
    provider = client.get(target)
    assert provider.headers["Location"].startswith(real_provider.issuer + "/auth?")
    assert query(provider.headers["Location"])["login_hint"] == "newbie@ACME.example"

    unknown = client.post("/login", data={"email": "x@nowhere.example", "sso": "1"})
    assert unknown.status_code == 400
    assert "not set up for this email address" in unknown.get_data(as_text=True)
    for junk in ("", "no-at-sign", "a@" + "b" * 300, "x@\u202eacme.example"):
        assert client.post("/login", data={"email": junk, "sso": "1"}).status_code == 400


def test_sso_login_start_with_odd_input(app, client, crafted):
    create_user(app)
    configure(app, crafted.issuer)
    for query_string in (
        {"next": "/" + "a" * 5000},
        {"next": "https://evil.example/"},
        {"login_hint": "x" * 5000},
        {"login_hint": "bad\u202ehint"},
        {"next": "/\t/evil.example"},
    ):
        response = client.get("/sso/acme/login", query_string=query_string)
        assert response.status_code == 302, query_string
        sent = query(response.headers["Location"])
        assert "login_hint" not in sent or len(sent["login_hint"]) <= 254
        assert "\u202e" not in sent.get("login_hint", "")
    with app.app_context():
        stored = [row.next_url for row in db.session.execute(select(SsoLogin)).scalars()]
    assert all(n is None or n == "/keys" for n in stored), stored


@pytest.mark.parametrize(
    "app_config", [{"KEYDESK_BASE_URL": "https://keys.example.com"}], indirect=True
)
def test_the_redirect_uri_uses_the_public_base_url(app, client, crafted):
    create_user(app)
    configure(app, crafted.issuer)
    sent = query(client.get("/sso/acme/login").headers["Location"])
    assert sent["redirect_uri"] == "https://keys.example.com/sso/acme/callback"
    login(client)
    assert "https://keys.example.com/sso/acme/callback" in client.get("/admin/sso").get_data(
        as_text=True
    )


def test_login_button_keeps_next(app, client, real_provider):
    create_user(app)
    configure(app, real_provider.issuer)
    start = client.post("/login?next=/admin/audit", data={"email": "n@acme.example", "sso": "1"})
    assert query(continue_target(start))["next"] == "/admin/audit"
    evil = client.post("/login?next=//evil.example", data={"email": "n@acme.example", "sso": "1"})
    assert query(continue_target(evil))["next"] == "/keys"


def test_enforce_makes_sso_the_only_way_in_for_members_not_admins(app, client, real_provider):
    create_user(app)  # alice, admin
    create_user(app, "bob@acme.example", role="member")
    configure(app, real_provider.issuer, enforce=True)

    refused = login(client, "bob@acme.example")
    assert refused.status_code == 403
    assert "signs in through single sign-on" in refused.get_data(as_text=True)
    assert signed_in_as(client) is None
    [event] = events(app, "sso.password_refused")
    assert event.target == "bob@acme.example"
    assert not [e for e in events(app, "auth.login") if e.target == "bob@acme.example"]

    # A wrong password says nothing about SSO (no hint to someone without the password).
    wrong = login(client, "bob@acme.example", "not the password at all")
    assert wrong.status_code == 401
    assert "signs in through single sign-on" not in wrong.get_data(as_text=True)

    # The admin keeps the password as a way back in when the provider is broken.
    assert login(client).status_code == 302 and signed_in_as(client) == "alice@example.com"

    client.post("/logout")
    response, _ = sso_via_real(client, "bob@acme.example")
    assert response.status_code == 302 and signed_in_as(client) == "bob@acme.example"


def test_sso_sign_in_is_a_full_sign_in_for_sudo_pages(app, client, real_provider):
    """An SSO sign-in starts sudo mode (complete_sign_in): an admin who joined by SSO can
    open a sudo page such as /admin/sso at once."""
    create_user(app)
    configure(app, real_provider.issuer, role="admin")
    sso_via_real(client, "root@acme.example")
    assert client.get("/admin/sso").status_code == 200


# --- bad answers (crafted provider) -----------------------------------------------------


def _start(client, slug="acme") -> dict:
    response = client.get(f"/sso/{slug}/login")
    assert response.status_code == 302
    return query(response.headers["Location"])


def _finish(client, crafted, params, token, **extra):
    crafted.id_token = token
    return client.get(
        "/sso/acme/callback", query_string={"code": "code-1", "state": params["state"], **extra}
    )


def test_the_request_carries_pkce_state_nonce_and_client_auth(app, client, crafted):
    create_user(app)
    configure(app, crafted.issuer)
    params = _start(client)
    assert params["response_type"] == "code" and params["client_id"] == CLIENT_ID
    assert params["code_challenge_method"] == "S256"
    assert params["redirect_uri"] == "http://localhost/sso/acme/callback"
    assert "openid" in params["scope"].split() and "email" in params["scope"].split()
    assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32
    response = _finish(client, crafted, params, crafted.sign(crafted.claims(params["nonce"])))
    assert response.status_code == 302 and signed_in_as(client) == "newbie@acme.example"
    [sent] = crafted.token_requests
    verifier = sent["code_verifier"]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert challenge.decode() == params["code_challenge"]
    assert sent["grant_type"] == "authorization_code" and sent["code"] == "code-1"
    expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert sent["authorization"] == f"Basic {expected}"
    with app.app_context():  # the verifier is stored sealed, never in clear
        row = db.session.execute(select(SsoLogin)).scalar_one()
        assert verifier.encode() not in row.code_verifier_sealed and row.used_at is not None


OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})

BAD_ANSWERS = {
    # case: (how the token is made from (crafted, nonce), status, words on the page, reason)
    "wrong nonce": (
        lambda p, n: p.sign(p.claims("another-sign-in")), 400, "nonce", "nonce"),
    "no nonce": (lambda p, n: p.sign(p.claims(None)), 400, "nonce", "nonce"),
    "wrong aud": (lambda p, n: p.sign(p.claims(n, aud="someone-else")), 400, "aud", "aud"),
    "aud list without us": (
        lambda p, n: p.sign(p.claims(n, aud=["a", "b"])), 400, "another application", "aud"),
    "foreign azp": (
        lambda p, n: p.sign(p.claims(n, aud=[CLIENT_ID, "x"], azp="x")), 400, "azp", "azp"),
    "expired": (
        lambda p, n: p.sign(p.claims(n, iat=1_000_000, exp=1_000_300)), 400, "expired", "exp"),
    "wrong iss": (
        lambda p, n: p.sign(p.claims(n, iss="https://evil.example")), 400, "another provider",
        "iss"),
    "alg none": (lambda p, n: p.unsigned(p.claims(n)), 400, "could not be verified", "signature"),
    "re-signed with another key": (
        lambda p, n: p.sign(p.claims(n), key=OTHER_KEY), 400, "signature does not verify",
        "signature"),
    "unknown kid": (
        lambda p, n: p.sign(p.claims(n), key=OTHER_KEY, kid="nope"), 400, "does not publish",
        "signature"),
    "HS256 with the client secret": (
        lambda p, n: _hs256(p.claims(n)), 400, "could not be verified", "signature"),
    "tampered payload": (
        lambda p, n: _tamper(p.sign(p.claims(n, email="lo@acme.example")), email="hi@acme.example"),
        400, "signature does not verify", "signature"),
    "not a JWT": (lambda p, n: "not.a.jwt", 400, "ID token", "signature"),
    "no id_token": (lambda p, n: None, 400, "no ID token", "no_id_token"),
    "email_verified false": (
        lambda p, n: p.sign(p.claims(n, email_verified=False)), 403, "has not verified",
        "email_unverified"),
    "email_verified the string true": (
        lambda p, n: p.sign(p.claims(n, email_verified="true")), 403, "has not verified",
        "email_unverified"),
    "no email": (lambda p, n: p.sign(p.claims(n, email=None)), 400, "no email", "no_email"),
    "domain not allowed": (
        lambda p, n: p.sign(p.claims(n, email="x@evil.example")), 403, "evil.example is not among",
        "domain_not_allowed"),
}  # fmt: skip


def _hs256(claims: dict) -> str:
    from joserfc import jwt
    from joserfc.jwk import OctKey

    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(CLIENT_SECRET))


def _tamper(token: str, **changes) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_bad_answers_are_refused_and_nobody_signs_in(app, client, crafted, case):
    make, status, words, reason = BAD_ANSWERS[case]
    create_user(app)
    configure(app, crafted.issuer)
    before = user_emails(app)
    params = _start(client)
    response = _finish(client, crafted, params, make(crafted, params["nonce"]))
    assert response.status_code == status, refusal_text(response)
    assert words in refusal_text(response)
    assert "Nobody was signed in" in response.get_data(as_text=True)
    assert signed_in_as(client) is None
    assert user_emails(app) == before
    [event] = events(app, "sso.refused")
    assert json.loads(event.details)["reason"] == reason
    assert "eyJ" not in event.details and CLIENT_SECRET not in event.details
    # The same state cannot be tried again with a better token.
    good = crafted.sign(crafted.claims(params["nonce"]))
    with client.session_transaction() as session:
        session["sso_state"] = params["state"]
    again = _finish(client, crafted, params, good)
    assert again.status_code == 400 and "already used" in refusal_text(again)
    assert signed_in_as(client) is None


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"error": "access_denied"}, "did not sign you in (access_denied)"),
        ({"iss": "https://mix-up.example"}, "another identity provider"),
        ({"code": ""}, "no authorization code"),
    ],
)
def test_callback_errors_from_the_provider(app, client, crafted, extra, words):
    create_user(app)
    configure(app, crafted.issuer)
    params = _start(client)
    response = _finish(
        client, crafted, params, crafted.sign(crafted.claims(params["nonce"])), **extra
    )
    assert response.status_code == 400 and words in refusal_text(response)
    assert signed_in_as(client) is None


def test_callback_without_the_browsers_state_is_refused(app, client, crafted):
    """Login CSRF: an answer started in another browser (the attacker's) signs nobody in."""
    create_user(app)
    configure(app, crafted.issuer)
    params = _start(client)
    other = client.application.test_client()
    response = _finish(other, crafted, params, crafted.sign(crafted.claims(params["nonce"])))
    assert response.status_code == 400 and "state mismatch" in refusal_text(response)
    assert signed_in_as(other) is None
    forged = _finish(client, crafted, {"state": "x" * 43}, "t")
    assert forged.status_code == 400 and "state mismatch" in refusal_text(forged)


def test_callback_for_another_tenant_or_unknown_slug(app, client, crafted):
    create_user(app)
    create_user(app, "carol@globex.example", tenant="globex")
    configure(app, crafted.issuer)
    params = _start(client)
    crafted.id_token = crafted.sign(crafted.claims(params["nonce"]))
    # A state made for acme, brought to globex's callback (not set up): refused.
    other = client.get("/sso/globex/callback", query_string={"code": "c", "state": params["state"]})
    assert other.status_code == 404 and signed_in_as(client) is None
    for slug in ("nope", "x" * 5000, "%00"):
        assert client.get(f"/sso/{slug}/login").status_code in (400, 404)
        assert client.get(f"/sso/{slug}/callback?state=a&code=b").status_code in (400, 404)


def test_jwks_is_cached_and_refreshed_when_the_provider_rotates(app, client, crafted, monkeypatch):
    monkeypatch.setattr(oidc.jwks_cache, "REFRESH_INTERVAL", 0.0)
    create_user(app)
    configure(app, crafted.issuer)
    hits_after_setup = crafted.hits.get("/jwks", 0)
    for email in ("one@acme.example", "two@acme.example"):
        params = _start(client)
        claims = crafted.claims(params["nonce"], email=email, sub=email)
        assert _finish(client, crafted, params, crafted.sign(claims)).status_code == 302
        client.post("/logout")
    assert crafted.hits["/jwks"] == hits_after_setup + 1  # fetched once, then cached

    new_key = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    crafted.published = [new_key]
    params = _start(client)
    token = crafted.sign(crafted.claims(params["nonce"], email="three@acme.example"), key=new_key,
                         kid="k2")  # fmt: skip
    assert _finish(client, crafted, params, token).status_code == 302  # unknown kid: refetched
    assert signed_in_as(client) == "three@acme.example"
    assert crafted.hits["/jwks"] == hits_after_setup + 2


def test_forged_kids_do_not_make_keydesk_hammer_the_provider(app, client, crafted):
    create_user(app)
    configure(app, crafted.issuer)
    for _ in range(3):
        params = _start(client)
        token = crafted.sign(crafted.claims(params["nonce"]), key=OTHER_KEY, kid="random")
        assert _finish(client, crafted, params, token).status_code == 400
    assert crafted.hits["/jwks"] <= 2  # setup's check, and one refresh at most


# --- /admin/sso: discovery checks and input -------------------------------------------


def _save(client, **fields):
    data = {"issuer": "", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "email_domains": "acme.example", "default_role": "member"}  # fmt: skip
    data.update(fields)
    return client.post("/admin/sso", data=data)


def _field_error(response, field: str) -> str:
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    tag = soup.find(id=f"{field}-error")
    assert tag is not None, response.get_data(as_text=True)[:1500]
    return tag.get_text(" ", strip=True)


@pytest.mark.parametrize(
    "override, words",
    [
        ({"issuer": "https://other.example"}, "names another issuer"),
        ({"jwks_uri": None}, "jwks_uri is missing"),
        ({"token_endpoint": "ftp://x.example/token"}, "token_endpoint must start with"),
        ({"id_token_signing_alg_values_supported": ["none"]}, "signs ID tokens with none"),
        ({"id_token_signing_alg_values_supported": ["HS256"]}, "signs ID tokens with HS256"),
        ({"response_types_supported": ["id_token"]}, "authorization code flow"),
        ({"code_challenge_methods_supported": ["plain"]}, "PKCE"),
        ({"token_endpoint_auth_methods_supported": ["private_key_jwt"]}, "client_secret_basic"),
        ({"jwks_uri": "http://127.0.0.1:1/jwks"}, "JWKS: could not connect"),
    ],
)
def test_saving_checks_the_discovery_document(app, client, crafted, override, words):
    create_user(app)
    login(client)
    crafted.discovery_override = override
    response = _save(client, issuer=crafted.issuer)
    assert response.status_code == 400
    assert words in _field_error(response, "issuer")
    assert not events(app, "sso.config_changed")


@pytest.mark.parametrize(
    "raw, words",
    [
        ((404, b"{}", {"Content-Type": "application/json"}), "answered HTTP 404"),
        ((200, b"<html>", {"Content-Type": "text/html"}), "not JSON"),
        ((200, b"[1, 2]", {"Content-Type": "application/json"}), "not a JSON object"),
        ((200, b"{" * 600_000, {"Content-Type": "application/json"}), "larger than"),
        ((302, b"", {"Location": "http://127.0.0.1:1/x"}), "redirect"),
    ],
)
def test_saving_says_what_is_wrong_with_the_answer(app, client, crafted, raw, words):
    create_user(app)
    login(client)
    crafted.raw_discovery = raw
    response = _save(client, issuer=crafted.issuer)
    assert response.status_code == 400 and words in _field_error(response, "issuer")


def test_saving_a_trailing_slash_issuer_says_exactly_what_to_enter(app, client, crafted):
    create_user(app)
    login(client)
    response = _save(client, issuer=crafted.issuer + "/")
    assert response.status_code == 400
    assert "enter exactly that" in _field_error(response, "issuer")


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"issuer": ""}, "issuer", "issuer"),
        ({"issuer": "not a url"}, "issuer", "not a usable URL"),
        ({"issuer": "ftp://idp.example"}, "issuer", "must start with"),
        ({"issuer": "https://u:p@idp.example"}, "issuer", "without a user name"),
        ({"issuer": "https://idp.example/#x"}, "issuer", "fragment"),
        ({"issuer": "https://" + "a" * 600}, "issuer", ""),
        ({"issuer": "https://idp.example:99999/"}, "issuer", "not a usable URL"),
        ({"issuer": "https://idp\u202e.example"}, "issuer", ""),
        ({"client_id": "has space"}, "client_id", "visible ASCII"),
        ({"client_id": "x" * 300}, "client_id", ""),
        ({"client_id": "\x01abc"}, "client_id", "visible ASCII"),
        ({"client_secret": "s" * 1001}, "client_secret", ""),
        ({"client_secret": "s\u200b"}, "client_secret", "visible ASCII"),
        ({"email_domains": "not_a_domain"}, "email_domains", "is not a domain"),
        ({"email_domains": "acme.example \u00e9.example"}, "email_domains", "is not a domain"),
        (
            {"email_domains": " ".join(f"d{i}.example" for i in range(21))},
            "email_domains",
            "At most",
        ),
        ({"default_role": "owner"}, "default_role", ""),
    ],
)
def test_admin_sso_bad_input_names_the_field(app, client, crafted, fields, field, words):
    create_user(app)
    login(client)
    fields.setdefault("issuer", crafted.issuer)
    response = _save(client, **fields)
    assert response.status_code == 400
    assert words in _field_error(response, field)
    with app.app_context():
        assert db.session.execute(select(SsoConfig)).first() is None


def test_first_save_needs_the_client_secret(app, client, crafted):
    create_user(app)
    login(client)
    response = _save(client, issuer=crafted.issuer, client_secret="")
    assert response.status_code == 400 and "client secret" in _field_error(
        response, "client_secret"
    )


def test_a_domain_belongs_to_one_tenant(app, client, crafted):
    create_user(app)
    create_user(app, "carol@globex.example", tenant="globex")
    configure(app, crafted.issuer, tenant="globex", domains="globex.example shared.example")
    login(client)
    response = _save(client, issuer=crafted.issuer, email_domains="acme.example shared.example")
    assert response.status_code == 400
    assert "shared.example already signs in through another organization" in _field_error(
        response, "email_domains"
    )


def test_members_and_signed_out_people_cannot_reach_admin_sso(app, client, crafted):
    create_user(app)
    create_user(app, "bob@example.com", role="member")
    assert client.get("/admin/sso").status_code == 302  # to /login
    login(client, "bob@example.com")
    assert client.get("/admin/sso").status_code == 403
    assert _save(client, issuer=crafted.issuer).status_code == 403
    assert client.post("/admin/sso/scim-token").status_code == 403
    assert client.post("/admin/sso/remove").status_code == 403


def test_removing_sso_is_audited_and_brings_passwords_back(app, client, crafted):
    create_user(app)
    create_user(app, "bob@acme.example", role="member")
    configure(app, crafted.issuer, enforce=True)
    login(client)
    assert client.post("/admin/sso/remove").status_code == 302
    assert events(app, "sso.config_removed")
    client.post("/logout")
    assert login(client, "bob@acme.example").status_code == 302
    assert client.get("/sso/acme/login").status_code == 404


# --- SSRF ---------------------------------------------------------------------------


PRIVATE_OFF = pytest.mark.parametrize(
    "app_config", [{"KEYDESK_SSO_ALLOW_PRIVATE_ISSUERS": False}], indirect=True
)


@PRIVATE_OFF
def test_a_loopback_http_issuer_is_refused_without_the_setting(app, client, crafted):
    create_user(app)
    login(client)
    response = _save(client, issuer=crafted.issuer)
    assert response.status_code == 400
    assert "must start with https://" in _field_error(response, "issuer")
    assert crafted.hits == {}  # never contacted


@PRIVATE_OFF
@pytest.mark.parametrize(
    "issuer",
    [
        "https://localhost:{port}",  # a host name that resolves to 127.0.0.1
        "https://127.0.0.1:{port}",
        "https://[::1]:{port}",
        "https://[::ffff:127.0.0.1]:{port}",
        "https://169.254.169.254",
        "https://10.0.0.1",
    ],
)
def test_private_addresses_are_refused_without_the_setting(app, client, crafted, issuer):
    create_user(app)
    login(client)
    response = _save(client, issuer=issuer.format(port=crafted.port))
    assert response.status_code == 400
    assert "private or reserved address" in _field_error(response, "issuer")
    assert crafted.hits == {}


@PRIVATE_OFF
def test_the_check_is_on_the_resolved_address_of_every_connection(app, monkeypatch):
    """A public-looking name that resolves to a private address is refused before any
    connection: the address checked is the address connected to."""
    import socket

    import requests

    from app.sso import outbound

    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if host == "idp.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 443))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    connects = []
    monkeypatch.setattr(
        outbound.urllib3_connection, "create_connection", lambda *a, **k: connects.append(a)
    )
    with pytest.raises(outbound.ProviderError, match="private or reserved"):
        outbound.fetch_json("https://idp.example.com/x", allow_private=False, what="it")
    # The token endpoint goes through the same guarded session (Authlib's OAuth2Session).
    from authlib.integrations.requests_client import OAuth2Session

    with outbound.session(allow_private=False, cls=OAuth2Session, client_id="c") as http:
        with pytest.raises(requests.ConnectionError) as raised:
            http.post("https://idp.example.com/token", data={}, timeout=2, withhold_token=True)
        assert "private or reserved" in outbound.describe(raised.value, "token")
        with pytest.raises(requests.exceptions.InvalidURL):
            http.get("http://idp.example.com/", timeout=2, withhold_token=True)  # https only
    assert connects == []


def test_redirects_are_never_followed(app, crafted, monkeypatch):
    """Even with private issuers allowed: a redirect is an answer, not a hop to follow."""
    from app.sso import outbound

    target = CraftedProvider()
    try:
        crafted.raw_discovery = (302, b"", {"Location": target.issuer + "/.well-known/x"})
        with pytest.raises(outbound.ProviderError, match="redirect"):
            outbound.fetch_json(
                crafted.issuer + "/.well-known/openid-configuration", allow_private=True, what="d"
            )
        assert target.hits == {}
    finally:
        target.stop()


def test_address_rules():
    import ipaddress

    from app.sso.outbound import address_allowed

    for text in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                 "100.64.0.1", "0.0.0.0", "224.0.0.1",  # noqa: S104 "::1", "fe80::1", "fc00::1",
                 "::ffff:10.0.0.1", "255.255.255.255"):  # fmt: skip
        assert not address_allowed(ipaddress.ip_address(text)), text
    for text in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert address_allowed(ipaddress.ip_address(text)), text


def test_passwords_still_work_for_tenants_without_sso(app, client):
    create_user(app)
    assert login(client, "alice@example.com", PASSWORD).status_code == 302


@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}], indirect=True)
def test_admin_sso_forms_need_the_csrf_token(app, client, crafted):
    create_user(app)
    page = client.get("/login").get_data(as_text=True)
    token = BeautifulSoup(page, "html.parser").find("input", {"name": "csrf_token"})["value"]
    signed = client.post("/login", data={"email": "alice@example.com", "password": PASSWORD,
                                         "csrf_token": token})  # fmt: skip
    assert signed.status_code == 302
    assert _save(client, issuer=crafted.issuer).status_code == 400
    assert client.post("/admin/sso/scim-token").status_code == 400
    assert client.post("/login", data={"email": "n@acme.example", "sso": "1"}).status_code == 400
    with app.app_context():
        assert db.session.execute(select(SsoConfig)).first() is None
        assert scim_token_count() == 0


def scim_token_count() -> int:
    from app.models import ScimToken

    return len(db.session.execute(select(ScimToken)).all())


@pytest.mark.parametrize(
    "userinfo, status, words",
    [
        ({"sub": "subject-1", "email": "info@acme.example", "email_verified": True}, 302, ""),
        ({"sub": "someone-else", "email": "info@acme.example", "email_verified": True}, 400,
         "does not match the ID token (sub)"),
        ({"sub": "subject-1", "email": "info@acme.example", "email_verified": False}, 403,
         "has not verified"),
        (None, 400, "sent no email address"),
    ],
)  # fmt: skip
def test_email_from_the_userinfo_endpoint_when_the_id_token_has_none(
    app, client, crafted, userinfo, status, words
):
    create_user(app)
    configure(app, crafted.issuer)
    crafted.userinfo = userinfo
    params = _start(client)
    token = crafted.sign(crafted.claims(params["nonce"], email=None, email_verified=None))
    response = _finish(client, crafted, params, token)
    assert response.status_code == status
    if status == 302:
        assert signed_in_as(client) == "info@acme.example"
    else:
        assert words in refusal_text(response) and signed_in_as(client) is None
