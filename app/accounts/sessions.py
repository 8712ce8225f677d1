"""Server-side sign-in sessions: start, find, touch, renew, end, list. The caller commits.

The browser's cookie carries a random 256-bit token; the database keeps only its SHA-256
(a high-entropy token needs no slow or keyed hash), so a database reader cannot ride a
session. A session counts as signed in only while its row says so: not ended, seen within
the idle timeout, younger than the absolute timeout. Ending a row therefore ends the
session at its next request wherever its cookie was copied to.

`end_user_sessions` is the one function that ends everything a user is signed in with
(password change and reset, deactivation, `users set-password`); `list_user_sessions` is
what /account/sessions shows. Other kinds of sign-in (user access tokens) join both.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from app import audit
from app.audit import Actor
from app.errors import NotFound
from app.extensions import db
from app.models import User, UserSession

# What secrets.token_urlsafe(32) produces; anything else is no token of ours.
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# last_seen_at is written at most this often per session (never a write per request).
TOUCH_EVERY = timedelta(minutes=1)
# Ended and timed-out rows are kept this long for the record, then pruned at sign-in.
KEEP_ENDED = timedelta(days=30)


@dataclass(frozen=True)
class Timeouts:
    idle: timedelta
    absolute: timedelta

    @classmethod
    def from_config(cls, config) -> Timeouts:
        return cls(
            idle=timedelta(minutes=config["KEYDESK_SESSION_IDLE_MINUTES"]),
            absolute=timedelta(hours=config["KEYDESK_SESSION_MAX_HOURS"]),
        )


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _live(now: datetime, timeouts: Timeouts):
    """SQL condition: the session still signs its user in."""
    return (
        UserSession.ended_at.is_(None)
        & (UserSession.last_seen_at > now - timeouts.idle)
        & (UserSession.created_at > now - timeouts.absolute)
    )


def is_live(row: UserSession, *, now: datetime, timeouts: Timeouts) -> bool:
    return (
        row.ended_at is None
        and row.last_seen_at > now - timeouts.idle
        and row.created_at > now - timeouts.absolute
    )


def start_session(
    *, user: User, method: str, ip: str | None, user_agent: str | None, now: datetime
) -> tuple[UserSession, str]:
    """A new session for `user`, in sudo mode from the start. Returns (row, token); the token
    exists only in this return value (and the cookie)."""
    _prune(user=user, now=now)
    token = secrets.token_urlsafe(32)
    row = UserSession(
        public_id=secrets.token_hex(10),
        digest=token_digest(token),
        user_id=user.id,
        method=method[:32],
        created_at=now,
        last_seen_at=now,
        ip=ip,
        user_agent=(user_agent or None) and user_agent[:300],
        sudo_at=now,
    )
    db.session.add(row)
    db.session.flush()
    return row, token


def _prune(*, user: User, now: datetime) -> None:
    """Forget this user's sessions that ended long ago (the audit log keeps what matters)."""
    cutoff = now - KEEP_ENDED
    db.session.execute(
        UserSession.__table__.delete().where(
            UserSession.user_id == user.id,
            or_(UserSession.ended_at < cutoff, UserSession.last_seen_at < cutoff),
        )
    )


def find_live(*, token: str, now: datetime, timeouts: Timeouts) -> UserSession | None:
    """The live session a cookie token belongs to, with its (active) user loaded; one
    indexed query. None for an unknown, ended or timed-out session."""
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        return None
    found = db.session.execute(
        select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.digest == token_digest(token))
    ).first()
    if found is None:
        return None
    row, user = found
    if not is_live(row, now=now, timeouts=timeouts) or not user.is_active:
        return None
    return row


def touch(*, session_id: int, ip: str | None, now: datetime) -> None:
    """Record that the session was used: a conditional UPDATE, at most once a minute, and
    never of an ended session (a request racing a revoke must not revive anything)."""
    db.session.execute(
        update(UserSession)
        .where(
            UserSession.id == session_id,
            UserSession.ended_at.is_(None),
            UserSession.last_seen_at <= now - TOUCH_EVERY,
        )
        .values(last_seen_at=now, ip=ip)
        .execution_options(synchronize_session=False)
    )


def needs_touch(row: UserSession, now: datetime) -> bool:
    return row.last_seen_at <= now - TOUCH_EVERY


