"""Leaked-key intake: a reported key that is genuine is revoked at once with reason "leaked".

The caller learns nothing (the API answers 202 whatever happens), so the report is no
oracle for guessing keys. Only a report carrying the full, correct secret revokes: knowing
a key's public id is not enough to revoke someone else's key.
"""

from __future__ import annotations

import hmac
import html
import re
from datetime import datetime
from urllib.parse import unquote

from sqlalchemy import select

from app.audit import Actor
from app.errors import Conflict, KeyInvalid
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import ApiKey

MAX_SOURCE_URL = 500
# Enough for any nesting a scanner or an attacker produces (kd%255F… is two levels).
MAX_DECODE_ROUNDS = 8
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TRAILING_WORD = re.compile(r"[0-9A-Za-z_]+$")


def clean_source_url(source_url: object, *, secret: str) -> str | None:
    """The reported URL as it can be stored: no encoding of a key survives.

    Percent-encoding and HTML entities are undone until nothing changes (kd%5F…, kd%255F…,
    kd&#95;…), then anything shaped like a key and the reported secret itself (wherever it
    stands) are redacted. The decoded text is what is kept: storing the original would keep
    whatever encoding the redaction did not see. Cut to MAX_SOURCE_URL only afterwards, and
    a word the cut splits is dropped, so that no fragment of a secret is left either.
    """
    if not isinstance(source_url, str):
        return None
    text = source_url
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = html.unescape(unquote(text, errors="replace"))
        if decoded == text:
            break
        text = decoded
    text = _CONTROL.sub("", text)
    text = keyformat.TOKEN_RE.sub("[redacted key]", text)
    text = text.replace(secret, "[redacted]")
    if len(text) > MAX_SOURCE_URL:
        text = _TRAILING_WORD.sub("", text[:MAX_SOURCE_URL])
    return text or None


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
    # A URL can carry the key itself (?token=..., encoded or not): never store a secret.
    url = clean_source_url(source_url, secret=parsed.secret)
    try:
        keys.revoke_key(key=key, now=now, actor=actor, reason="leaked", details={"source_url": url})
    except Conflict:  # revoked concurrently
        return False
    return True
