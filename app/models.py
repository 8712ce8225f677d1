"""The tables. Times are stored as Unix seconds (BIGINT) and surface in Python as
timezone-aware UTC datetimes through UnixTime.

Why integers rather than TIMESTAMP WITH TIME ZONE: SQLite has no time zone type
(SQLAlchemy hands back naive datetimes there), and the API authentication hot path
reads rows with a raw DBAPI cursor on both databases; integers compare the same
everywhere without parsing, and the JSON API speaks Unix seconds anyway.
"""

from __future__ import annotations

from datetime import date, datetime

from flask_login import UserMixin
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import from_unix, to_unix
from app.extensions import db


class UnixTime(TypeDecorator):
    """Aware UTC datetime in Python, integer Unix seconds in the database."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> int | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UnixTime column")
        return to_unix(value)

    def process_result_value(self, value: int | None, dialect) -> datetime | None:
        return from_unix(value)


class Tenant(db.Model):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    # Policy (defaults: no maximum lifetime, expiry optional, members may grant every scope).
    max_key_lifetime_days: Mapped[int] = mapped_column(Integer, default=0)  # 0 = no maximum
    require_expiry: Mapped[bool] = mapped_column(Boolean, default=False)
    member_scopes: Mapped[str | None] = mapped_column(Text)  # space-separated; NULL = all

    users: Mapped[list[User]] = relationship(back_populates="tenant")
    # Members must have a second factor (TOTP or a passkey) before they may use the portal.
    require_2fa: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)  # stored lowercased
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="member")  # "admin" | "member"
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UnixTime)
    deactivated_at: Mapped[datetime | None] = mapped_column(UnixTime)

    tenant: Mapped[Tenant] = relationship(back_populates="users")

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return self.deactivated_at is None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def get_id(self) -> str:
        # Who is signed in is decided by the server-side session (UserSession), never by
        # this id; Flask-Login only needs it to exist.
        return str(self.id)


class ApiKey(db.Model):
    """A user key (user_id and tenant_id set) or a client key (both NULL).

    Revocation and rotation both set revoked_at: a rotated key gets a revoked_at
    in the future (the end of its grace period) so the hot path decides
    revoked / in grace from one column.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)  # public handle
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))  # HMAC-SHA256(pepper, secret)
    name: Mapped[str] = mapped_column(String(100))
    # "user" | "client" | "user_token" (a terminal sign-in: app/keys/tokens.py)
    kind: Mapped[str] = mapped_column(String(16), default="user")
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    scopes: Mapped[str] = mapped_column(Text, default="")  # space-separated
    allowed_ips: Mapped[str | None] = mapped_column(Text)  # space-separated CIDRs; NULL = any
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    created_by: Mapped[str | None] = mapped_column(String(300))  # actor label, e.g. "cli"
    expires_at: Mapped[datetime | None] = mapped_column(UnixTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UnixTime)
    # "revoked" | "rotated" | "leaked" | "member_deactivated" | "incident"
    revoke_reason: Mapped[str | None] = mapped_column(String(32))
    revoked_by: Mapped[str | None] = mapped_column(String(300))
    rotated_from: Mapped[str | None] = mapped_column(String(32))  # key_id of the predecessor
    rotated_to: Mapped[str | None] = mapped_column(String(32))  # key_id of the successor
    last_used_at: Mapped[datetime | None] = mapped_column(UnixTime)
    last_used_ip: Mapped[str | None] = mapped_column(String(64))
    reminded_at: Mapped[datetime | None] = mapped_column(UnixTime)  # last expiry reminder
    description: Mapped[str | None] = mapped_column(String(100))  # optional, owner's words

    user: Mapped[User | None] = relationship()
    tenant: Mapped[Tenant | None] = relationship()

    __table_args__ = (
        Index("ix_api_keys_tenant_created", "tenant_id", "created_at"),
        Index("ix_api_keys_tenant_expires", "tenant_id", "expires_at"),
        Index("ix_api_keys_tenant_last_used", "tenant_id", "last_used_at"),
        Index("ix_api_keys_tenant_revoked", "tenant_id", "revoked_at"),
    )

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()


