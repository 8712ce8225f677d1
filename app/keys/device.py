"""Signing in from a terminal: the OAuth 2.0 device authorization grant (RFC 8628).

1. The CLI asks for a device code (`start`): it gets a secret device code to poll with and
   a short user code to show its user.
2. The user, signed in to the portal, enters the user code on /device and approves or
   denies (`find_pending`, `decide`).
3. The CLI polls the token endpoint (`exchange`) and, once approved, gets a user access
   token (app/keys/tokens.py) exactly once.

Both codes are stored only as HMAC-SHA256 digests under the key pepper: the user code has
about 35 bits, which a plain hash would not hide from someone holding a copy of the
database. Guessing user codes online is limited per account and per address on /device.
The caller commits, also after an OAuthError (polling state is kept).
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app import audit
from app.audit import Actor
from app.errors import Conflict, InvalidInput, KeydeskError
from app.extensions import db
from app.keys import format as keyformat
from app.keys import scopes as scope_rules
from app.keys import service as keys
from app.keys import tokens
from app.models import ApiKey, DeviceAuthorization, User

CLIENT_ID = "keydesk-cli"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 section 6.1: consonants only (no vowels, so no words; no I/O/0/1 look-alikes).
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
DEVICE_CODE_LENGTH = 43  # base62: 255 bits
CODE_LIFETIME = timedelta(minutes=10)
SLOW_DOWN_STEP = 5  # seconds added to the interval on each slow_down (RFC 8628 section 3.5)
MAX_INTERVAL = 120
MAX_CODE_INPUT = 200


class OAuthError(KeydeskError):
    """An RFC 6749 / RFC 8628 error answer: `error` is the code, str() the description."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        self.error = error
        self.status = status
        super().__init__(description)


def _digest(purpose: str, value: str) -> bytes:
    return hmac.digest(keys.pepper(), f"{purpose}:{value}".encode(), "sha256")


