"""Second factors in the portal: TOTP set-up (/account/2fa), passkeys, the second sign-in
step (/login/2fa) and the passwordless passkey sign-in from /login.

The WebAuthn ceremonies are two JSON POSTs each (options, then the browser's answer), sent
by static/passkeys.js with the CSRF token in X-CSRFToken. Each challenge is kept in the
session for one answer only and for CHALLENGE_SECONDS at most: the same answer posted twice
finds no challenge the second time.
"""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

from flask import (
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required

from app import audit, secretbox
from app.accounts import passkeys, twofactor
from app.auth import second_step
from app.auth.routes import (
    safe_next,
    second_step_account_limit,
    sign_in_ip_limit,
)
from app.auth.signin import complete_sign_in, renew_session
from app.auth.sudo import sudo_required
from app.clock import to_unix, utcnow
from app.errors import Conflict, InvalidInput, NotFound
from app.extensions import db
from app.sso import service as sso
from app.twofactor import bp
from app.twofactor.forms import ConfirmForm, EnableTotpForm, PasskeyNameForm, SecondFactorForm
from app.web import NO_STORE
from app.web_actor import request_actor

SETUP_KEY = "totp_setup"  # the sealed secret shown by GET /account/2fa, awaiting its code
SETUP_SECONDS = 15 * 60
CHALLENGE_KEY = "webauthn_challenge"
CHALLENGE_SECONDS = 5 * 60


def relying_party() -> passkeys.RelyingParty:
    """The WebAuthn relying party: KEYDESK_BASE_URL's host when set, else this request's.
    Browsers accept only a domain name (or "localhost") here, never an IP address."""
    base = current_app.config.get("KEYDESK_BASE_URL") or ""
    parts = urlsplit(base if base else request.host_url)
    return passkeys.RelyingParty(
        id=(parts.hostname or "localhost"), origin=f"{parts.scheme}://{parts.netloc}"
    )


# --- the account page's two-factor and passkey sections -----------------------------------
# /account itself lives in app/portal/account.py; it renders these with security_context().


def security_context() -> dict:
    return {
        "totp_on": twofactor.has_totp(current_user),
        "codes_left": twofactor.recovery_codes_left(current_user),
        "passkey_list": passkeys.list_passkeys(current_user),
        "confirm_form": ConfirmForm(),
    }


# --- TOTP -------------------------------------------------------------------------------


def _setup_secret(*, fresh: bool) -> str:
    """The secret being set up: kept sealed in the session between showing it and its code."""
    now = to_unix(utcnow())
    held = session.get(SETUP_KEY)
    if (
        not fresh
        and isinstance(held, dict)
        and 0 <= now - held.get("at", -(10**9)) <= SETUP_SECONDS
    ):
        try:
            sealed = base64.b64decode(held.get("sealed", ""))
            return secretbox.unseal(sealed, purpose="totp-setup")
        except (ValueError, secretbox.SecretUnreadable):
            pass
    secret = twofactor.new_secret()
    sealed = secretbox.seal(secret, purpose="totp-setup")
    session[SETUP_KEY] = {"sealed": base64.b64encode(sealed).decode(), "at": now}
    return secret


def _setup_page(form, secret: str, status: int = 200):
    uri = twofactor.provisioning_uri(secret=secret, email=current_user.email)
    html = render_template(
        "twofactor/setup.html",
        form=form,
        secret=secret,
        qr_svg=twofactor.qr_svg(uri),
        required=twofactor.must_enroll(current_user),
        **security_context(),
    )
    return html, status, NO_STORE


@bp.route("/account/2fa", methods=["GET", "POST"])
@login_required
@sudo_required
def two_factor():
    if twofactor.has_totp(current_user):
        if request.method == "POST":
            flash("Two-factor authentication is already on.", "info")
            return redirect(url_for("twofactor.two_factor"))
        return render_template("twofactor/status.html", **security_context())
    form = EnableTotpForm()
    if request.method == "GET":
        return _setup_page(form, _setup_secret(fresh=True))
    held = session.get(SETUP_KEY)
    if not isinstance(held, dict):
        form.code.errors = ["That set-up page is too old. Scan this new code and try again."]
        return _setup_page(form, _setup_secret(fresh=True), 400)
    secret = _setup_secret(fresh=False)
    if form.validate_on_submit():
        try:
            codes = twofactor.enable_totp(
                user=current_user,
                secret=secret,
                code=form.code.data,
                now=utcnow(),
                actor=request_actor(),
            )
        except InvalidInput as exc:
            db.session.rollback()
            form.code.errors = [str(exc)]
        except Conflict as exc:
            db.session.rollback()
            flash(str(exc), "info")
            return redirect(url_for("twofactor.two_factor"))
        else:
            db.session.commit()
            session.pop(SETUP_KEY, None)
            return _recovery_codes_page(codes, just_enabled=True)
    return _setup_page(form, secret, 400)


def _recovery_codes_page(codes: list[str], *, just_enabled: bool):
    """The one response that holds the recovery codes: rendered once, never cached."""
    html = render_template("twofactor/recovery_codes.html", codes=codes, just_enabled=just_enabled)
    return html, 200, NO_STORE


@bp.post("/account/2fa/recovery-codes")
@login_required
@sudo_required
def regenerate_recovery_codes():
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        codes = twofactor.regenerate_recovery_codes(
            user=current_user, now=utcnow(), actor=request_actor()
        )
    except Conflict as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("twofactor.two_factor"))
    db.session.commit()
    return _recovery_codes_page(codes, just_enabled=False)


