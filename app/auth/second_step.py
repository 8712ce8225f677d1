"""Between the password and the second factor: who is half signed in.

After a right password for a user with a second factor, /login keeps only a short-lived
marker in the session (user id, a password fingerprint, time, where to go next) and sends the
browser to /login/2fa. Nobody is signed in until the second factor passes
(complete_sign_in). The marker expires after PENDING_SECONDS and after MAX_FAILURES wrong
codes, so a stolen password alone gives a bounded number of guesses per password entry.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from flask import session

from app.clock import to_unix
from app.extensions import db
from app.models import User

PENDING_KEY = "twofactor_pending"
PENDING_SECONDS = 5 * 60
MAX_FAILURES = 5


def start(user: User, *, next_url: str, now: datetime) -> None:
    # A fresh session: nothing from before the password step carries over.
    session.clear()
    session[PENDING_KEY] = {
        "uid": user.id,
        "v": _fingerprint(user),
        "email": user.email,
        "at": to_unix(now),
        "next": next_url,
        "fails": 0,
    }


def _fingerprint(user: User) -> str:
    """Changes when the password does (a change or reset since the password step ends the
    half sign-in); a few hex digits of a digest, never the hash itself, in the cookie."""
    return hashlib.sha256((user.password_hash or "").encode()).hexdigest()[:16]


def _marker() -> dict | None:
    marker = session.get(PENDING_KEY)
    return marker if isinstance(marker, dict) else None


def pending_user(*, now: datetime) -> User | None:
    """The half-signed-in user, or None when there is no marker, it is old, or the account
    changed (deactivated, password changed, 2FA reset) since the password step."""
    marker = _marker()
    if marker is None:
        return None
    started = marker.get("at")
    if not isinstance(started, int) or not 0 <= to_unix(now) - started <= PENDING_SECONDS:
        clear()
        return None
    uid = marker.get("uid")
    user = db.session.get(User, uid) if isinstance(uid, int) else None
    if user is None or not user.is_active or _fingerprint(user) != marker.get("v"):
        clear()
        return None
    return user


def pending_email() -> str:
    """For the per-account sign-in limit (the same key /login counts against)."""
    marker = _marker() or {}
    email = marker.get("email")
    return email if isinstance(email, str) else ""


def next_url() -> str | None:
    target = (_marker() or {}).get("next")
    return target if isinstance(target, str) else None


def count_failure() -> bool:
    """Record a wrong code; True when the marker is now spent (back to the password)."""
    marker = _marker()
    if marker is None:
        return True
    marker["fails"] = int(marker.get("fails", 0)) + 1
    if marker["fails"] >= MAX_FAILURES:
        clear()
        return True
    session[PENDING_KEY] = marker
    return False


def clear() -> None:
    session.pop(PENDING_KEY, None)
