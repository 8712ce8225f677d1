"""Single sign-on in a real browser, end to end, against a real OpenID provider
(oidc-provider, tests/oidc/provider.mjs): a tenant admin sets up SSO on /admin/sso, a new
person from an allowed domain signs in through the provider's login form and becomes a
member, creates a key, and a SCIM PATCH active=false from the identity provider makes
that key answer 401 on its next call and ends their browser session."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD
from tests.e2e.helpers import check_a11y, create_key, sign_in, unique
from tests.oidc_helpers import CLIENT_ID, CLIENT_SECRET, RealProvider


@pytest.fixture
def tenant():
    return unique("ssoe2e")


@pytest.fixture
def provider(server, tenant):
    provider = RealProvider([f"{server.url}/sso/{tenant}/callback"])
    yield provider
    provider.stop()


def _create_admin(server, email: str, tenant: str) -> None:
    created = server.flask(
        "users", "create", email, "--password", PASSWORD, "--tenant", tenant, "--admin"
    )
    assert created.returncode == 0, created.stderr


def _me(server, key: str) -> int:
    return requests.get(
        server.url + "/api/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).status_code


def test_sso_sign_in_then_scim_deprovisioning(server, provider, tenant, new_context, axe_path):
    domain = f"{tenant}.example"
    admin_email = f"admin@{domain}"
    _create_admin(server, admin_email, tenant)

    # The admin sets up SSO: the discovery document is read and checked on save.
    admin = new_context().new_page()
    sign_in(admin, admin_email)
    admin.get_by_role("link", name="Single sign-on").click()
    expect(admin.locator("#sso-callback-url")).to_have_text(f"{server.url}/sso/{tenant}/callback")
    admin.get_by_label("Issuer URL").fill(provider.issuer)
    admin.get_by_label("Client ID").fill(CLIENT_ID)
    admin.get_by_label("Client secret").fill(CLIENT_SECRET)
    admin.get_by_label("Email domains").fill(domain)
    admin.get_by_role("button", name="Save and check the provider").click()
    expect(admin.get_by_text("The provider's discovery document checks out")).to_be_visible()
    assert CLIENT_SECRET not in admin.content()
    check_a11y(admin, axe_path, "/admin/sso")

    # ... and creates the SCIM token the identity provider will use.
    admin.get_by_role("button", name="Create a SCIM token").click()
    scim_token = admin.locator("#scim-token").input_value()
    assert re.fullmatch(r"kds_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}", scim_token)
    scim_url = admin.locator("#scim-url").inner_text()

    # A new person from the allowed domain signs in through the provider's login form.
    person = new_context().new_page()
    newbie = f"newbie@{domain}"
    person.goto("/login")
    person.get_by_label("Email").fill(newbie)
    person.locator("#sso-login").click()
    expect(person).to_have_url(re.compile(re.escape(provider.issuer) + r"/interaction/"))
    person.locator("input[name=login]").fill(newbie)  # the development form: any password
    person.locator("input[name=password]").fill("anything at all")
    person.get_by_role("button", name="Sign-in").click()
    expect(person).to_have_url(re.compile(re.escape(server.url) + r"/keys$"))
    expect(person.locator(".whoami")).to_have_text(newbie)
    key = create_key(person, "ci deploy")
    assert _me(server, key) == 200

    # The admin sees the new member and the sign-in in the audit log.
    admin.goto("/admin/members")
    expect(admin.get_by_text(newbie).first).to_be_visible()
    admin.goto("/admin/audit")
    expect(admin.locator("tr[data-action='sso.signed_in']").first).to_contain_text(newbie)

    # The identity provider deprovisions them: the key stops at its next call.
    headers = {"Authorization": f"Bearer {scim_token}", "Content-Type": "application/scim+json"}
    found = requests.get(f'{scim_url}/Users?filter=userName eq "{newbie}"', headers=headers,
                         timeout=5).json()  # fmt: skip
    [user] = found["Resources"]
    patched = requests.patch(
        f"{scim_url}/Users/{user['id']}",
        headers=headers,
        json={"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
              "Operations": [{"op": "replace", "path": "active", "value": False}]},
        timeout=5,
    )  # fmt: skip
    assert patched.status_code == 200 and patched.json()["active"] is False
    assert _me(server, key) == 401
    person.goto("/keys")
    expect(person).to_have_url(re.compile(r"/login"))


def test_a_refused_sso_answer_shows_why_in_the_browser(server, provider, tenant, new_context):
    domain = f"{tenant}.example"
    _create_admin(server, f"admin@{domain}", tenant)
    admin = new_context().new_page()
    sign_in(admin, f"admin@{domain}")
    admin.goto("/admin/sso")
    admin.get_by_label("Issuer URL").fill(provider.issuer)
    admin.get_by_label("Client ID").fill(CLIENT_ID)
    admin.get_by_label("Client secret").fill(CLIENT_SECRET)
    admin.get_by_label("Email domains").fill(domain)
    admin.get_by_role("button", name="Save and check the provider").click()
    expect(admin.get_by_text("checks out")).to_be_visible()

    person = new_context().new_page()
    person.goto(f"/sso/{tenant}/login")
    person.locator("input[name=login]").fill("outsider@elsewhere.example")
    person.locator("input[name=password]").fill("whatever")
    person.get_by_role("button", name="Sign-in").click()
    expect(person.locator("#sso-error")).to_contain_text("elsewhere.example is not among")
    person.goto("/keys")
    expect(person).to_have_url(re.compile(r"/login"))
