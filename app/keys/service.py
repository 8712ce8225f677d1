"""Issuing, rotating and revoking keys, and the status rules. The caller commits.

State changes that can race (revoke vs rotate, double revoke) are single
conditional UPDATEs: the row that matched wins, the other caller gets Conflict.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select, update

from app import audit
from app.accounts import policy
from app.audit import Actor
from app.errors import Conflict, InvalidInput, NotFound, PolicyViolation
from app.extensions import db
from app.keys import format as keyformat
from app.keys import scopes as scope_rules
from app.keys.status import EXPIRING_WITHIN, WORKING, end_of, status_of  # noqa: F401 (API)
from app.models import ApiKey, User
from app.names import clean_name, clean_text

UNSET: object = object()  # "not given" for update_key's optional fields

MAX_EXPIRY_DAYS = 3650
MAX_GRACE_HOURS = 168
MAX_DESCRIPTION = 100  # SPEC: names and descriptions are 1-100 characters
# User access tokens live in api_keys too (app/keys/tokens.py) but are no user's keys.
USER_TOKEN = "user_token"  # noqa: S105  (a kind, not a secret)


def pepper() -> bytes:
    return current_app.config["KEYDESK_KEY_PEPPER"].encode()


def key_prefix() -> str:
    return current_app.config["KEYDESK_KEY_PREFIX"]


def validate_name(name: str | None) -> str:
    return clean_name(name or "", field="name")


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


def validate_description(description: str | None) -> str | None:
    """Optional free text (empty: none), held to the same character rules as a name."""
    return clean_text(description, field="description", limit=MAX_DESCRIPTION)


def days_until(day: date, *, now: datetime, field: str = "expires_on") -> int:
    """A chosen expiry date as whole days from today (the key then expires on that day at
    the time of day it was created, exactly as a preset of that many days would)."""
    days = (day - now.date()).days
    if days < 1:
        raise InvalidInput("Choose an expiry date after today", field=field)
    if days > MAX_EXPIRY_DAYS:
        raise InvalidInput(
            f"Choose an expiry date within {MAX_EXPIRY_DAYS} days of today", field=field
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
    description: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a user key. Returns (row, full key); the full key exists only in this return.

    granting_scopes: when an API key creates a key, the caller's scopes; the new
    key's scopes must be a subset of them.
    """
    name = validate_name(name)
    description = validate_description(description)
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
        description=description,
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
    given) and it ends no later than the creating key. Returns the allow-list to use.

    parent_expires_at: the creating key's effective end of life in Unix seconds (expiry or
    grace end, whichever is first: status.effective_end), None when it never ends."""
    if isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int):
        validate_expiry_days(expires_in_days)  # raises, naming the field
    try:
        expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
    except OverflowError:  # 3e6 days and more lie past any date Python can hold
        validate_expiry_days(expires_in_days)  # raises, naming the field
        raise
    check_parent_end(
        parent_expires_at=parent_expires_at, expires_at=expires_at, now=now,
        field="expires_in_days",
    )  # fmt: skip
    return limit_ips_to_parent(parent_allowed_ips=parent_allowed_ips, allowed_ips=allowed_ips)


def check_parent_end(
    *, parent_expires_at: int | None, expires_at: datetime | None, now: datetime, field: str
) -> None:
    """InvalidInput unless a key ending at `expires_at` (None: never) ends no later than
    the creating key, whose effective end is `parent_expires_at` (Unix seconds or None)."""
    if parent_expires_at is None:
        return
    limit = datetime.fromtimestamp(parent_expires_at, now.tzinfo)
    if expires_at is None or expires_at > limit:
        raise InvalidInput(
            "A key that expires can only create keys that expire no later than itself"
            f" (at most {max(0, (limit - now).days)} days from now)",
            field=field,
        )


def limit_ips_to_parent(*, parent_allowed_ips: str | None, allowed_ips: str | None) -> str | None:
    """The allow-list to use: the parent's when none is given; else it must lie within it."""
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


def rotate_key(
    *,
    key: ApiKey,
    grace_hours: int,
    now: datetime,
    actor: Actor,
    expires_in_days: int | None = None,
) -> tuple[ApiKey, str]:
    """Issue a successor with the same name, scopes, owner and allow-list; the old key keeps
    working for grace_hours, then stops (it reads `rotated` from now on). Conflict if it
    was rotated or revoked.

    expires_in_days: the successor's lifetime (0 = never); None keeps the old key's
    lifetime, which must still be one the tenant policy allows (a tightened policy names
    the field, so the portal can offer the lifetimes it allows)."""
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
    if status_of(key, now) not in WORKING or key.revoked_at:
        raise Conflict("Only an active key can be rotated")
    if expires_in_days is None:
        lifetime_days = lifetime_days_of(key)
        if not policy.allows_lifetime(key.user.tenant, lifetime_days):
            limit = key.user.tenant.max_key_lifetime_days
            raise PolicyViolation(
                "Your organization's policy no longer allows this key's lifetime ("
                + (f"{lifetime_days} days" if lifetime_days else "never expires")
                + ("" if not limit else f"; at most {limit} days")
                + "): choose how long the new key lives",
                field="expires_in_days",
            )
    else:
        lifetime_days = validate_expiry_days(expires_in_days)
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
        description=key.description,
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
        expires_at=new_row.expires_at,
    )
    return new_row, full_key


