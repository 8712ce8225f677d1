"""/invite/<token>: the public page where an invited person sets a password and joins."""

from flask import Blueprint, current_app, flash, redirect, render_template, url_for
from sqlalchemy.exc import IntegrityError

from app.accounts import members
from app.admin.forms import AcceptInviteForm
from app.auth.signin import complete_sign_in
from app.clock import utcnow
from app.errors import InvalidInput
from app.extensions import db, limiter
from app.net import client_ip
from app.web import NO_STORE
from app.web_actor import request_actor

bp = Blueprint("invites", __name__)


def _limit() -> str:
    return current_app.config["KEYDESK_LOGIN_RATE_LIMIT"]


@bp.route("/invite/<token>", methods=["GET", "POST"], endpoint="accept")
@limiter.limit(_limit, methods=["POST"], key_func=client_ip)
def accept(token: str):
    now = utcnow()
    try:
        invite = members.find_invite(token=token, now=now)
    except members.InviteUnusable as exc:
        return render_template("admin/invite_unusable.html", message=str(exc)), 410, NO_STORE
    form = AcceptInviteForm()
    if form.validate_on_submit():
        try:
            user = members.accept_invite(
                token=token,
                password=form.password.data,
                actor=request_actor(invite.email, "user"),
                now=now,
            )
        except members.InviteUnusable as exc:
            db.session.rollback()
            return render_template("admin/invite_unusable.html", message=str(exc)), 410, NO_STORE
        except InvalidInput as exc:
            db.session.rollback()
            if exc.field == "email":  # the address got an account since the invitation
                return _taken()
            form.password.errors.append(str(exc))
        else:
            try:
                db.session.commit()
            except IntegrityError:  # the same address registered at the same moment
                db.session.rollback()
                return _taken()
            # A fresh session: whoever was signed in here is signed out.
            complete_sign_in(user, method="invite")
            flash(f"Welcome to {user.tenant.name}! You are signed in as {user.email}.", "success")
            return redirect(url_for("portal.keys"))
    status = 400 if form.errors else 200
    html = render_template("admin/invite_accept.html", form=form, invite=invite)
    return html, status, NO_STORE


def _taken():
    # The same words whether the address has an account in this tenant or another: whoever
    # holds the link (without mail, the inviting admin) must not learn about other tenants.
    message = (
        "This invitation cannot create an account for this address. "
        "If you already have a Keydesk account, sign in instead."
    )
    return render_template("admin/invite_unusable.html", message=message), 409, NO_STORE
