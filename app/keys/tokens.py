"""User access tokens: what a terminal sign-in (app/keys/device.py) hands the CLI.

A token is a row of api_keys with kind "user_token", user and tenant set, so the hot path
(app/keys/authn.py), revocation, leak reports and any cache invalidation that follows
api_keys writes cover it unchanged. It differs from a user key in three ways:
- its prefix is the key prefix plus "u" (`kdu_...`), so it is told apart without a lookup;
- it lives KEYDESK_USER_TOKEN_HOURS and carries every scope its user may grant;
- it is a sign-in, not a key: listed and ended with the user's sessions
  (/account/sessions), never in key lists, inventories or expiry reminders.
The caller commits.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import ColumnElement, or_, select, update

from app import audit
from app.accounts import policy
from app.audit import Actor
from app.errors import Conflict, KeyInvalid, NotFound
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import ApiKey, DeviceAuthorization, User

USER_TOKEN = keys.USER_TOKEN
TOKEN_NAME = "keydesk-cli"  # noqa: S105  (a client name)


def is_api_key() -> ColumnElement[bool]:
    """SQL condition: a user or client key, not a user access token (for key lists)."""
    return ApiKey.kind != USER_TOKEN


def token_lifetime() -> timedelta:
    return timedelta(hours=current_app.config["KEYDESK_USER_TOKEN_HOURS"])


def token_scopes(user: User, requested: Iterable[str] | None = None) -> list[str]:
    """Every scope the user may grant (tenant policy for members), narrowed to `requested`."""
    grantable = policy.grantable_scopes(user.tenant, user)
    if requested is None:
        return grantable
    wanted = set(requested)
    return [s for s in grantable if s in wanted]


def issue_user_token(
    *, user: User, scopes: list[str], now: datetime, actor: Actor, client_id: str = TOKEN_NAME
) -> tuple[ApiKey, str]:
    """Mint a user access token. Returns (row, full token); the token exists only here."""
    key_id, secret = keyformat.new_key_id(), keyformat.new_secret()
    row = ApiKey(
        key_id=key_id,
        digest=keyformat.digest(keys.pepper(), secret),
        name=client_id,
        kind=USER_TOKEN,
        tenant_id=user.tenant_id,
        user_id=user.id,
        scopes=" ".join(scopes),
        created_at=now,
        created_by=actor.label,
        expires_at=now + token_lifetime(),
    )
    db.session.add(row)
    db.session.flush()
    audit.record(
        "user_token.issued",
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="user_token",
        target=row.key_id,
        owner=user.email,
        client=client_id,
        scopes=scopes,
        expires_at=row.expires_at,
    )
    full = keyformat.assemble(keyformat.user_token_prefix(keys.key_prefix()), key_id, secret)
    return row, full


@dataclass
class UserTokenRow:
    """One signed-in terminal, for /account/sessions."""

    key: ApiKey
    device: str | None  # the user agent that asked for it
    requested_from: str | None  # the address that asked for it
    status: str  # active | expiring | expired | revoked

    @property
    def id(self) -> str:
        return self.key.key_id


def list_user_tokens(
    user: User, *, now: datetime, include_ended: bool = False
) -> list[UserTokenRow]:
    """The user's user access tokens, newest first; by default only those that still work."""
    stmt = (
        select(ApiKey, DeviceAuthorization.request_user_agent, DeviceAuthorization.request_ip)
        .outerjoin(DeviceAuthorization, DeviceAuthorization.api_key_id == ApiKey.id)
        .where(ApiKey.user_id == user.id, ApiKey.kind == USER_TOKEN)
        .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    )
    if not include_ended:
        stmt = stmt.where(
            or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > now), ApiKey.expires_at > now
        )
    return [
        UserTokenRow(key=key, device=agent, requested_from=ip, status=keys.status_of(key, now))
        for key, agent, ip in db.session.execute(stmt).all()
    ]


def get_user_token(*, user: User, key_id: str) -> ApiKey:
    token = db.session.execute(
        select(ApiKey).where(
            ApiKey.key_id == key_id, ApiKey.user_id == user.id, ApiKey.kind == USER_TOKEN
        )
    ).scalar_one_or_none()
    if token is None:
        raise NotFound("No such sign-in")
    return token


def revoke_user_token(*, user: User, key_id: str, now: datetime, actor: Actor) -> ApiKey:
    """End one of the user's tokens at its next request. NotFound for anything not theirs,
    Conflict when it had already ended."""
    token = get_user_token(user=user, key_id=key_id)
    done = db.session.execute(
        update(ApiKey)
        .where(ApiKey.id == token.id, ApiKey.revoked_at.is_(None), ApiKey.expires_at > now)
        .values(revoked_at=now, revoke_reason="revoked", revoked_by=actor.label)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
        raise Conflict("This sign-in has already ended")
    db.session.refresh(token)
    audit.record(
        "user_token.revoked",
        actor=actor,
        now=now,
        tenant_id=token.tenant_id,
        target_type="user_token",
        target=token.key_id,
        owner=user.email,
    )
    return token


def end_user_tokens(user: User, *, now: datetime, reason: str, actor: Actor | None = None) -> int:
    """End every working token of `user` (password change or reset, deactivation, "end all
    sessions"); returns how many. One audit event when any ended."""
    ended = db.session.execute(
        update(ApiKey)
        .where(
            ApiKey.user_id == user.id,
            ApiKey.kind == USER_TOKEN,
            ApiKey.revoked_at.is_(None),
            ApiKey.expires_at > now,
        )
        .values(
            revoked_at=now, revoke_reason=reason[:32], revoked_by=(actor or Actor.system()).label
        )
        .returning(ApiKey.key_id)
        .execution_options(synchronize_session=False)
    ).all()
    if ended:
        audit.record(
            "user_token.ended",
            actor=actor or Actor.system(),
            now=now,
            tenant_id=user.tenant_id,
            target_type="user",
            target=user.email,
            reason=reason,
            tokens=sorted(key_id for (key_id,) in ended),
        )
    return len(ended)


def revoke_presented_token(*, token: object, now: datetime, actor: Actor) -> bool:
    """Sign out with the token itself (RFC 7009, `keydesk logout`). True when it ended one.

    Only the full, correct token ends it; anything else changes nothing and, as RFC 7009
    asks, gets the same answer from the endpoint (no oracle for guessing tokens).
    """
    if not isinstance(token, str):
        return False
    try:
        parsed = keyformat.parse(token.strip())
    except KeyInvalid:
        return False
    if parsed.prefix != keyformat.user_token_prefix(keys.key_prefix()):
        return False
    row = db.session.execute(
        select(ApiKey).where(ApiKey.key_id == parsed.key_id, ApiKey.kind == USER_TOKEN)
    ).scalar_one_or_none()
    expected = bytes(row.digest) if row is not None else bytes(32)
    genuine = hmac.compare_digest(keyformat.digest(keys.pepper(), parsed.secret), expected)
    if row is None or not genuine or row.user is None:
        return False
    try:
        revoke_user_token(
            user=row.user,
            key_id=row.key_id,
            now=now,
            actor=Actor("user", row.user.email, actor.ip, actor.user_agent),
        )
    except Conflict:
        return False
    return True
