"""The scope vocabulary and the rules for checking and granting scopes."""

from collections.abc import Iterable

from app.errors import InvalidInput

ALL_SCOPES: tuple[str, ...] = (
    "api:read",
    "api:write",
    "keys:read",
    "keys:write",
    "keys:verify",
    "admin:read",
    "admin:write",
    "deploy:staging",
    "deploy:production",
    "billing:manage",
    "users:manage",
    "admin:all",
)
SUPERSCOPE = "admin:all"
# Scopes whose routes also need the key's owner to be a tenant admin: on a member's key
# they allow nothing, so the member's New key form leaves them out.
ADMIN_ONLY: tuple[str, ...] = ("admin:read", "admin:write")

DESCRIPTIONS: dict[str, str] = {
    "api:read": "Read resources",
    "api:write": "Create and delete resources",
    "keys:read": "List your API keys",
    "keys:write": "Create, rotate and revoke your API keys",
    "keys:verify": "Verify other keys (for services using Keydesk as key authority)",
    "admin:read": "Read the tenant's keys and audit log (admins only)",
    "admin:write": "Revoke any key of the tenant (admins only)",
    "deploy:staging": "Deploy to staging",
    "deploy:production": "Deploy to production",
    "billing:manage": "Manage billing",
    "users:manage": "Manage users",
    "admin:all": "Everything (satisfies every scope check)",
}


def normalize(scopes: Iterable[str]) -> list[str]:
    """Validate and de-duplicate, in the canonical order of ALL_SCOPES."""
    given = {s.strip() for s in scopes if s and s.strip()}
    unknown = sorted(given - set(ALL_SCOPES))
    if unknown:
        raise InvalidInput(f"Unknown scope: {', '.join(unknown)}", field="scopes")
    if not given:
        raise InvalidInput("Choose at least one scope", field="scopes")
    return [s for s in ALL_SCOPES if s in given]


def satisfies(held: Iterable[str], needed: Iterable[str]) -> bool:
    held = set(held)
    return SUPERSCOPE in held or set(needed) <= held


def missing(held: Iterable[str], needed: Iterable[str]) -> list[str]:
    held = set(held)
    if SUPERSCOPE in held:
        return []
    return [s for s in needed if s not in held]
