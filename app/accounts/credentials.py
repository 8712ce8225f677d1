"""A user's password over its life: change (knowing the current one), reset by a mailed
link, and set by an operator. Each ends sessions and writes an audit event (never a
password or token). The caller commits.

Reset tokens: 256 random bits, mailed once, stored only as SHA-256 (like invitations),
valid RESET_VALID_FOR and used once (a conditional UPDATE: of two concurrent uses exactly
one matches). Setting a new password in any way voids every other outstanding link.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update

from app import audit
from app.accounts import service as accounts
from app.accounts import sessions
from app.accounts.passwords import check_password_rules, hash_password, verify_password
from app.audit import Actor
from app.errors import InvalidInput
from app.extensions import db
from app.models import PasswordReset, User
from app.sso import service as sso

RESET_VALID_FOR = timedelta(hours=1)


class ResetUnusable(InvalidInput):
    """The reset link is unknown, used or expired (one answer for all: 410)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "This password reset link has expired or was already used. Ask for a new one.",
            field="token",
        )


SSO_ONLY = "{tenant} signs in through single sign-on: a password reset link cannot be used."


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_current_password(*, user: User, password: str) -> bool:
    ok, new_hash = verify_password(user.password_hash, password or "")
    if ok and new_hash:
        user.password_hash = new_hash
    return ok


def _set_password(*, user: User, password: str, now: datetime) -> None:
    user.password_hash = hash_password(password)
    # Links mailed before this change must not undo it.
    db.session.execute(
        update(PasswordReset)
        .where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )


def change_password(
    *,
    user: User,
    current_password: str,
    new_password: str,
    keep_session_id: int | None,
    actor: Actor,
    now: datetime,
) -> int:
    """Change a signed-in user's password; every other session ends. Returns how many."""
    if not check_current_password(user=user, password=current_password):
        raise InvalidInput("Your current password is not correct", field="current_password")
    check_password_rules(new_password, email=user.email)
    if check_current_password(user=user, password=new_password):
        raise InvalidInput("Choose a password different from the current one", field="password")
    _set_password(user=user, password=new_password, now=now)
    ended = sessions.end_user_sessions(
        user=user, except_id=keep_session_id, reason="password_changed", now=now
    )
    audit.record(
        "user.password_changed",
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        sessions_ended=ended,
    )
    return ended


def set_password_by_operator(*, email: str, password: str, actor: Actor, now: datetime) -> int:
    """`flask users set-password`: every session of the user ends. Returns how many."""
    user = accounts.get_user_by_email(email or "")
    if user is None:
        raise InvalidInput(f"No user with email {email}", field="email")
    _set_password(user=user, password=password, now=now)
    ended = sessions.end_user_sessions(user=user, reason="password_set", now=now)
    audit.record(
        "user.password_set",
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        sessions_ended=ended,
    )
    return ended


def request_reset(*, email: str, actor: Actor, now: datetime) -> tuple[User, str] | None:
    """A reset link for the active account with this address: (user, token), the token
    existing only in this return value. None for an unknown or deactivated address (the
    request is audited either way, outside any tenant for an unknown one)."""
    try:
        address = accounts.normalize_email(email)
    except InvalidInput:
        address = None
    user = accounts.get_user_by_email(address) if address else None
    if user is None or not user.is_active:
        audit.record(
            "user.password_reset_requested",
            actor=actor,
            now=now,
            tenant_id=user.tenant_id if user else None,
            target_type="user",
            target=(address or email or "")[:254],
            sent=False,
            reason="deactivated" if user else "unknown_account",
        )
        return None
    if not sso.password_sign_in_allowed(user):
        # A password would not let them in (their tenant enforces SSO), so no link: the page
        # still answers as for everyone, and the mailbox gets nothing to act on.
        audit.record(
            "user.password_reset_requested",
            actor=actor,
            now=now,
            tenant_id=user.tenant_id,
            target_type="user",
            target=user.email,
            sent=False,
            reason="sso_enforced",
        )
        return None
    token = secrets.token_urlsafe(32)
    db.session.add(
        PasswordReset(
            user_id=user.id,
            token_digest=token_digest(token),
            created_at=now,
            expires_at=now + RESET_VALID_FOR,
            requested_ip=actor.ip,
        )
    )
    db.session.flush()
    audit.record(
        "user.password_reset_requested",
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        sent=True,
        expires_at=now + RESET_VALID_FOR,
    )
    return user, token


def find_reset(*, token: str, now: datetime) -> PasswordReset:
    """The reset a token names, if it can still be used; ResetUnusable otherwise."""
    if not isinstance(token, str) or not sessions.TOKEN_RE.fullmatch(token):
        raise ResetUnusable()
    reset = db.session.execute(
        select(PasswordReset).where(PasswordReset.token_digest == token_digest(token))
    ).scalar_one_or_none()
    if (
        reset is None
        or reset.used_at is not None
        or reset.expires_at <= now
        or not reset.user.is_active
    ):
        raise ResetUnusable()
    if not sso.password_sign_in_allowed(reset.user):
        # A link mailed before the tenant turned enforcement on sets no password now.
        raise ResetUnusable(SSO_ONLY.format(tenant=reset.user.tenant.name))
    return reset


def complete_reset(*, token: str, password: str, actor: Actor, now: datetime) -> User:
    """Set the new password from a reset link; the link is spent and every session of the
    user ends."""
    reset = find_reset(token=token, now=now)
    user = reset.user
    check_password_rules(password, email=user.email)
    won = db.session.execute(
        update(PasswordReset)
        .where(
            PasswordReset.id == reset.id,
            PasswordReset.used_at.is_(None),
            PasswordReset.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:
        raise ResetUnusable()
    _set_password(user=user, password=password, now=now)
    ended = sessions.end_user_sessions(user=user, reason="password_reset", now=now)
    audit.record(
        "user.password_reset",
        actor=Actor("user", user.email, actor.ip, actor.user_agent),
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        sessions_ended=ended,
    )
    return user