@bp.post("/account/2fa/disable")
@login_required
@sudo_required
def disable():
    if not ConfirmForm().validate_on_submit():
        abort(400)
    if twofactor.disable_totp(user=current_user, now=utcnow(), actor=request_actor()):
        db.session.commit()
        flash("Two-factor authentication with an app is off; its recovery codes are gone.", "info")
    else:
        flash("Two-factor authentication with an app was not on.", "info")
    return redirect(url_for("twofactor.two_factor"))


# --- passkeys: registration and management -----------------------------------------------


def _json_error(exc: InvalidInput | NotFound, status: int = 400):
    response = jsonify(error=str(exc), field=getattr(exc, "field", None))
    response.status_code = status
    return response


def _body() -> dict:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def keep_challenge(purpose: str, challenge: bytes) -> None:
    session[CHALLENGE_KEY] = {
        "purpose": purpose,
        "challenge": base64.urlsafe_b64encode(challenge).decode(),
        "at": to_unix(utcnow()),
    }


def take_challenge(purpose: str) -> bytes:
    """The challenge of the ceremony in progress, removed: each is good for one answer."""
    held = session.pop(CHALLENGE_KEY, None)
    if (
        not isinstance(held, dict)
        or held.get("purpose") != purpose
        or not isinstance(held.get("at"), int)
        or not 0 <= to_unix(utcnow()) - held["at"] <= CHALLENGE_SECONDS
    ):
        raise InvalidInput(
            "This passkey request has expired or was already used. Try again.", field="passkey"
        )
    return base64.urlsafe_b64decode(held["challenge"])


@bp.post("/account/passkeys/options")
@login_required
@sudo_required
def passkey_register_options():
    try:
        options, challenge = passkeys.registration_options(user=current_user, rp=relying_party())
    except InvalidInput as exc:
        return _json_error(exc)
    keep_challenge("register", challenge)
    return current_app.response_class(options, mimetype="application/json")


@bp.post("/account/passkeys")
@login_required
@sudo_required
def passkey_register():
    body = _body()
    try:
        challenge = take_challenge("register")
        row = passkeys.finish_registration(
            user=current_user,
            rp=relying_party(),
            credential=body.get("credential"),
            challenge=challenge,
            name=body.get("name"),
            now=utcnow(),
            actor=request_actor(),
        )
    except InvalidInput as exc:
        db.session.rollback()
        return _json_error(exc)
    db.session.commit()
    flash(f"Passkey “{row.name}” added.", "success")
    return jsonify(ok=True, name=row.name, redirect=url_for("portal.account"))


def _own_passkey_action(action):
    try:
        return action()
    except NotFound:
        db.session.rollback()
        abort(404)


