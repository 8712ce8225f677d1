"""Issuing, rotating and revoking keys, and the status rules. The caller commits.

State changes that can race (revoke vs rotate, double revoke) are single
conditional UPDATEs: the row that matched wins, the other caller gets Conflict.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select, update

from app import audit
from app.accounts import policy
from app.audit import Actor
from app.errors import Conflict, InvalidInput, NotFound
from app.extensions import db
from app.keys import format as keyformat
from app.keys import scopes as scope_rules
from app.models import ApiKey, User

EXPIRING_WITHIN = timedelta(days=7)
MAX_EXPIRY_DAYS = 3650
MAX_GRACE_HOURS = 168
# User access tokens live in api_keys too (app/keys/tokens.py) but are no user's keys.
USER_TOKEN = "user_token"  # noqa: S105  (a kind, not a secret)


def pepper() -> bytes:
    return current_app.config["KEYDESK_KEY_PEPPER"].encode()


def key_prefix() -> str:
    return current_app.config["KEYDESK_KEY_PREFIX"]


def status_of(key: ApiKey, now: datetime) -> str:
    """active | expiring | expired | revoked | rotated | leaked (SPEC's words)."""
    if key.revoked_at is not None and key.revoked_at <= now:
        if key.revoke_reason in ("rotated", "leaked"):
            return key.revoke_reason
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    if key.revoked_at is not None:  # rotated, still in its grace period
        return "expiring"
    if key.expires_at is not None and key.expires_at - now <= EXPIRING_WITHIN:
        return "expiring"
    return "active"


def validate_name(name: str | None) -> str:
    name = (name or "").strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInput("Name must be 1 to 100 characters", field="name")
    if any(ord(c) < 32 for c in name):
        raise InvalidInput("Name must not contain control characters", field="name")
    return name


def validate_expiry_days(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int):
        raise InvalidInput(
            "expires_in_days must be a whole number of days", field="expires_in_days"
        )
    if not 0 <= days <= MAX_EXPIRY_DAYS:
        raise InvalidInput(
            f"expires_in_days must be between 0 (never) and {MAX_EXPIRY_DAYS}",
            field="expires_in_days",
        )
    return days


def _new_row(**fields) -> tuple[ApiKey, str]:
    key_id, secret = keyformat.new_key_id(), keyformat.new_secret()
    row = ApiKey(key_id=key_id, digest=keyformat.digest(pepper(), secret), **fields)
    return row, keyformat.assemble(key_prefix(), key_id, secret)


def issue_key(
    *,
    user: User,
    name: str,
    scopes: Iterable[str],
    expires_in_days: int,
    now: datetime,
    actor: Actor,
    granting_scopes: Iterable[str] | None = None,
    allowed_ips: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a user key. Returns (row, full key); the full key exists only in this return.

    granting_scopes: when an API key creates a key, the caller's scopes; the new
    key's scopes must be a subset of them.
    """
    name = validate_name(name)
    scope_list = scope_rules.normalize(scopes)
    expires_in_days = validate_expiry_days(expires_in_days)
    if granting_scopes is not None:
        refused = scope_rules.missing(granting_scopes, scope_list)
        if refused:
            raise InvalidInput(
                "A key can only create keys with a subset of its own scopes; not held: "
                + ", ".join(refused),
                field="scopes",
            )
    policy.check_new_key(
        tenant=user.tenant, user=user, scopes=scope_list, expires_in_days=expires_in_days
    )
    row, full_key = _new_row(
        name=name,
        kind="user",
        tenant_id=user.tenant_id,
        user_id=user.id,
        scopes=" ".join(scope_list),
        allowed_ips=allowed_ips,
        created_at=now,
        created_by=actor.label,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    db.session.add(row)
    db.session.flush()
    audit.record(
        "key.issued",
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="key",
        target=row.key_id,
        name=name,
        owner=user.email,
        scopes=scope_list,
        expires_at=row.expires_at,
    )
    return row, full_key


ANY_ADDRESS = "0.0.0.0/0 ::/0"


def lifetime_days_of(key: ApiKey) -> int:
    """Whole days from creation to expiry (0 = never): what a rotation gives the successor."""
    if key.expires_at is None:
        return 0
    return max(1, round((key.expires_at - key.created_at).total_seconds() / 86400))


def limit_to_parent(
    *,
    parent_allowed_ips: str | None,
    parent_expires_at: int | None,
    allowed_ips: str | None,
    expires_in_days: int,
    now: datetime,
) -> str | None:
    """A key that creates (or rotates) a key cannot hand out more than it has itself:
    the new key's addresses lie within the creating key's allow-list (inherited when not
    given) and it expires no later than the creating key. Returns the allow-list to use."""
    if parent_expires_at is not None:
        limit = datetime.fromtimestamp(parent_expires_at, now.tzinfo)
        if expires_in_days == 0 or now + timedelta(days=expires_in_days) > limit:
            raise InvalidInput(
                "A key that expires can only create keys that expire no later than itself"
                f" (at most {max(0, (limit - now).days)} days from now)",
                field="expires_in_days",
            )
    if not parent_allowed_ips:
        return allowed_ips
    if allowed_ips is None:
        return parent_allowed_ips
    parents = [ipaddress.ip_network(n) for n in parent_allowed_ips.split()]
    for net in map(ipaddress.ip_network, allowed_ips.split()):
        if not any(net.version == p.version and net.subnet_of(p) for p in parents):
            raise InvalidInput(
                f"allowed_ips: {net} is outside the creating key's allow-list",
                field="allowed_ips",
            )
    return allowed_ips


def issue_client_key(*, name: str, now: datetime, actor: Actor) -> tuple[ApiKey, str]:
    """A platform key: no owner, no tenant, unscoped access to every tenant."""
    row, full_key = _new_row(
        name=validate_name(name),
        kind="client",
        scopes="",
        created_at=now,
        created_by=actor.label,
    )
    db.session.add(row)
    db.session.flush()
    audit.record(
        "client_key.issued",
        actor=actor,
        now=now,
        target_type="key",
        target=row.key_id,
        name=row.name,
    )
    return row, full_key


def revoke_key(
    *,
    key: ApiKey,
    now: datetime,
    actor: Actor,
    reason: str = "revoked",
    details: dict | None = None,
) -> None:
    """Revoke at once (also ends a rotation grace period). Conflict if already revoked.

    details: extra fields for the audit event (e.g. a leak report's source_url).
    """
    result = db.session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id)
        .where(or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > now))
        .values(revoked_at=now, revoke_reason=reason, revoked_by=actor.label)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise Conflict("This key is already revoked")
    db.session.refresh(key)
    audit.record(
        "key.leaked" if reason == "leaked" else "key.revoked",
        actor=actor,
        now=now,
        tenant_id=key.tenant_id,
        target_type="key",
        target=key.key_id,
        name=key.name,
        reason=reason,
        **(details or {}),
    )


def rotate_key(*, key: ApiKey, grace_hours: int, now: datetime, actor: Actor) -> tuple[ApiKey, str]:
    """Issue a successor with the same name, scopes, owner and lifetime; the old key keeps
    working for grace_hours, then reads `rotated`. Conflict if it was rotated or revoked."""
    if (
        isinstance(grace_hours, bool)
        or not isinstance(grace_hours, int)
        or not (0 <= grace_hours <= MAX_GRACE_HOURS)
    ):
        raise InvalidInput(
            f"grace_hours must be a whole number from 0 to {MAX_GRACE_HOURS}", field="grace_hours"
        )
    if key.user is None:
        raise InvalidInput("Client keys are rotated from the command line")
    if status_of(key, now) in ("revoked", "rotated", "leaked", "expired") or key.revoked_at:
        raise Conflict("Only an active key can be rotated")
    lifetime_days = lifetime_days_of(key)
    user = key.user
    policy.check_new_key(
        tenant=user.tenant, user=user, scopes=key.scope_list, expires_in_days=lifetime_days
    )
    new_row, full_key = _new_row(
        name=key.name,
        kind="user",
        tenant_id=key.tenant_id,
        user_id=key.user_id,
        scopes=key.scopes,
        allowed_ips=key.allowed_ips,
        created_at=now,
        created_by=actor.label,
        expires_at=now + timedelta(days=lifetime_days) if lifetime_days else None,
        rotated_from=key.key_id,
    )
    # The conditional UPDATE is the race guard: of two concurrent rotations
    # (or a rotation and a revocation) exactly one matches the row.
    result = db.session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
        .values(
            revoked_at=now + timedelta(hours=grace_hours),
            revoke_reason="rotated",
            revoked_by=actor.label,
            rotated_to=new_row.key_id,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise Conflict("This key was already rotated or revoked")
    db.session.add(new_row)
    db.session.flush()
    db.session.refresh(key)
    audit.record(
        "key.rotated",
        actor=actor,
        now=now,
        tenant_id=key.tenant_id,
        target_type="key",
        target=key.key_id,
        name=key.name,
        new_key=new_row.key_id,
        grace_hours=grace_hours,
    )
    return new_row, full_key


def set_allowed_ips(*, key: ApiKey, allowed_ips: str | None, now: datetime, actor: Actor) -> None:
    """Replace the key's IP allow-list (already validated; None: any address). Audited."""
    if status_of(key, now) in ("revoked", "rotated", "leaked", "expired"):
        raise Conflict("Only an active key's allow-list can be changed")
    before = key.allowed_ips
    if before == allowed_ips:
        return
    key.allowed_ips = allowed_ips
    db.session.flush()
    audit.record(
        "key.allowed_ips_changed",
        actor=actor,
        now=now,
        tenant_id=key.tenant_id,
        target_type="key",
        target=key.key_id,
        name=key.name,
        before=before.split() if before else [],
        after=allowed_ips.split() if allowed_ips else [],
    )


def get_user_key(*, user: User, key_id: str) -> ApiKey:
    """One of the user's own keys; NotFound for anything else (other users, other tenants)."""
    key = db.session.execute(
        select(ApiKey).where(
            ApiKey.key_id == key_id, ApiKey.user_id == user.id, ApiKey.kind != USER_TOKEN
        )
    ).scalar_one_or_none()
    if key is None:
        raise NotFound("No such key")
    return key


def get_tenant_key(*, tenant_id: int, key_id: str) -> ApiKey:
    key = db.session.execute(
        select(ApiKey).where(
            ApiKey.key_id == key_id, ApiKey.tenant_id == tenant_id, ApiKey.kind != USER_TOKEN
        )
    ).scalar_one_or_none()
    if key is None:
        raise NotFound("No such key")
    return key


def list_user_keys(*, user: User) -> list[ApiKey]:
    return list(
        db.session.execute(
            select(ApiKey)
            .where(ApiKey.user_id == user.id, ApiKey.kind != USER_TOKEN)
            .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        ).scalars()
    )


def list_client_keys() -> list[ApiKey]:
    return list(
        db.session.execute(
            select(ApiKey).where(ApiKey.kind == "client").order_by(ApiKey.id)
        ).scalars()
    )


def get_client_key(key_id: str) -> ApiKey:
    key = db.session.execute(
        select(ApiKey).where(ApiKey.key_id == key_id, ApiKey.kind == "client")
    ).scalar_one_or_none()
    if key is None:
        raise NotFound(f"No client key with id {key_id}")
    return key


def key_json(key: ApiKey, now: datetime) -> dict:
    """The API's view of a key (never the secret)."""
    from app.clock import to_unix

    return {
        "id": key.key_id,
        "name": key.name,
        "scopes": key.scope_list,
        "created_at": to_unix(key.created_at),
        "expires_at": to_unix(key.expires_at),
        "last_used": to_unix(key.last_used_at),
        "revoked": key.revoked_at is not None and key.revoked_at <= now,
        "status": status_of(key, now),
    }