class KeyUsageDaily(db.Model):
    """Requests per key per UTC day, flushed from in-process counters (no write per request)."""

    __tablename__ = "key_usage_daily"

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class KeyIpSeen(db.Model):
    """Addresses a key was used from, for the key page and the "first use from a new IP" event."""

    __tablename__ = "key_ips_seen"

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UnixTime)
    last_seen_at: Mapped[datetime] = mapped_column(UnixTime)


class AuditEvent(db.Model):
    """Append-only and tamper-evident: `hash` = SHA-256 over `prev_hash` and this row's fields."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    action: Mapped[str] = mapped_column(String(64))  # e.g. "key.issued", "auth.login_failed"
    actor_type: Mapped[str] = mapped_column(String(16))  # "user" | "key" | "cli" | "anonymous"
    actor: Mapped[str] = mapped_column(String(300))  # email, key id or "cli"
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    target_type: Mapped[str | None] = mapped_column(String(32))  # "key" | "user" | "policy" | ...
    target: Mapped[str | None] = mapped_column(String(300))
    details: Mapped[str] = mapped_column(Text, default="{}")  # canonical JSON, never a secret
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_events_tenant_id_id", "tenant_id", "id"),
        Index("ix_audit_events_tenant_action", "tenant_id", "action"),
        Index("ix_audit_events_target", "target_type", "target"),
    )


class Resource(db.Model):
    """The demo domain behind /api/v1/resources."""

    __tablename__ = "resources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    created_by: Mapped[str | None] = mapped_column(String(300))


class Invite(db.Model):
    """A single-use invitation; only SHA-256 of the token is stored."""

    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    email: Mapped[str] = mapped_column(String(254))
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    expires_at: Mapped[datetime] = mapped_column(UnixTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UnixTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UnixTime)

    tenant: Mapped[Tenant] = relationship()


class UserSession(db.Model):
    """A signed-in browser session. The cookie holds a random token; only its SHA-256 is
    stored, so a database reader cannot take over a session. A session is live while
    ended_at is NULL, it was seen within the idle timeout and it is younger than the
    absolute timeout (app/accounts/sessions.py decides)."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)  # in URLs, never the token
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the cookie token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    method: Mapped[str] = mapped_column(String(32))  # how it began: "password", "invite"...
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    last_seen_at: Mapped[datetime] = mapped_column(UnixTime)
    ip: Mapped[str | None] = mapped_column(String(64))  # last address seen
    user_agent: Mapped[str | None] = mapped_column(String(300))
    sudo_at: Mapped[datetime | None] = mapped_column(UnixTime)  # last sign-in or re-auth
    ended_at: Mapped[datetime | None] = mapped_column(UnixTime)
    # "signed_out" | "revoked" | "password_changed" | "password_reset" | "deactivated" ...
    end_reason: Mapped[str | None] = mapped_column(String(32))

    user: Mapped[User] = relationship()


class PasswordReset(db.Model):
    """A single-use password reset link; only SHA-256 of its token is stored."""

    __tablename__ = "password_resets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    expires_at: Mapped[datetime] = mapped_column(UnixTime)
    used_at: Mapped[datetime | None] = mapped_column(UnixTime)
    requested_ip: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship()


class FormSubmission(db.Model):
    """What a creating form (new key, rotation, invitation) created, by its one-time
    submission token, so that the same form submitted again (a reload, Back then Forward)
    finds it instead of creating again (app/once.py). Only SHA-256 of the token is stored;
    `result` names what was made (a key id, the invited address), never a
    secret."""

    __tablename__ = "form_submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(32))  # "key.new" | "key.rotate" | "invite"
    result: Mapped[str] = mapped_column(String(254))  # a key id, an invited address
    created_at: Mapped[datetime] = mapped_column(UnixTime)


class TotpFactor(db.Model):
    """A user's authenticator app (RFC 6238). The seed is sealed with app/secretbox.py; the
    last accepted time step makes every code single-use."""

    __tablename__ = "totp_factors"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    enabled_at: Mapped[datetime] = mapped_column(UnixTime)
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)


