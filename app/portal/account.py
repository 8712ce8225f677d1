"""/account: your email, organization, password and sessions."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user

from app.accounts import credentials, sessions
from app.auth.forms import ChangePasswordForm
from app.auth.signin import current_session, renew_session, sign_out, timeouts
from app.auth.sudo import sudo_required
from app.clock import utcnow
from app.errors import InvalidInput, NotFound
from app.extensions import db
from app.key_actions import ConfirmForm
from app.keys import tokens
from app.portal import bp
from app.twofactor.routes import security_context
from app.web import csrf_failed
from app.web_actor import request_actor


def _current_id() -> int | None:
    row = current_session()
    return row.id if row is not None else None


def _entries():
    return sessions.list_user_sessions(
        user=current_user, now=utcnow(), timeouts=timeouts(), current_id=_current_id()
    )


def account_page(form: ChangePasswordForm | None = None, status: int = 200, **extra):
    """/account; `extra` carries a section's error (e.g. a passkey rename refused)."""
    html = render_template(
        "portal/account.html",
        password_form=form or ChangePasswordForm(formdata=None),
        entries=_entries(),
        form=ConfirmForm(),
        **(security_context() | extra),
    )
    return html, status


@bp.get("/account")
def account():
    return account_page()


@bp.post("/account/password")
@sudo_required(form_page=lambda: url_for("portal.account"))
def change_password():
    form = ChangePasswordForm()
    if not form.validate_on_submit():
        if csrf_failed(form):
            abort(400)
        return account_page(form, 400)
    try:
        ended = credentials.change_password(
            user=current_user,
            current_password=form.current_password.data,
            new_password=form.password.data,
            keep_session_id=_current_id(),
            actor=request_actor(),
            now=utcnow(),
        )
    except InvalidInput as exc:
        db.session.rollback()
        getattr(form, exc.field or "password").errors.append(str(exc))
        return account_page(form, 400)
    renew_session(sudo=True)  # the password was just proved: a new id, sudo mode again
    db.session.commit()
    others = f"{ended} other session{'' if ended == 1 else 's'}"
    flash(f"Password changed. {others} signed out; this one stays signed in.", "success")
    return redirect(url_for("portal.account"))


@bp.get("/account/sessions")
def account_sessions():
    return render_template(
        "portal/sessions.html",
        entries=_entries(),
        form=ConfirmForm(),
        user_tokens=tokens.list_user_tokens(current_user, now=utcnow()),
        token_form=ConfirmForm(),
        token_back=url_for("portal.account_sessions"),
    )


@bp.post("/account/sessions/<session_id>/revoke")
def revoke_session(session_id: str):
    if not ConfirmForm().validate_on_submit():
        abort(400)
    current_id = _current_id()
    try:
        row = sessions.revoke_session(
            user=current_user,
            public_id=session_id,
            actor=request_actor(),
            now=utcnow(),
            timeouts=timeouts(),
        )
    except NotFound:
        return _revoke_terminal(session_id)
    db.session.commit()
    if row.id == current_id:
        sign_out(reason="revoked")
        flash("You ended this session and are signed out.", "info")
        return redirect(url_for("auth.login"))
    flash(f"Session on {sessions.describe_device(row.user_agent)} ended.", "success")
    return redirect(url_for("portal.account_sessions"))


def _revoke_terminal(key_id: str):
    """A terminal sign-in (user access token) listed on the same page, ended the same way."""
    from app.device.routes import end_terminal  # the device blueprint owns terminals

    end_terminal(key_id)
    return redirect(url_for("portal.account_sessions"))


@bp.post("/account/sessions/revoke-others")
def revoke_other_sessions():
    if not ConfirmForm().validate_on_submit():
        abort(400)
    count = sessions.revoke_other_sessions(
        user=current_user, current_id=_current_id(), actor=request_actor(), now=utcnow()
    )
    db.session.commit()
    flash(f"Signed out {count} other session{'' if count == 1 else 's'}.", "success")
    return redirect(url_for("portal.account_sessions"))
