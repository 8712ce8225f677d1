"""Second factors in a real Chromium against a real gunicorn: TOTP set up from the page's
secret and used to sign in; a passkey registered on Chromium's virtual authenticator
(DevTools protocol) and used as a second factor and as a passwordless sign-in."""

from __future__ import annotations

import re

import pyotp
from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD
from tests.e2e.helpers import check_a11y, register, sign_out


def virtual_authenticator(context, page) -> str:
    """A platform passkey authenticator (like Touch ID) that says yes to every prompt."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return added["authenticatorId"]


def password_step(page, email: str) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(re.compile(r"/login/2fa$"))


def test_totp_enrollment_and_sign_in_with_a_code(page, axe_path):
    email = register(page)
    page.goto("/account/2fa")
    secret = page.locator("#totp-secret").inner_text().strip()
    expect(page.locator(".qr svg")).to_be_visible()
    check_a11y(page, axe_path, "two-factor set-up")

    page.get_by_label("Code from your app").fill("000000")
    page.get_by_role("button", name="Turn on two-factor authentication").click()
    expect(page.locator("#code-error")).to_contain_text("does not match")

    totp = pyotp.TOTP(secret)
    page.get_by_label("Code from your app").fill(totp.now())
    page.get_by_role("button", name="Turn on two-factor authentication").click()
    expect(page.locator(".recovery-code")).to_have_count(10)
    codes = page.locator(".recovery-code").all_inner_texts()
    check_a11y(page, axe_path, "recovery codes")
    page.goto("/account/2fa")
    expect(page.get_by_role("heading", name="Two-factor authentication is on")).to_be_visible()
    check_a11y(page, axe_path, "two-factor status")

    sign_out(page)
    password_step(page, email)
    check_a11y(page, axe_path, "second sign-in step")
    page.get_by_label("Authentication code").fill(totp.now())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(re.compile(r"/keys$"))

    # A recovery code works once.
    sign_out(page)
    password_step(page, email)
    page.get_by_label("Authentication code").fill(codes[0])
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(re.compile(r"/keys$"))
    sign_out(page)
    password_step(page, email)
    page.get_by_label("Authentication code").fill(codes[0])
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#code-error")).to_contain_text("already used")


def test_passkey_registered_and_used(page, context, axe_path):
    email = register(page)
    virtual_authenticator(context, page)
    page.goto("/account")
    page.get_by_label("Name for a new passkey").fill("Virtual laptop")
    page.locator("#add-passkey").click()
    expect(page.locator(".passkey")).to_have_count(1)
    expect(page.locator(".passkey input[name=name]")).to_have_value("Virtual laptop")
    check_a11y(page, axe_path, "account with a passkey")

    # As the second factor after the password.
    sign_out(page)
    password_step(page, email)
    page.locator("#use-passkey").click()
    expect(page).to_have_url(re.compile(r"/keys$"))

    # On its own, from /login, with no email or password typed.
    sign_out(page)
    page.goto("/login")
    check_a11y(page, axe_path, "sign-in page with passkeys")
    page.locator("#passkey-login").click()
    expect(page).to_have_url(re.compile(r"/keys$"))
    expect(page.locator(".whoami")).to_have_text(email)

    # Renamed, then removed: the password alone signs in again.
    page.goto("/account")
    page.locator(".passkey input[name=name]").fill("Old laptop")
    page.get_by_role("button", name="Rename").click()
    expect(page.locator(".passkey input[name=name]")).to_have_value("Old laptop")
    page.get_by_role("button", name="Remove passkey Old laptop").click()
    expect(page.locator(".passkey")).to_have_count(0)
    sign_out(page)
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(re.compile(r"/keys$"))


def test_passkey_login_without_a_passkey_says_why(page, context):
    virtual_authenticator(context, page)  # an authenticator holding no passkey for this site
    page.goto("/login")
    page.locator("#passkey-login").click()
    expect(page.locator("#passkey-login-status")).to_contain_text(re.compile(r"\w"))
    expect(page).to_have_url(re.compile(r"/login$"))
