"""Sign-up, sign-in and sign-out."""

from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy.exc import IntegrityError

from app.accounts import service as accounts
from app.accounts import twofactor
from app.auth import bp, second_step
from app.auth.forms import LoginForm, RegisterForm
from app.auth.signin import complete_sign_in, sign_out
from app.clock import utcnow
from app.errors import InvalidInput
from app.extensions import db, limiter
from app.net import client_ip
from app.sso import service as sso
from app.web_actor import request_actor

GENERIC_LOGIN_ERROR = "Incorrect email or password."
# Registering an address that already has an account gets this form-level message, never a
# "this email is taken" on the field (see SECURITY.md, "Account enumeration").
GENERIC_REGISTER_ERROR = (
    "We could not create an account with these details. "
    "If you already have an account, sign in instead."
)


def safe_next(target: str | None) -> str:
    """Only a same-site path: no scheme, no host, no protocol-relative //evil."""
    if not target:
        return url_for("portal.keys")
    # Browsers drop tabs and newlines and read "\\" as "/", so "/\t/evil" or "/\\evil"
    # would leave the site: refuse control characters, whitespace and backslashes outright.
    if any(ch <= " " or ch == "\\" or ch == "\x7f" for ch in target):
        return url_for("portal.keys")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("portal.keys")
    return target


def _login_limit() -> str:
    return current_app.config["KEYDESK_LOGIN_RATE_LIMIT"]


def _login_account_key() -> str:
    return "login-account:" + (request.form.get("email") or "").strip().lower()[:254]


def _pending_account_key() -> str:
    # The half-signed-in account (never a form field, which the client could point at
    # another account): the same key as its password attempts.
    return "login-account:" + second_step.pending_email()


# One budget for every sign-in attempt, password, code or passkey: per client address and
# per account (shared scopes: a code guess spends what a password guess spends).
sign_in_ip_limit = limiter.shared_limit(
    _login_limit, scope="sign-in-ip", key_func=client_ip, methods=["POST"]
)
sign_in_account_limit = limiter.shared_limit(
    _login_limit, scope="sign-in-account", key_func=_login_account_key, methods=["POST"]
)
second_step_account_limit = limiter.shared_limit(
    _login_limit, scope="sign-in-account", key_func=_pending_account_key, methods=["POST"]
)


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"], key_func=client_ip)
def register():
    if not current_app.config["KEYDESK_ALLOW_REGISTRATION"]:
        return render_template("auth/register_closed.html"), 403
    if current_user.is_authenticated:
        return redirect(url_for("portal.keys"))
    form = RegisterForm()
    error = None
    if form.validate_on_submit():
        try:
            user = accounts.register(
                email=form.email.data,
                password=form.password.data,
                organization=form.organization.data,
                now=utcnow(),
                actor=request_actor(form.email.data.strip().lower(), "user"),
            )
        except (InvalidInput, IntegrityError) as exc:
            # IntegrityError: a concurrent registration of the same email won the race.
            db.session.rollback()
            if isinstance(exc, IntegrityError) or _email_has_account(form.email.data):
                error = GENERIC_REGISTER_ERROR
            else:
                getattr(form, exc.field or "email").errors.append(str(exc))
        else:
            try:
                db.session.commit()
            except IntegrityError:
                # Lost a race with a simultaneous sign-up for the same email or slug.
                db.session.rollback()
                form.email.errors.append("That did not go through; please submit again.")
                return render_template("auth/register.html", form=form), 409
            complete_sign_in(user, method="register")
            flash(f"Welcome! Your organization {user.tenant.name} is ready.", "success")
            return redirect(url_for("portal.keys"))
    status = 400 if form.errors or error else 200
    return render_template("auth/register.html", form=form, error=error), status


def _email_has_account(email: str) -> bool:
    try:
        return accounts.email_taken(accounts.normalize_email(email))
    except InvalidInput:
        return False


@bp.route("/login", methods=["GET", "POST"])
@sign_in_ip_limit
@sign_in_account_limit
def login():
    if current_user.is_authenticated and request.method == "GET":
        return redirect(safe_next(request.args.get("next")))
    form = LoginForm()
    error = None
    if request.method == "POST" and request.form.get("sso"):
        return _sso_login(form)
    if form.validate_on_submit():
        user = accounts.authenticate(
            email=form.email.data,
            password=form.password.data,
            now=utcnow(),
            actor=request_actor(),
        )
        if user is not None and not sso.password_sign_in_allowed(user):
            # Checked after the password, so this says nothing to someone who lacks it.
            db.session.rollback()  # not a sign-in: drop its audit event and last_login_at
            sso.record_password_refused(user=user, actor=request_actor(), now=utcnow())
            db.session.commit()
            error = (
                f"{user.tenant.name} signs in through single sign-on: "
                "enter your email and choose “Use single sign-on (SSO)”."
            )
            return render_template("auth/login.html", form=form, error=error), 403
        db.session.commit()  # the audit event of a failure is kept too
        if user is not None:
            target = safe_next(request.args.get("next") or request.form.get("next"))
            if twofactor.has_second_factor(user):
                # Not signed in yet: only a short-lived marker until the second factor.
                second_step.start(user, next_url=target, now=utcnow())
                return redirect(url_for("twofactor.login_2fa"))
            complete_sign_in(user, method="password")
            return redirect(target)
        error = GENERIC_LOGIN_ERROR
    elif request.method == "POST":
        # A missing field gets the same answer as wrong credentials. (A bad CSRF token never
        # gets here: CSRFProtect refuses it with 400 before the view runs.)
        error = GENERIC_LOGIN_ERROR
    status = 401 if error else 200
    return render_template("auth/login.html", form=form, error=error), status


def _sso_login(form: LoginForm):
    """The "Use single sign-on" button: the email's domain picks the tenant and its provider."""
    email = (request.form.get("email") or "").strip()
    tenant = sso.tenant_for_email(email) if len(email) <= 254 else None
    if tenant is None:
        error = (
            "Single sign-on is not set up for this email address's domain. "
            "Sign in with your password, or ask your admin."
        )
        return render_template("auth/login.html", form=form, error=error), 400
    args = {"login_hint": email}
    next_url = request.args.get("next") or request.form.get("next")
    if next_url:
        args["next"] = safe_next(next_url)
    target = url_for("sso.login", slug=tenant.slug, **args)
    # A page, not a redirect: the CSP's form-action 'self' also covers every redirect that
    # follows a form submission, so a chain from this POST to the provider's origin would be
    # blocked. The page moves on by itself (meta refresh: a navigation of its own).
    return render_template("sso/continue.html", target=target, tenant=tenant), 200


@bp.post("/logout")
@login_required
def logout():
    sign_out()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