class RecoveryCode(db.Model):
    """A single-use recovery code; only its keyed digest is stored."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    used_at: Mapped[datetime | None] = mapped_column(UnixTime)


class Passkey(db.Model):
    """A WebAuthn credential: only its public key and counter are kept."""

    __tablename__ = "passkeys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)  # base64url
    public_key: Mapped[bytes] = mapped_column(LargeBinary)  # COSE
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    user_handle: Mapped[str] = mapped_column(String(128))  # base64url, the same for one user
    transports: Mapped[str | None] = mapped_column(String(200))  # space-separated hints
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UnixTime)


class DeviceAuthorization(db.Model):
    """A terminal sign-in in progress (OAuth 2.0 device authorization grant, RFC 8628).

    Only keyed digests of the device code and the user code are stored: a copy of the
    database cannot approve or redeem a pending sign-in. The user access token is minted
    at the exchange, so its secret is never stored either.
    """

    __tablename__ = "device_authorizations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_code_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_code_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str | None] = mapped_column(Text)  # requested; NULL = all the user may grant
    # "pending" | "approved" | "denied" | "exchanged"
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    expires_at: Mapped[datetime] = mapped_column(UnixTime)
    interval: Mapped[int] = mapped_column(Integer)  # seconds; slow_down adds 5
    last_polled_at: Mapped[datetime | None] = mapped_column(UnixTime)
    request_ip: Mapped[str | None] = mapped_column(String(64))
    request_user_agent: Mapped[str | None] = mapped_column(String(300))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    decided_at: Mapped[datetime | None] = mapped_column(UnixTime)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)

    user: Mapped[User | None] = relationship()


class SsoConfig(db.Model):
    """A tenant's OpenID Connect provider (SPEC "Single sign-on"). The client secret is sealed
    with app/secretbox.py (it must be sent back to the provider); `provider` keeps the parts
    of the discovery document that sign-in needs, as read and checked when it was saved."""

    __tablename__ = "sso_configs"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(500))
    client_id: Mapped[str] = mapped_column(String(255))
    client_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_domains: Mapped[str] = mapped_column(Text, default="")  # space-separated
    default_role: Mapped[str] = mapped_column(String(16), default="member")
    enforce: Mapped[bool] = mapped_column(Boolean, default=False)
    provider: Mapped[str] = mapped_column(Text, default="{}")  # JSON: endpoints, algorithms
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    updated_at: Mapped[datetime] = mapped_column(UnixTime)
    updated_by: Mapped[str | None] = mapped_column(String(300))

    tenant: Mapped[Tenant] = relationship()

    @property
    def domain_list(self) -> list[str]:
        return self.email_domains.split()


class SsoDomain(db.Model):
    """Which tenant an email domain signs in through: one tenant per domain, so the domain
    typed on /login picks exactly one provider (and no tenant can claim another's people)."""

    __tablename__ = "sso_domains"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)  # lowercased
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)


class SsoLogin(db.Model):
    """One started SSO sign-in: the state (only its SHA-256), the nonce and the PKCE
    verifier (sealed). `used_at` is set by one conditional UPDATE, so a replayed callback
    finds it used, whatever the browser's cookie still holds."""

    __tablename__ = "sso_logins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state_digest: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    next_url: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UnixTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UnixTime)


class ScimToken(db.Model):
    """A tenant's SCIM bearer token (`<prefix>s_<id>_<secret><checksum>`): only the HMAC of
    the secret is stored, as for API keys. A new token ends the previous one."""

    __tablename__ = "scim_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    created_by: Mapped[str | None] = mapped_column(String(300))
    revoked_at: Mapped[datetime | None] = mapped_column(UnixTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UnixTime)


class ScimUser(db.Model):
    """The SCIM face of a user: a public random `scim_id` (database ids never leave the
    server), the provider's `externalId`, and `deleted_at` once the provider DELETEd it
    (the user is deactivated, never removed: the audit log still names them)."""

    __tablename__ = "scim_users"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    scim_id: Mapped[str] = mapped_column(String(36), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UnixTime)
    updated_at: Mapped[datetime] = mapped_column(UnixTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UnixTime)

    user: Mapped[User] = relationship()
