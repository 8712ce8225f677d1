"""Tenant policy `require_2fa`: a member without a second factor may use nothing but the
set-up pages (and signing out) until they have one."""

from __future__ import annotations

from flask import Flask, flash, redirect, request, url_for
from flask_login import current_user

from app.accounts import twofactor
from app.auth.signin import current_session

# What a member held back may still reach: the TOTP set-up, passkey registration, the
# recovery codes page. Signing out lives in the auth blueprint, which is not gated.
ALLOWED = frozenset(
    {
        "twofactor.two_factor",
        "twofactor.passkey_register_options",
        "twofactor.passkey_register",
        "twofactor.regenerate_recovery_codes",
    }
)
# The signed-in blueprints (the API is never gated: bearer keys, and it is the hot path).
GATED_BLUEPRINTS = ("portal", "admin", "twofactor")


def require_second_factor():
    if not current_user.is_authenticated or request.endpoint in ALLOWED:
        return None
    if not twofactor.must_enroll(current_user):
        return None
    live = current_session()
    if live is not None and live.method == "sso":
        return None  # SPEC: a tenant's require_2fa is satisfied by an SSO sign-in
    if request.method == "GET":
        flash(
            "Your organization requires two-factor authentication. Set up an authenticator "
            "app or a passkey to continue.",
            "info",
        )
    return redirect(url_for("twofactor.two_factor"))


def init_app(app: Flask) -> None:
    for name in GATED_BLUEPRINTS:
        app.before_request_funcs.setdefault(name, []).append(require_second_factor)
