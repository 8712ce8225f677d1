"""Create once: a form that creates something (a key, a rotation, an invitation) carries a
one-time submission token, a random value drawn each time the form is rendered. The view
asks `already_done` before creating and calls `remember` in the same transaction as the
creation, so the same form submitted again (a reload of the reveal page, Back then
Forward) finds what it created instead of creating it again.

The token is no secret (it only names a form) but only its SHA-256 is stored, with the
name of what was made (`result`: a key id, the invited address), never a secret. The
unique digest is the race guard: of two submissions of one form at the same moment one
commits, the other's flush fails and it shows the winner's result.

A POST without a token (a script, an older page) creates as before: the token protects
people in a browser, it is not a credential.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from wtforms import HiddenField

from app.errors import InvalidInput
from app.extensions import db
from app.models import FormSubmission

FIELD = "submission"
# How long a form is remembered: long past any reload or Back/Forward; the person's older
# rows are dropped as new ones come, so the table stays small without a cleanup job.
REMEMBER_FOR = timedelta(days=30)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_field() -> HiddenField:
    """The hidden field for a FlaskForm; a fresh token whenever the form is built unsubmitted."""
    return HiddenField(default=new_token)


class AlreadySubmitted(Exception):
    """The token was used meanwhile (a concurrent submission of the same form won)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _checked(token: str | None) -> str | None:
    if not token:
        return None
    if not _TOKEN.fullmatch(token):
        raise InvalidInput("This form was altered: reload the page and try again", field=FIELD)
    return token


def already_done(*, token: str | None, user_id: int, purpose: str) -> FormSubmission | None:
    """What this form created before, or None (also for no token). InvalidInput for a
    token that is malformed or belongs to another person's or another kind of form."""
    token = _checked(token)
    if token is None:
        return None
    row = db.session.execute(
        select(FormSubmission).where(FormSubmission.token_digest == _digest(token))
    ).scalar_one_or_none()
    if row is not None and (row.user_id != user_id or row.purpose != purpose):
        raise InvalidInput("This form was already used: reload the page", field=FIELD)
    return row


def remember(*, token: str | None, user_id: int, purpose: str, result: str, now: datetime) -> None:
    """Record in the caller's transaction that this form created `result`.
    AlreadySubmitted when another submission of the same form got there first: the caller
    rolls back (creating nothing) and shows `already_done`'s answer."""
    token = _checked(token)
    if token is None:
        return
    row = FormSubmission(
        token_digest=_digest(token), user_id=user_id, purpose=purpose, result=result,
        created_at=now,
    )  # fmt: skip
    try:
        with db.session.begin_nested():
            db.session.add(row)
    except IntegrityError:
        raise AlreadySubmitted from None
    db.session.execute(
        delete(FormSubmission).where(
            FormSubmission.user_id == user_id, FormSubmission.created_at < now - REMEMBER_FOR
        )
    )
