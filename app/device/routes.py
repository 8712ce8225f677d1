"""/device: approve or deny a terminal sign-in (RFC 8628 user interaction), and
/account/tokens: the terminals signed in as you, each revocable."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from limits import parse as parse_limit
from wtforms import HiddenField, StringField
from wtforms.validators import Length, Optional

from app.auth.routes import safe_next
from app.auth.sudo import sudo_required
from app.clock import utcnow
from app.device import bp
from app.errors import Conflict, NotFound
from app.extensions import db, limiter
from app.keys import device, tokens
from app.keys.scopes import DESCRIPTIONS
from app.net import client_ip
from app.web import csrf_failed
from app.web_actor import request_actor

WRONG_CODE = "That code is not valid or has expired. Check the code your terminal shows."


class DeviceForm(FlaskForm):
    user_code = StringField(
        "Code shown in your terminal",
        validators=[Length(max=40)],
        render_kw={"autocomplete": "off", "autocapitalize": "characters", "spellcheck": "false"},
    )
    decision = HiddenField(validators=[Optional()])


class ConfirmForm(FlaskForm):
    pass


# --- user-code guessing: failed lookups per account and per address ---------------------


def _guess_keys() -> tuple[str, str]:
    return f"device-code-account:{current_user.id}", f"device-code-ip:{client_ip()}"


def _guess_limit():
    return parse_limit(current_app.config["KEYDESK_LOGIN_RATE_LIMIT"])


def _guesses_left() -> bool:
    item = _guess_limit()
    try:
        return all(limiter.limiter.test(item, key) for key in _guess_keys())
    except Exception:  # a limiter fault never blocks the page (as RATELIMIT_SWALLOW_ERRORS)
        current_app.logger.warning("device code limiter unavailable", exc_info=True)
        return True


def _count_wrong_guess() -> None:
    item = _guess_limit()
    try:
        for key in _guess_keys():
            limiter.limiter.hit(item, key)
    except Exception:
        current_app.logger.warning("device code limiter unavailable", exc_info=True)


# --- views --------------------------------------------------------------------------


@bp.route("/device", methods=["GET", "POST"], endpoint="enter_code")
@login_required
@sudo_required
def enter_code():
    form = DeviceForm()
    if request.method == "GET":
        form.user_code.data = (request.args.get("user_code") or "")[:40]
        return render_template("device/enter.html", form=form)
    if not form.validate_on_submit():
        if csrf_failed(form):
            abort(400)
        return render_template("device/enter.html", form=form), 400
    if not _guesses_left():
        form.user_code.errors.append("Too many wrong codes. Wait a minute and try again.")
        return render_template("device/enter.html", form=form), 429
    now = utcnow()
    code = device.normalize_user_code(form.user_code.data)
    authorization = device.find_pending(user_code=code, now=now) if code else None
    if authorization is None:
        _count_wrong_guess()
        form.user_code.errors.append(WRONG_CODE)
        return render_template("device/enter.html", form=form), 400
    decision = (form.decision.data or "").strip()
    if not decision:
        return _confirm_page(form, authorization, device.format_user_code(code))
    if decision not in ("approve", "deny"):
        form.user_code.errors.append("Choose approve or deny.")
        return _confirm_page(form, authorization, device.format_user_code(code), 400)
    try:
        device.decide(
            authorization=authorization,
            user=current_user,
            approve=decision == "approve",
            now=now,
            actor=request_actor(),
        )
    except Conflict as exc:
        db.session.rollback()
        form.user_code.errors.append(str(exc))
        return render_template("device/enter.html", form=form), 409
    db.session.commit()
    return render_template("device/done.html", approved=decision == "approve")


def _confirm_page(form: DeviceForm, authorization, user_code: str, status: int = 200):
    scopes = device.granted_scopes(authorization, current_user)
    page = render_template(
        "device/confirm.html",
        form=form,
        authorization=authorization,
        user_code=user_code,
        scopes=scopes,
        descriptions=DESCRIPTIONS,
        token_hours=current_app.config["KEYDESK_USER_TOKEN_HOURS"],
    )
    return page, status


@bp.get("/account/tokens")
@login_required
def user_tokens():
    now = utcnow()
    return render_template(
        "device/tokens.html",
        user_tokens=tokens.list_user_tokens(current_user, now=now),
        token_form=ConfirmForm(),
    )


def end_terminal(key_id: str) -> None:
    """End one of the signed-in user's terminal sign-ins and say so (404 if not theirs);
    also what /account/sessions/<id>/revoke does with a token's id."""
    try:
        tokens.revoke_user_token(
            user=current_user, key_id=key_id, now=utcnow(), actor=request_actor()
        )
    except NotFound:
        abort(404)
    except Conflict as exc:
        db.session.rollback()
        flash(str(exc), "info")
    else:
        db.session.commit()
        flash("That terminal is signed out.", "success")


@bp.post("/account/tokens/<key_id>/revoke")
@login_required
def revoke_user_token(key_id: str):
    form = ConfirmForm()
    if not form.validate_on_submit():
        abort(400)
    end_terminal(key_id)
    back = request.form.get("back")
    return redirect(safe_next(back) if back else url_for("device.user_tokens"))
