"""Leaked-key intake: a reported key that is genuine is revoked at once with reason "leaked".

The caller learns nothing (the API answers 202 whatever happens), so the report is no
oracle for guessing keys. Only a report carrying the full, correct secret revokes: knowing
a key's public id is not enough to revoke someone else's key.
"""

from __future__ import annotations

import hmac
from datetime import datetime

from sqlalchemy import select

from app.audit import Actor
from app.errors import Conflict, KeyInvalid
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import ApiKey

MAX_SOURCE_URL = 500


def report_leak(*, token: object, source_url: object, now: datetime, actor: Actor) -> bool:
    """Revoke the key if `token` is a genuine, not yet revoked key; True when it revoked one.

    Expired keys are marked leaked too, so their owners and admins see what happened.
    """
    if not isinstance(token, str):
        return False
    try:
        parsed = keyformat.parse(token.strip())
    except KeyInvalid:
        return False
    prefix = keys.key_prefix()
    if parsed.prefix not in (prefix, keyformat.user_token_prefix(prefix)):
        return False  # not a key of this Keydesk: refused before any lookup
    key = db.session.execute(
        select(ApiKey).where(ApiKey.key_id == parsed.key_id)
    ).scalar_one_or_none()
    expected = bytes(key.digest) if key is not None else bytes(32)
    genuine = hmac.compare_digest(keyformat.digest(keys.pepper(), parsed.secret), expected)
    if key is None or not genuine:
        return False
    if key.revoked_at is not None and key.revoked_at <= now:
        return False  # already revoked: nothing to do, and the answer is the same
    url = source_url[:MAX_SOURCE_URL] if isinstance(source_url, str) else None
    if url:  # a URL can carry the key itself (?token=...): never store a secret
        url = keyformat.TOKEN_RE.sub("[redacted key]", url).replace("\x00", "")
    try:
        keys.revoke_key(key=key, now=now, actor=actor, reason="leaked", details={"source_url": url})
    except Conflict:  # revoked concurrently
        return False
    return True