def renew(*, row: UserSession, now: datetime, sudo: bool = False) -> str:
    """A new token for the same session (the old cookie stops working): no fixation across
    a re-authentication. With sudo=True sudo mode starts again."""
    token = secrets.token_urlsafe(32)
    row.digest = token_digest(token)
    row.last_seen_at = now
    if sudo:
        row.sudo_at = now
    db.session.flush()
    return token


def in_sudo_mode(row: UserSession | None, *, now: datetime, window: timedelta) -> bool:
    return row is not None and row.sudo_at is not None and row.sudo_at > now - window


def end_session(*, row: UserSession, reason: str, now: datetime) -> bool:
    """End one session. False when it had ended already."""
    done = db.session.execute(
        update(UserSession)
        .where(UserSession.id == row.id, UserSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason[:32])
        .execution_options(synchronize_session=False)
    )
    db.session.expire(row)
    return done.rowcount == 1


def end_user_sessions(
    *, user: User, except_id: int | None = None, reason: str, now: datetime
) -> int:
    """End every session of `user` but `except_id` (the one making the change, if any), at
    once. Returns how many ended. The one place that signs a user out everywhere: user
    access tokens end here too."""
    query = update(UserSession).where(
        UserSession.user_id == user.id, UserSession.ended_at.is_(None)
    )
    if except_id is not None:
        query = query.where(UserSession.id != except_id)
    done = db.session.execute(
        query.values(ended_at=now, end_reason=reason[:32]).execution_options(
            synchronize_session=False
        )
    )
    # Terminal sign-ins (user access tokens) end with the browser sessions. A late import:
    # app.keys imports the accounts package.
    from app.keys.tokens import end_user_tokens

    end_user_tokens(user, now=now, reason=reason)
    return done.rowcount


@dataclass(frozen=True)
class SessionEntry:
    """One line of /account/sessions: a browser session (or, later, a user access token)."""

    id: str  # public id, used in /account/sessions/<id>/revoke
    kind: str  # "browser"
    device: str
    user_agent: str | None
    ip: str | None
    signed_in_at: datetime
    last_seen_at: datetime | None
    current: bool


def list_user_sessions(
    *, user: User, now: datetime, timeouts: Timeouts, current_id: int | None
) -> list[SessionEntry]:
    """Everything `user` is signed in with right now, the current session first."""
    rows = db.session.execute(
        select(UserSession)
        .where(UserSession.user_id == user.id, _live(now, timeouts))
        .order_by(UserSession.last_seen_at.desc(), UserSession.id.desc())
    ).scalars()
    entries = [
        SessionEntry(
            id=row.public_id,
            kind="browser",
            device=describe_device(row.user_agent),
            user_agent=row.user_agent,
            ip=row.ip,
            signed_in_at=row.created_at,
            last_seen_at=row.last_seen_at,
            current=row.id == current_id,
        )
        for row in rows
    ]
    return sorted(entries, key=lambda entry: not entry.current)


def revoke_session(
    *, user: User, public_id: str, actor: Actor, now: datetime, timeouts: Timeouts
) -> UserSession:
    """End one of `user`'s live sessions by its public id; NotFound for anything else
    (another user's session, an ended one, junk)."""
    if not isinstance(public_id, str) or not 1 <= len(public_id) <= 32:
        raise NotFound("No such session")
    row = db.session.execute(
        select(UserSession).where(
            UserSession.public_id == public_id,
            UserSession.user_id == user.id,
            _live(now, timeouts),
        )
    ).scalar_one_or_none()
    if row is None or not end_session(row=row, reason="revoked", now=now):
        raise NotFound("No such session")
    audit.record(
        "session.revoked",
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        session=public_id,
        device=describe_device(row.user_agent),
    )
    return row


def revoke_other_sessions(
    *, user: User, current_id: int | None, actor: Actor, now: datetime
) -> int:
    count = end_user_sessions(user=user, except_id=current_id, reason="revoked", now=now)
    audit.record(
        "session.revoked_others",
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        count=count,
    )
    return count


_BROWSERS = (
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
)
_SYSTEMS = (
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("Macintosh", "macOS"),
    ("Linux", "Linux"),
)


def describe_device(user_agent: str | None) -> str:
    """ "Firefox on Linux" from a User-Agent header; a rough label for people, not a
    security decision (the header is whatever the client sent)."""
    agent = user_agent or ""
    browser = next((name for token, name in _BROWSERS if token in agent), None)
    system = next((name for token, name in _SYSTEMS if token in agent), None)
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or "Unknown device"