def set_allowed_ips(*, key: ApiKey, allowed_ips: str | None, now: datetime, actor: Actor) -> None:
    """Replace the key's IP allow-list (already validated; None: any address). Audited."""
    if status_of(key, now) not in WORKING:
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


def update_key(
    *,
    key: ApiKey,
    now: datetime,
    actor: Actor,
    name: object = UNSET,
    description: object = UNSET,
    scopes: object = UNSET,
    expires_at: object = UNSET,
    allowed_ips: object = UNSET,
    granting_scopes: Iterable[str] | None = None,
    parent_expires_at: int | None = None,
    parent_allowed_ips: str | None = None,
    expiry_field: str = "expires_at",
) -> dict[str, tuple]:
    """Change what a working key is, under the rules a new key meets: tenant policy
    (grantable scopes, lifetime counted from creation), and when an API key makes the
    change, the creating-key rules (scopes within its own, ends no later than it, addresses
    within its allow-list) so that no key can widen itself or another. Arguments left UNSET
    stay; allowed_ips None means any address. Audited as one `key.updated` event with
    before/after of what changed; returns {field: (before, after)} of those.

    expiry_field: how the caller names the expiry ("expires_at" in the API, "expires_on"
    in the portal), for the `field` of the refusals."""
    if key.user is None:
        raise InvalidInput("Client keys are changed from the command line")
    if status_of(key, now) not in WORKING:
        raise Conflict("Only an active key can be changed")
    user = key.user
    changes: dict[str, tuple] = {}
    if name is not UNSET:
        changes["name"] = (key.name, validate_name(name if isinstance(name, str) else None))
    if description is not UNSET:
        if description is not None and not isinstance(description, str):
            raise InvalidInput("description must be a string or null", field="description")
        changes["description"] = (key.description, validate_description(description))
    if scopes is not UNSET:
        if not isinstance(scopes, Iterable) or isinstance(scopes, str):
            raise InvalidInput("scopes must be a list of scope names", field="scopes")
        scope_list = scope_rules.normalize(scopes)
        if scope_list != key.scope_list:  # unchanged scopes pass a policy tightened since
            if granting_scopes is not None:
                refused = scope_rules.missing(granting_scopes, scope_list)
                if refused:
                    raise InvalidInput(
                        "A key can only give keys a subset of its own scopes; not held: "
                        + ", ".join(refused),
                        field="scopes",
                    )
            policy.check_scopes(tenant=user.tenant, user=user, scopes=scope_list)
        changes["scopes"] = (key.scope_list, scope_list)
    if expires_at is not UNSET:
        if expires_at is not None:
            if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
                raise InvalidInput("expiry must be a time", field=expiry_field)
            if expires_at <= now:
                raise InvalidInput("Choose an expiry in the future", field=expiry_field)
            if expires_at > now + timedelta(days=MAX_EXPIRY_DAYS):
                raise InvalidInput(
                    f"Choose an expiry within {MAX_EXPIRY_DAYS} days from now", field=expiry_field
                )
            expires_at = expires_at.replace(microsecond=0)
        if expires_at != key.expires_at:
            policy.check_expiry(
                tenant=user.tenant, created_at=key.created_at, expires_at=expires_at,
                field=expiry_field,
            )  # fmt: skip
            check_parent_end(
                parent_expires_at=parent_expires_at, expires_at=expires_at, now=now,
                field=expiry_field,
            )  # fmt: skip
        changes["expires_at"] = (key.expires_at, expires_at)
    if allowed_ips is not UNSET:
        if parent_allowed_ips and allowed_ips != key.allowed_ips:
            limit_ips_to_parent(
                parent_allowed_ips=parent_allowed_ips, allowed_ips=allowed_ips or ANY_ADDRESS
            )
        changes["allowed_ips"] = (key.allowed_ips, allowed_ips)
    changes = {k: (old, new) for k, (old, new) in changes.items() if old != new}
    if not changes:
        return {}
    for column, (_, new) in changes.items():
        setattr(key, column, " ".join(new) if column == "scopes" else new)
    db.session.flush()

    def shown(column: str, value: object) -> object:
        if column == "allowed_ips":
            return value.split() if value else []
        return value

    audit.record(
        "key.updated",
        actor=actor,
        now=now,
        tenant_id=key.tenant_id,
        target_type="key",
        target=key.key_id,
        name=key.name,
        before={c: shown(c, old) for c, (old, _) in changes.items()},
        after={c: shown(c, new) for c, (_, new) in changes.items()},
    )
    return changes


def record_key_revocations(
    revoked: list, *, tenant_id: int, now: datetime, actor: Actor, reason: str
) -> None:
    """One `key.revoked` audit event per (key_id, name), in one batch (incident revoke,
    member deactivation)."""
    if not revoked:
        return  # nothing to chain: do not take the chain lock
    audit.record_many(
        "key.revoked",
        ((key_id, {"name": name, "reason": reason}) for key_id, name in revoked),
        actor=actor,
        now=now,
        tenant_id=tenant_id,
        target_type="key",
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
        "description": key.description,
        "scopes": key.scope_list,
        "created_at": to_unix(key.created_at),
        # The effective end of life: for a rotated key in its grace period, the grace end.
        "expires_at": to_unix(end_of(key)),
        "last_used": to_unix(key.last_used_at),
        "revoked": key.revoked_at is not None and key.revoked_at <= now,
        "status": status_of(key, now),
    }
