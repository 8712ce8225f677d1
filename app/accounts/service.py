"""Tenants and users: registration, sign-in, lookups. The caller commits."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select

from app import audit
from app.accounts.passwords import check_password_rules, hash_password, verify_password
from app.accounts.twofactor import has_second_factor
from app.audit import Actor
from app.errors import InvalidInput
from app.extensions import db
from app.models import Tenant, User
from app.names import clean_name

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


def normalize_email(email: str) -> str:
    email = (email or "").strip()
    try:
        # No DNS lookups: deliverability is not ours to judge and the network may be closed.
        return validate_email(email, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidInput(f"Enter a valid email address ({exc})", field="email") from None


def slugify(name: str) -> str:
    # Fold accents first so "Café Zürich" reads "cafe-zurich", not "caf-z-rich".
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:48].strip("-")
    return slug or "org"


def unique_slug(name: str) -> str:
    base = slugify(name)
    taken = set(
        db.session.execute(
            select(Tenant.slug).where((Tenant.slug == base) | Tenant.slug.like(f"{base}-%"))
        ).scalars()
    )
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def validate_slug(slug: str) -> str:
    slug = (slug or "").strip()
    if not SLUG_RE.match(slug):
        raise InvalidInput(
            "A tenant slug uses lowercase letters, digits and '-' (1-64 characters)", field="tenant"
        )
    return slug


def get_tenant_by_slug(slug: str) -> Tenant | None:
    return db.session.execute(select(Tenant).where(Tenant.slug == slug)).scalar_one_or_none()


def create_tenant(*, name: str, now: datetime, slug: str | None = None) -> Tenant:
    name = clean_name(name or "", field="organization")
    tenant = Tenant(
        slug=validate_slug(slug) if slug else unique_slug(name),
        name=name,
        created_at=now,
        max_key_lifetime_days=0,
        require_expiry=False,
        member_scopes=None,
    )
    db.session.add(tenant)
    db.session.flush()
    return tenant


def get_user_by_email(email: str) -> User | None:
    return db.session.execute(
        select(User).where(User.email == email.strip().lower())
    ).scalar_one_or_none()


def email_taken(email: str) -> bool:
    return (
        db.session.execute(
            select(func.count()).select_from(User).where(User.email == email)
        ).scalar_one()
        > 0
    )


def create_user(
    *,
    tenant: Tenant,
    email: str,
    password: str | None,
    role: str,
    now: datetime,
    actor: Actor,
    check_rules: bool = True,
) -> User:
    """`password=None`: an account without a password (one that signs in by SSO)."""
    email = normalize_email(email)
    if role not in ("admin", "member"):
        raise InvalidInput("Role must be admin or member", field="role")
    if check_rules and password is not None:
        check_password_rules(password, email=email)
    # Hash first: "email taken" then costs what a new account costs (no timing oracle).
    password_hash = hash_password(password) if password is not None else None
    if email_taken(email):
        raise InvalidInput("An account with this email already exists", field="email")
    user = User(
        tenant=tenant,
        email=email,
        password_hash=password_hash,
        role=role,
        created_at=now,
    )
    db.session.add(user)
    db.session.flush()
    audit.record(
        "user.created",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="user",
        target=email,
        role=role,
    )
    return user


def register(*, email: str, password: str, organization: str, now: datetime, actor: Actor) -> User:
    """A new tenant with its first admin (the /register form)."""
    email = normalize_email(email)
    check_password_rules(password, email=email)
    tenant = create_tenant(name=organization, now=now)
    audit.record(
        "tenant.created",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="tenant",
        target=tenant.slug,
    )
    return create_user(
        tenant=tenant,
        email=email,
        password=password,
        role="admin",
        now=now,
        actor=actor,
        check_rules=False,
    )


def authenticate(*, email: str, password: str, now: datetime, actor: Actor) -> User | None:
    """Check credentials; one answer (None) for unknown email, wrong password and deactivated.

    Records auth.login / auth.login_failed in the user's tenant (outside any tenant for an
    unknown address).
    """
    user = get_user_by_email(email or "")
    ok, new_hash = verify_password(user.password_hash if user else None, password or "")
    if user is None:
        # Audited too (outside any tenant), which also gives an unknown address the same
        # work as a wrong password: a write and a commit.
        audit.record(
            "auth.login_failed",
            actor=Actor("anonymous", (email or "")[:254], actor.ip, actor.user_agent),
            now=now,
            target_type="user",
            target=(email or "").strip().lower()[:254],
            reason="unknown_account",
        )
        return None
    if not ok or not user.is_active:
        audit.record(
            "auth.login_failed",
            actor=Actor("anonymous", user.email, actor.ip, actor.user_agent),
            now=now,
            tenant_id=user.tenant_id,
            target_type="user",
            target=user.email,
            reason="deactivated" if ok else "bad_password",
        )
        return None
    if new_hash:
        user.password_hash = new_hash
    if has_second_factor(user):
        # Half way: "auth.login" is written once the second factor passes (/login/2fa).
        action = "auth.password_verified"
    else:
        action = "auth.login"
        user.last_login_at = now
    audit.record(
        action,
        actor=Actor("user", user.email, actor.ip, actor.user_agent),
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
    )
    return user
