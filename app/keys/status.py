"""The one truth about a key's state: its status and its effective end of life.

A key stops working at whichever comes first: its expiry (`expires_at`) or the end of
its rotation grace period / its revocation (`revoked_at`). That moment is the key's
effective end of life: the `expires_at` of every JSON answer, the "Expires" of every
page, what the reminder email names and what the "a key cannot create a key that
outlives it" rule compares with.

Statuses (SPEC's words): `rotated` from the moment a key is rotated (it may still work
until its grace ends, see `is_working`), `revoked` / `leaked` once revoked, `expired`,
`expiring` (working and its end within EXPIRING_WITHIN), `active`.

`status_of` decides for a loaded row; the SQL conditions below say the same for the key
inventory, the reminders and the member counts, and tests hold the two to each other.
The API hot path (app/keys/authn.py) decides "does it work" from its one row with the
same rule: revoked_at in the past stops a key, in the future is a grace period.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import ColumnElement, and_, or_

from app.models import ApiKey

EXPIRING_WITHIN = timedelta(days=7)
STATUSES = ("active", "expiring", "expired", "revoked", "rotated", "leaked")
WORKING = ("active", "expiring")  # statuses of keys that authenticate and can be changed

T = TypeVar("T", datetime, int)


def effective_end(expires_at: T | None, revoked_at: T | None) -> T | None:
    """The earlier of expiry and revocation / grace end (None: neither). Works on aware
    datetimes and on Unix seconds alike (the hot path's KeyContext holds seconds)."""
    if expires_at is None:
        return revoked_at
    if revoked_at is None:
        return expires_at
    return min(expires_at, revoked_at)


def end_of(key: ApiKey) -> datetime | None:
    return effective_end(key.expires_at, key.revoked_at)


def status_of(key: ApiKey, now: datetime) -> str:
    """active | expiring | expired | revoked | rotated | leaked."""
    if key.revoked_at is not None:
        if key.revoke_reason == "rotated":
            return "rotated"  # in its grace period or past it
        if key.revoked_at <= now:
            return "leaked" if key.revoke_reason == "leaked" else "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    end = end_of(key)
    if end is not None and end - now <= EXPIRING_WITHIN:
        return "expiring"
    return "active"


def is_working(key: ApiKey, now: datetime) -> bool:
    """Does the key authenticate right now (a rotated key does until its grace ends)?"""
    end = end_of(key)
    return end is None or end > now


# --- the same rules as SQL ----------------------------------------------------------------


def _not_stopped(now: datetime) -> ColumnElement[bool]:
    """Not (yet) revoked: never revoked, or rotated and still in its grace period."""
    return or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > now)


def _not_expired(now: datetime) -> ColumnElement[bool]:
    return or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)


def _not_rotated() -> ColumnElement[bool]:
    return or_(
        ApiKey.revoked_at.is_(None),
        ApiKey.revoke_reason.is_(None),
        ApiKey.revoke_reason != "rotated",
    )


def working(now: datetime) -> ColumnElement[bool]:
    """Keys that authenticate right now (is_working). User access tokens are sign-ins, not
    keys: never counted, reminded of or bulk-revoked as keys (app/keys/tokens.py)."""
    return and_(_not_stopped(now), _not_expired(now), ApiKey.kind != "user_token")


def ends_by(moment: datetime) -> ColumnElement[bool]:
    """The effective end of life is at or before `moment`."""
    return or_(ApiKey.expires_at <= moment, ApiKey.revoked_at <= moment)


def needs_renewal(now: datetime, within: timedelta) -> ColumnElement[bool]:
    """Working keys nobody rotated yet whose end lies within `within`: what the banner,
    the reminder email and the `expiring_within_days` filter count (with within =
    EXPIRING_WITHIN, exactly the keys of status `expiring`)."""
    return and_(working(now), _not_rotated(), ends_by(now + within))


def status_condition(status: str, now: datetime) -> ColumnElement[bool]:
    """SQL for `status_of(key, now) == status`."""
    stopped = ApiKey.revoked_at <= now
    if status == "rotated":
        return and_(ApiKey.revoked_at.is_not(None), ApiKey.revoke_reason == "rotated")
    if status == "leaked":
        return and_(stopped, ApiKey.revoke_reason == "leaked")
    if status == "revoked":
        return and_(
            stopped,
            or_(ApiKey.revoke_reason.is_(None), ApiKey.revoke_reason.not_in(["rotated", "leaked"])),
        )
    if status == "expired":
        return and_(_not_stopped(now), _not_rotated(), ApiKey.expires_at <= now)
    if status == "expiring":
        return needs_renewal(now, EXPIRING_WITHIN)
    if status == "active":
        soon = now + EXPIRING_WITHIN
        return and_(
            _not_rotated(),
            or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > soon),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > soon),
        )
    raise ValueError(f"unknown status {status!r}")
