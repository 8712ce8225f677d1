"""Tenant key policy: max lifetime, required expiry, which scopes members may grant.

Enforced for every new user key and rotation, whether it comes from the portal,
the API or the CLI (all go through keys.service.issue_key / rotate_key).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from app import audit
from app.audit import Actor
from app.errors import InvalidInput, PolicyViolation
from app.keys.scopes import ALL_SCOPES
from app.models import Tenant, User

EXPIRY_CHOICES = (7, 30, 90, 365, 0)  # days offered in the portal; 0 = never


def member_scope_list(tenant: Tenant) -> list[str]:
    if tenant.member_scopes is None:
        return list(ALL_SCOPES)
    granted = set(tenant.member_scopes.split())
    return [s for s in ALL_SCOPES if s in granted]


def grantable_scopes(tenant: Tenant, user: User) -> list[str]:
    """Scopes this user may put on a new key (admins: all)."""
    return list(ALL_SCOPES) if user.is_admin else member_scope_list(tenant)


def expiry_choices(tenant: Tenant) -> list[int]:
    """The portal's expiry options that the policy allows (0 = never)."""
    out = []
    for days in EXPIRY_CHOICES:
        if days == 0 and (tenant.require_expiry or tenant.max_key_lifetime_days):
            continue
        if tenant.max_key_lifetime_days and days > tenant.max_key_lifetime_days:
            continue
        out.append(days)
    if tenant.max_key_lifetime_days and tenant.max_key_lifetime_days not in out:
        out.append(tenant.max_key_lifetime_days)
        out.sort()
    return out


def check_new_key(
    *, tenant: Tenant, user: User, scopes: Iterable[str], expires_in_days: int
) -> None:
    """Raise PolicyViolation naming the rule a new key (or rotation) breaks."""
    if expires_in_days == 0 and tenant.require_expiry:
        raise PolicyViolation(
            "Your organization's policy requires every key to expire", field="expires_in_days"
        )
    limit = tenant.max_key_lifetime_days
    if limit and (expires_in_days == 0 or expires_in_days > limit):
        raise PolicyViolation(
            f"Your organization's policy limits key lifetime to {limit} days",
            field="expires_in_days",
        )
    check_scopes(tenant=tenant, user=user, scopes=scopes)


def check_scopes(*, tenant: Tenant, user: User, scopes: Iterable[str]) -> None:
    if not user.is_admin:
        allowed = set(member_scope_list(tenant))
        refused = [s for s in scopes if s not in allowed]
        if refused:
            raise PolicyViolation(
                "Your organization's policy does not let members grant: " + ", ".join(refused),
                field="scopes",
            )


def check_expiry(
    *, tenant: Tenant, created_at: datetime, expires_at: datetime | None, field: str
) -> None:
    """An edited expiry: the same rules as for a new key, the lifetime counted from the
    key's creation (a maximum lifetime exists so that keys get rotated, not extended)."""
    if expires_at is None and tenant.require_expiry:
        raise PolicyViolation("Your organization's policy requires every key to expire", field)
    limit = tenant.max_key_lifetime_days
    if limit and (expires_at is None or expires_at - created_at > timedelta(days=limit)):
        raise PolicyViolation(
            f"Your organization's policy limits key lifetime to {limit} days from its creation",
            field,
        )


def allows_lifetime(tenant: Tenant, days: int) -> bool:
    """May a new key (or a rotation's successor) live `days` days (0 = never expire)?"""
    if days == 0:
        return not (tenant.require_expiry or tenant.max_key_lifetime_days)
    return not tenant.max_key_lifetime_days or days <= tenant.max_key_lifetime_days


def update_policy(
    *,
    tenant: Tenant,
    max_key_lifetime_days: int,
    require_expiry: bool,
    member_scopes: Iterable[str],
    actor: Actor,
    now: datetime,
    require_2fa: bool | None = None,
) -> None:
    if not 0 <= max_key_lifetime_days <= 3650:
        raise InvalidInput(
            "Maximum lifetime is 0 (no maximum) to 3650 days", field="max_key_lifetime_days"
        )
    chosen = set(member_scopes)
    unknown = chosen - set(ALL_SCOPES)
    if unknown:
        raise InvalidInput(f"Unknown scope: {', '.join(sorted(unknown))}", field="member_scopes")
    before = policy_dict(tenant)
    tenant.max_key_lifetime_days = max_key_lifetime_days
    tenant.require_expiry = bool(require_expiry)
    ordered = [s for s in ALL_SCOPES if s in chosen]
    tenant.member_scopes = None if len(ordered) == len(ALL_SCOPES) else " ".join(ordered)
    if require_2fa is not None:  # None: this caller does not manage it (left as it is)
        tenant.require_2fa = bool(require_2fa)
    after = policy_dict(tenant)
    if before != after:
        audit.record(
            "policy.changed",
            actor=actor,
            now=now,
            tenant_id=tenant.id,
            target_type="policy",
            target=tenant.slug,
            before=before,
            after=after,
        )


def policy_dict(tenant: Tenant) -> dict:
    return {
        "max_key_lifetime_days": tenant.max_key_lifetime_days,
        "require_expiry": bool(tenant.require_expiry),
        "member_scopes": member_scope_list(tenant),
        "require_2fa": bool(tenant.require_2fa),
    }