@bp.post("/account/passkeys/<dbid:passkey_id>/rename")
@login_required
@sudo_required
def passkey_rename(passkey_id: int):
    form = PasskeyNameForm()
    _own_passkey_action(lambda: passkeys.get_passkey(user=current_user, passkey_id=passkey_id))
    if form.validate_on_submit():
        try:
            row = passkeys.rename_passkey(
                user=current_user,
                passkey_id=passkey_id,
                name=form.name.data,
                now=utcnow(),
                actor=request_actor(),
            )
        except InvalidInput as exc:
            db.session.rollback()
            form.name.errors = [str(exc)]
        else:
            db.session.commit()
            flash(f"Passkey renamed to “{row.name}”.", "success")
            return redirect(url_for("portal.account"))
    from app.portal.account import account_page  # the portal imports this module

    rename_error = {"id": passkey_id, "message": " ".join(form.name.errors)}
    return account_page(status=400, rename_error=rename_error)


@bp.post("/account/passkeys/<dbid:passkey_id>/remove")
@login_required
@sudo_required
def passkey_remove(passkey_id: int):
    if not ConfirmForm().validate_on_submit():
        abort(400)
    name = _own_passkey_action(
        lambda: passkeys.remove_passkey(
            user=current_user, passkey_id=passkey_id, now=utcnow(), actor=request_actor()
        )
    )
    db.session.commit()
    flash(f"Passkey “{name}” removed.", "info")
    return redirect(url_for("portal.account"))


# --- /login/2fa: the second step ---------------------------------------------------------


def _finish_sign_in(user, method: str) -> str:
    """Sign in after the second factor; returns where to go."""
    target = safe_next(second_step.next_url())
    user.last_login_at = utcnow()
    audit.record(
        "auth.login",
        actor=request_actor(user.email, "user"),
        now=utcnow(),
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        method=method,
    )
    db.session.commit()
    complete_sign_in(user, method=method)
    return target


def _second_factor_failed(user, reason: str) -> bool:
    """Audit a refused code or passkey; True when the half sign-in is now spent."""
    audit.record(
        "auth.second_factor_failed",
        actor=request_actor(user.email, "anonymous"),
        now=utcnow(),
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        reason=reason,
    )
    db.session.commit()
    return second_step.count_failure()


def _login_2fa_page(form, user, status: int = 200):
    html = render_template(
        "auth/login_2fa.html",
        form=form,
        has_totp=twofactor.has_totp(user),
        has_passkey=bool(passkeys.passkey_count(user)),
    )
    return html, status


EXPIRED = "Your sign-in took too long or was interrupted. Enter your password again."
TOO_MANY = "Too many wrong codes. Enter your password again."


@bp.route("/login/2fa", methods=["GET", "POST"])
@sign_in_ip_limit
@second_step_account_limit
def login_2fa():
    now = utcnow()
    user = second_step.pending_user(now=now)
    if user is None:
        flash(EXPIRED, "error")
        return redirect(url_for("auth.login"))
    form = SecondFactorForm()
    if request.method == "GET":
        return _login_2fa_page(form, user)
    if form.validate_on_submit():
        try:
            method = twofactor.verify_code(user, form.code.data, now=now)
        except InvalidInput as exc:
            db.session.rollback()
            if _second_factor_failed(user, "wrong_code"):
                flash(TOO_MANY, "error")
                return redirect(url_for("auth.login"))
            form.code.errors = [str(exc)]
        else:
            target = _finish_sign_in(user, method)
            if method == "recovery_code":
                left = twofactor.recovery_codes_left(user)
                flash(
                    f"You signed in with a recovery code; {left} left. "
                    "Make new ones under Two-factor authentication if you are running low.",
                    "info",
                )
            return redirect(target)
    return _login_2fa_page(form, user, 400)


@bp.post("/login/2fa/passkey/options")
def login_2fa_passkey_options():
    user = second_step.pending_user(now=utcnow())
    if user is None:
        return _json_error(InvalidInput(EXPIRED, field="passkey"), 401)
    options, challenge = passkeys.authentication_options(rp=relying_party(), user=user)
    keep_challenge("second-factor", challenge)
    return current_app.response_class(options, mimetype="application/json")