def normalize_user_code(text: object) -> str | None:
    """'bcdf-ghjk', 'BCDF GHJK' -> 'BCDFGHJK'; None when it cannot be a user code."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    code = "".join(ch for ch in text.upper() if ch not in "- \t")
    if len(code) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in code):
        return None
    return code


def format_user_code(code: str) -> str:
    half = USER_CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def poll_interval() -> int:
    return current_app.config["KEYDESK_DEVICE_POLL_INTERVAL"]


def check_client(client_id: str | None) -> None:
    if not client_id:
        raise OAuthError("invalid_request", "Missing parameter: client_id")
    if client_id != CLIENT_ID:
        raise OAuthError("invalid_client", f"Unknown client; the only client is {CLIENT_ID}")


def parse_scope(scope: str | None) -> list[str] | None:
    """The optional `scope` parameter: None (everything the user may grant) or known scopes."""
    if scope is None or not scope.strip():
        return None
    try:
        return scope_rules.normalize(scope.split())
    except InvalidInput as exc:
        raise OAuthError("invalid_scope", str(exc)) from None


def start(
    *,
    client_id: str | None,
    scope: str | None,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
) -> tuple[DeviceAuthorization, str, str]:
    """Begin a sign-in. Returns (row, device code, user code as XXXX-XXXX)."""
    check_client(client_id)
    requested = parse_scope(scope)
    device_code = keyformat.random_base62(DEVICE_CODE_LENGTH)
    for _attempt in range(5):
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
        row = DeviceAuthorization(
            device_code_digest=_digest("device_code", device_code),
            user_code_digest=_digest("user_code", user_code),
            client_id=CLIENT_ID,
            scopes=" ".join(requested) if requested is not None else None,
            status="pending",
            created_at=now,
            expires_at=now + CODE_LIFETIME,
            interval=poll_interval(),
            request_ip=(ip or "")[:64] or None,
            request_user_agent=(user_agent or "")[:300] or None,
        )
        try:
            with db.session.begin_nested():  # a user code seen before: draw another
                db.session.add(row)
        except IntegrityError:
            continue
        return row, device_code, format_user_code(user_code)
    raise Conflict("Could not allocate a user code; try again")


def find_pending(*, user_code: str, now: datetime) -> DeviceAuthorization | None:
    """The sign-in waiting for this (normalized) user code, or None."""
    row = db.session.execute(
        select(DeviceAuthorization).where(
            DeviceAuthorization.user_code_digest == _digest("user_code", user_code)
        )
    ).scalar_one_or_none()
    if row is None or row.status != "pending" or row.expires_at <= now:
        return None
    return row


def granted_scopes(authorization: DeviceAuthorization, user: User) -> list[str]:
    requested = authorization.scopes.split() if authorization.scopes is not None else None
    return tokens.token_scopes(user, requested)


def decide(
    *, authorization: DeviceAuthorization, user: User, approve: bool, now: datetime, actor: Actor
) -> None:
    """Approve or deny a pending sign-in as `user`. Conflict if it was decided or expired."""
    done = db.session.execute(
        update(DeviceAuthorization)
        .where(
            DeviceAuthorization.id == authorization.id,
            DeviceAuthorization.status == "pending",
            DeviceAuthorization.expires_at > now,
        )
        .values(status="approved" if approve else "denied", user_id=user.id, decided_at=now)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
        raise Conflict("This sign-in request was already answered or has expired")
    db.session.refresh(authorization)
    audit.record(
        "device.approved" if approve else "device.denied",
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="device",
        target=authorization.client_id,
        requested_from=authorization.request_ip,
        device=authorization.request_user_agent,
        scopes=granted_scopes(authorization, user) if approve else [],
    )


def exchange(
    *,
    grant_type: str | None,
    device_code: str | None,
    client_id: str | None,
    now: datetime,
    actor: Actor,
) -> tuple[ApiKey, str]:
    """The token endpoint: (token row, full user access token) once approved, else
    OAuthError with RFC 8628 section 3.5's code."""
    if not grant_type:
        raise OAuthError("invalid_request", "Missing parameter: grant_type")
    if grant_type != GRANT_TYPE:
        raise OAuthError("unsupported_grant_type", f"The only grant_type is {GRANT_TYPE}")
    check_client(client_id)
    if not device_code:
        raise OAuthError("invalid_request", "Missing parameter: device_code")
    unknown = OAuthError("invalid_grant", "Unknown or already used device_code")
    if len(device_code) > MAX_CODE_INPUT:
        raise unknown
    row = db.session.execute(
        select(DeviceAuthorization).where(
            DeviceAuthorization.device_code_digest == _digest("device_code", device_code)
        )
    ).scalar_one_or_none()
    if row is None or row.status == "exchanged" or row.client_id != client_id:
        raise unknown
    if row.expires_at <= now:
        raise OAuthError("expired_token", "The device code has expired; sign in again")
    if row.status == "denied":
        raise OAuthError("access_denied", "The sign-in request was denied")
    if row.status == "pending":
        too_soon = (
            row.last_polled_at is not None
            and (now - row.last_polled_at).total_seconds() < row.interval
        )
        row.last_polled_at = now
        if too_soon:
            row.interval = min(MAX_INTERVAL, row.interval + SLOW_DOWN_STEP)
            raise OAuthError(
                "slow_down", f"Polling too fast; wait {row.interval} seconds between requests"
            )
        raise OAuthError("authorization_pending", "Waiting for the user to approve")
    # Approved: exactly one exchange wins the row.
    won = db.session.execute(
        update(DeviceAuthorization)
        .where(DeviceAuthorization.id == row.id, DeviceAuthorization.status == "approved")
        .values(status="exchanged", last_polled_at=now)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:
        raise unknown
    db.session.refresh(row)
    user = row.user
    if user is None or not user.is_active:
        raise OAuthError("access_denied", "The account that approved this sign-in is disabled")
    token_row, full = tokens.issue_user_token(
        user=user,
        scopes=granted_scopes(row, user),
        now=now,
        actor=Actor("user", user.email, actor.ip, actor.user_agent),
        client_id=row.client_id,
    )
    row.api_key_id = token_row.id
    db.session.flush()
    return token_row, full
