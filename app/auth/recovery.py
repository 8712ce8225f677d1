"""/sudo (re-authentication), /forgot-password and /reset-password/<token>."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from app import audit, mail
from app.accounts import credentials, passkeys, twofactor
from app.auth import bp
from app.auth.forms import ForgotPasswordForm, ResetPasswordForm, SudoForm
from app.auth.reset_mail import ResetJob, mailer
from app.auth.routes import safe_next
from app.auth.signin import renew_session
from app.auth.sudo import in_sudo_mode
from app.clock import utcnow
from app.errors import InvalidInput
from app.extensions import db, limiter
from app.models import User
from app.net import client_ip
from app.web import NO_STORE, public_url
from app.web_actor import request_actor

SUDO_ERROR = "That did not match. Enter your password again."
PASSKEY_NEEDED = (
    "Your account has a passkey: confirm with the passkey below (a password alone is one factor)."
)


def _limit() -> str:
    return current_app.config["KEYDESK_LOGIN_RATE_LIMIT"]


def _signed_in_account_key() -> str:
    # Runs inside login_required: the user is known. Per account as well as per address, the
    # same budget as /login, so /sudo is no faster way to guess a password.
    return "login-account:" + (current_user.email if current_user.is_authenticated else "")


def _typed_account_key() -> str:
    return "login-account:" + (request.form.get("email") or "").strip().lower()[:254]


# --- sudo mode ---------------------------------------------------------------------------


def has_second_factor(user: User) -> bool:
    """Whether /sudo asks for `code` besides the password: an authenticator app (or one of
    its recovery codes). A user with passkeys only confirms with a passkey instead."""
    return twofactor.has_totp(user)


def passkey_only(user: User) -> bool:
    """A second factor, but no code to type: the password alone is one factor, not sudo."""
    return not twofactor.has_totp(user) and twofactor.has_second_factor(user)


def _second_factor_ok(user: User, code: str) -> bool:
    """A TOTP or unused recovery code (spent when it passes); only asked when
    has_second_factor(user)."""
    try:
        twofactor.verify_code(user, code, now=utcnow())
    except InvalidInput:
        return False
    return True


def _reauthenticated(user: User, form: SudoForm) -> bool:
    """The one place /sudo decides: the password, and the second factor where there is one."""
    password_ok = credentials.check_current_password(user=user, password=form.password.data)
    if passkey_only(user):
        return False
    if not has_second_factor(user):
        return password_ok
    code = (form.code.data or "").strip()
    # Check the code even after a wrong password: one answer and the same work either way.
    return _second_factor_ok(user, code) and password_ok


@bp.route("/sudo", methods=["GET", "POST"])
@login_required
@limiter.limit(_limit, methods=["POST"], key_func=client_ip)
@limiter.limit(_limit, methods=["POST"], key_func=_signed_in_account_key)
def sudo():
    target = safe_next(request.args.get("next") or request.form.get("next"))
    if request.method == "GET" and in_sudo_mode():
        return redirect(target)
    form = SudoForm()
    if not has_second_factor(current_user):
        del form.code
    error = None
    if form.validate_on_submit():
        now = utcnow()
        if _reauthenticated(current_user, form):
            renew_session(sudo=True)  # a new session id on re-authentication
            audit.record(
                "auth.sudo_granted",
                actor=request_actor(),
                now=now,
                tenant_id=current_user.tenant_id,
                target_type="user",
                target=current_user.email,
            )
            db.session.commit()
            return redirect(target)
        audit.record(
            "auth.sudo_failed",
            actor=request_actor(),
            now=now,
            tenant_id=current_user.tenant_id,
            target_type="user",
            target=current_user.email,
        )
        db.session.commit()
        error = PASSKEY_NEEDED if passkey_only(current_user) else SUDO_ERROR
    elif request.method == "POST":
        error = SUDO_ERROR
    html = render_template(
        "auth/sudo.html",
        form=form,
        error=error,
        next=target,
        has_passkey=bool(passkeys.passkey_count(current_user)),
    )
    return html, 401 if error else 200


# --- forgot and reset --------------------------------------------------------------------


def reset_by_mail_available() -> bool:
    return mail.mail_configured()


_SLOT = "T"  # stands for the token, made later on the reset-mail thread


def _link_prefix() -> str:
    # public_url: KEYDESK_BASE_URL when set (a link built from the Host header can be pointed
    # at another site by whoever asks for the reset, see SECURITY.md), and the app's own path.
    link = public_url("auth.reset_password", token=_SLOT)
    return link.removesuffix(_SLOT)


@bp.route("/forgot-password", methods=["GET", "POST"])
@limiter.limit(_limit, methods=["POST"], key_func=client_ip)
@limiter.limit(_limit, methods=["POST"], key_func=_typed_account_key)
def forgot_password():
    form = ForgotPasswordForm()
    available = reset_by_mail_available()
    if form.validate_on_submit():
        # The same work for every address, known or not: queue it and answer (the lookup,
        # token and mail happen on the reset-mail thread; app/auth/reset_mail.py).
        if available:
            typed = form.email.data.strip()[:254]
            job = ResetJob(
                email=typed,
                actor=request_actor(typed.lower(), "anonymous"),
                link_prefix=_link_prefix(),
            )
            mailer(current_app).submit(job)
        html = render_template("auth/forgot_sent.html", available=available)
        return html, 200
    status = 400 if form.errors else 200
    return render_template("auth/forgot.html", form=form, available=available), status


def _unusable(exc: InvalidInput):
    html = render_template("auth/reset_unusable.html", message=str(exc))
    return html, 410, NO_STORE


@bp.route("/reset-password/<token>", methods=["GET", "POST"])
@limiter.limit(_limit, methods=["POST"], key_func=client_ip)
def reset_password(token: str):
    now = utcnow()
    try:
        reset = credentials.find_reset(token=token, now=now)
    except credentials.ResetUnusable as exc:
        return _unusable(exc)
    form = ResetPasswordForm()
    if form.validate_on_submit():
        try:
            user = credentials.complete_reset(
                token=token, password=form.password.data, actor=request_actor(), now=now
            )
        except credentials.ResetUnusable as exc:
            db.session.rollback()
            return _unusable(exc)
        except InvalidInput as exc:
            db.session.rollback()
            getattr(form, exc.field or "password").errors.append(str(exc))
        else:
            db.session.commit()
            flash(
                f"Your password is changed and every session of {user.email} has ended. "
                "Sign in with the new password.",
                "success",
            )
            return redirect(url_for("auth.login"))
    status = 400 if form.errors else 200
    html = render_template("auth/reset.html", form=form, email=reset.user.email)
    return html, status, NO_STORE