@bp.post("/login/2fa/passkey")
@sign_in_ip_limit
@second_step_account_limit
def login_2fa_passkey():
    now = utcnow()
    user = second_step.pending_user(now=now)
    if user is None:
        return _json_error(InvalidInput(EXPIRED, field="passkey"), 401)
    try:
        challenge = take_challenge("second-factor")
        passkeys.finish_authentication(
            rp=relying_party(), credential=_body().get("credential"), challenge=challenge,
            now=now, user=user,
        )  # fmt: skip
    except InvalidInput as exc:
        db.session.rollback()
        if _second_factor_failed(user, "passkey_refused"):
            return _json_error(InvalidInput(TOO_MANY, field="passkey"), 401)
        return _json_error(exc)
    return jsonify(ok=True, redirect=_finish_sign_in(user, "passkey"))


# --- passwordless sign-in from /login ----------------------------------------------------


@bp.post("/login/passkey/options")
def login_passkey_options():
    options, challenge = passkeys.authentication_options(rp=relying_party())
    keep_challenge("login", challenge)
    return current_app.response_class(options, mimetype="application/json")


@bp.post("/login/passkey")
@sign_in_ip_limit
def login_passkey():
    now = utcnow()
    body = _body()
    try:
        challenge = take_challenge("login")
        user, _ = passkeys.finish_authentication(
            rp=relying_party(), credential=body.get("credential"), challenge=challenge, now=now
        )
    except InvalidInput as exc:
        db.session.rollback()
        audit.record(
            "auth.login_failed",
            actor=request_actor(),
            now=now,
            target_type="user",
            target=None,
            reason="passkey_refused",
        )
        db.session.commit()
        return _json_error(exc)
    if not sso.password_sign_in_allowed(user):
        # The tenant enforces SSO: a passkey is no more a way around it than a password
        # (admins keep both as a way back in). The assertion stays spent (its counter moved).
        sso.record_password_refused(user=user, actor=request_actor(), now=now, method="passkey")
        db.session.commit()
        message = (
            f"{user.tenant.name} signs in through single sign-on: "
            "enter your email and choose “Use single sign-on (SSO)”."
        )
        return _json_error(InvalidInput(message, field="passkey"), 403)
    user.last_login_at = now
    audit.record(
        "auth.login",
        actor=request_actor(user.email, "user"),
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        method="passkey",
    )
    db.session.commit()
    target = safe_next(body.get("next") if isinstance(body.get("next"), str) else None)
    complete_sign_in(user, method="passkey")
    return jsonify(ok=True, redirect=target)


# --- sudo mode by passkey (/sudo's other way) ---------------------------------------------
# The passkey alone re-authenticates, with user verification (PIN or biometrics) required,
# as for a passwordless sign-in: possession of the key and the person holding it.


@bp.post("/sudo/passkey/options")
@login_required
def sudo_passkey_options():
    if not passkeys.passkey_count(current_user):
        return _json_error(InvalidInput("You have no passkey to use here.", field="passkey"))
    options, challenge = passkeys.authentication_options(
        rp=relying_party(), user=current_user, verify_user=True
    )
    keep_challenge("sudo", challenge)
    return current_app.response_class(options, mimetype="application/json")


@bp.post("/sudo/passkey")
@login_required
@sign_in_ip_limit
def sudo_passkey():
    now = utcnow()
    body = _body()
    try:
        challenge = take_challenge("sudo")
        passkeys.finish_authentication(
            rp=relying_party(), credential=body.get("credential"), challenge=challenge,
            now=now, user=current_user, verify_user=True,
        )  # fmt: skip
    except InvalidInput as exc:
        db.session.rollback()
        _sudo_audit("auth.sudo_failed", now=now)
        db.session.commit()
        return _json_error(exc)
    renew_session(sudo=True)  # a new session id on re-authentication, as /sudo does
    _sudo_audit("auth.sudo_granted", now=now)
    db.session.commit()
    target = safe_next(body.get("next") if isinstance(body.get("next"), str) else None)
    return jsonify(ok=True, redirect=target)


def _sudo_audit(action: str, *, now) -> None:
    audit.record(
        action,
        actor=request_actor(),
        now=now,
        tenant_id=current_user.tenant_id,
        target_type="user",
        target=current_user.email,
        method="passkey",
    )
