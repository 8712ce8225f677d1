"""Key actions shared by the portal (your own keys) and the admin pages (any key of the tenant)."""

from flask import abort, flash
from flask_wtf import FlaskForm

from app.clock import utcnow
from app.errors import Conflict
from app.extensions import db
from app.keys import service as keys
from app.models import ApiKey
from app.web_actor import request_actor


class ConfirmForm(FlaskForm):
    """A POST with only the CSRF token (revoke and deactivate buttons)."""


def revoke_and_flash(key: ApiKey) -> None:
    """A revoke button: check the form, revoke at once, commit, and say what happened."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        keys.revoke_key(key=key, now=utcnow(), actor=request_actor())
    except Conflict as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        db.session.commit()
        flash(f"Key “{key.name}” ({key.key_id}) is revoked. It no longer works.", "success")
