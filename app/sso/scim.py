"""SCIM 2.0 (RFC 7643/7644), the subset identity providers use to provision and deprovision
people: the Users resource behind one bearer token per tenant. The caller commits.

The token has the key format (`<prefix>s_<id>_<secret><checksum>`, app/keys/format.py), so
secret scanners and the checksum rule treat it like a key; only HMAC(pepper, secret) is
stored. Deactivation (PATCH active=false, or DELETE) goes through the one deactivate
function of app/accounts/members.py: it revokes the user's keys and ends their sessions
(and user access tokens) at once.
"""

from __future__ import annotations

import hmac
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import current_app
from sqlalchemy import func, select, update

from app import audit
from app.accounts import members
from app.accounts import service as accounts
from app.audit import Actor
from app.errors import Conflict, InvalidInput, KeyInvalid
from app.extensions import db
from app.keys import format as key_format
from app.models import ScimToken, ScimUser, Tenant, User

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
MAX_COUNT = 200
# Attributes identity providers send that Keydesk has no place for: accepted and not kept,
# so a provider's full profile update does not fail on them.
IGNORED_ATTRIBUTES = {
    "name",
    "displayname",
    "nickname",
    "title",
    "usertype",
    "preferredlanguage",
    "locale",
    "timezone",
    "emails",
    "phonenumbers",
    "addresses",
    "photos",
    "profileurl",
    "roles",
    "entitlements",
    "x509certificates",
    "groups",
    "password",
}


class ScimError(Exception):
    """An RFC 7644 §3.12 error: HTTP status, optional scimType, a detail for the provider."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    def body(self) -> dict:
        body: dict[str, Any] = {
            "schemas": [ERROR_SCHEMA],
            "status": str(self.status),
            "detail": self.detail,
        }
        if self.scim_type:
            body["scimType"] = self.scim_type
        return body


# --- the token ------------------------------------------------------------------------


def token_prefix() -> str:
    return current_app.config["KEYDESK_KEY_PREFIX"] + "s"


def _pepper() -> bytes:
    pepper = current_app.config["KEYDESK_KEY_PEPPER"]
    return pepper.encode() if isinstance(pepper, str) else bytes(pepper)


def current_token(*, tenant: Tenant) -> ScimToken | None:
    return db.session.execute(
        select(ScimToken).where(ScimToken.tenant_id == tenant.id, ScimToken.revoked_at.is_(None))
    ).scalar()


def create_token(*, tenant: Tenant, actor: Actor, now: datetime) -> tuple[ScimToken, str]:
    """A new token for the tenant; the previous one stops working in the same transaction.
    Returns (row, full token); the full token exists only in this return value."""
    ended = db.session.execute(
        update(ScimToken)
        .where(ScimToken.tenant_id == tenant.id, ScimToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(ScimToken.token_id)
        .execution_options(synchronize_session=False)
    ).scalars()
    ended = list(ended)
    token_id, secret = key_format.new_key_id(), key_format.new_secret()
    row = ScimToken(
        token_id=token_id,
        tenant_id=tenant.id,
        digest=key_format.digest(_pepper(), secret),
        created_at=now,
        created_by=actor.label,
    )
    db.session.add(row)
    db.session.flush()
    audit.record(
        "scim.token_created",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="scim_token",
        target=token_id,
        ended=ended,
    )
    return row, key_format.assemble(token_prefix(), token_id, secret)


def authenticate(header: str | None, *, now: datetime) -> tuple[Tenant, ScimToken]:
    """The tenant a `Bearer kds_...` header speaks for; ScimError 401 otherwise."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ScimError(401, "Send the tenant's SCIM token as Authorization: Bearer")
    try:
        parsed = key_format.parse(token.strip())
    except KeyInvalid:
        raise ScimError(401, "Invalid SCIM token") from None
    if parsed.prefix != token_prefix():
        raise ScimError(401, "Invalid SCIM token")
    row = db.session.execute(
        select(ScimToken).where(ScimToken.token_id == parsed.key_id)
    ).scalar_one_or_none()
    expected = row.digest if row is not None else b"\0" * 32
    matches = hmac.compare_digest(key_format.digest(_pepper(), parsed.secret), expected)
    if row is None or not matches:
        raise ScimError(401, "Invalid SCIM token")
    if row.revoked_at is not None:
        raise ScimError(401, "This SCIM token was replaced by a newer one")
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() >= 60:
        row.last_used_at = now  # at most one write a minute, as for keys
    return db.session.get(Tenant, row.tenant_id), row


def scim_actor(token: ScimToken, ip: str | None, user_agent: str | None) -> Actor:
    return Actor("scim", f"scim:{token.token_id}", ip, user_agent)


# --- representation -------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def resource(identity: ScimUser, *, base_url: str) -> dict:
    user = identity.user
    body: dict[str, Any] = {
        "schemas": [USER_SCHEMA],
        "id": identity.scim_id,
        "userName": user.email,
        "active": user.is_active,
        "emails": [{"value": user.email, "primary": True, "type": "work"}],
        "meta": {
            "resourceType": "User",
            "created": _iso(user.created_at),
            "lastModified": _iso(max(identity.updated_at, user.created_at)),
            "location": f"{base_url}/Users/{identity.scim_id}",
        },
    }
    if identity.external_id:
        body["externalId"] = identity.external_id
    return body


def _identity_for(user: User, *, now: datetime) -> ScimUser:
    identity = db.session.get(ScimUser, user.id)
    if identity is None:
        identity = ScimUser(
            user_id=user.id,
            tenant_id=user.tenant_id,
            scim_id=str(uuid.uuid4()),
            created_at=now,
            updated_at=now,
        )
        db.session.add(identity)
        db.session.flush()
    return identity


def get_identity(*, tenant: Tenant, scim_id: str) -> ScimUser:
    """The user behind a SCIM id in this tenant; 404 for any other (or a deleted one)."""
    if not isinstance(scim_id, str) or len(scim_id) > 64:
        raise ScimError(404, "No such user")
    identity = db.session.execute(
        select(ScimUser).where(ScimUser.scim_id == scim_id, ScimUser.tenant_id == tenant.id)
    ).scalar_one_or_none()
    if identity is None or identity.deleted_at is not None or identity.user.tenant_id != tenant.id:
        raise ScimError(404, "No such user")
    return identity


# --- list -----------------------------------------------------------------------------

_FILTER_RE = re.compile(r'^\s*userName\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)


def parse_filter(text: str | None) -> str | None:
    """`userName eq "x"` -> "x" (the one filter providers send to find a user); None for none."""
    if text is None or text == "":
        return None
    match = _FILTER_RE.match(text) if len(text) <= 600 else None
    if match is None:
        raise ScimError(400, 'Only the filter userName eq "..." is supported', "invalidFilter")
    try:
        value = json.loads(f'"{match.group(1)}"')
        value.encode("utf-8")  # a \ud800 escape decodes to a lone surrogate
    except (ValueError, UnicodeEncodeError):
        raise ScimError(400, "The filter value is not a valid string", "invalidFilter") from None
    if any(ord(ch) < 0x20 for ch in value):
        raise ScimError(400, "The filter value has control characters", "invalidFilter")
    return value


def _whole(value: str | None, *, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if not re.fullmatch(r"-?\d{1,20}", value):
        raise ScimError(400, f"{name} must be an integer", "invalidValue")
    # Clamped: no page lies past 2**31 users, and an OFFSET past 2**63 breaks PostgreSQL.
    return max(-(2**31), min(int(value), 2**31))


@dataclass
class Page:
    total: int
    start_index: int
    identities: list[ScimUser]


def list_users(
    *,
    tenant: Tenant,
    filter_text: str | None,
    start_index: str | None,
    count: str | None,
    now: datetime,
) -> Page:
    user_name = parse_filter(filter_text)
    # RFC 7644 §3.4.2.4: startIndex below 1 counts as 1, a negative count as 0.
    start = max(1, _whole(start_index, name="startIndex", default=1))
    size = min(MAX_COUNT, max(0, _whole(count, name="count", default=100)))
    deleted = select(ScimUser.user_id).where(ScimUser.deleted_at.is_not(None))
    query = select(User).where(User.tenant_id == tenant.id, User.id.not_in(deleted))
    if user_name is not None:
        query = query.where(User.email == user_name.strip().lower())
    total = db.session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    users = (
        db.session.execute(query.order_by(User.id).offset(start - 1).limit(size)).scalars().all()
        if size and start <= max(total, 0) + 1
        else []
    )
    # One query for the page's SCIM identities (the identity map then answers each get).
    db.session.execute(select(ScimUser).where(ScimUser.user_id.in_([u.id for u in users]))).all()
    return Page(
        total=total, start_index=start, identities=[_identity_for(u, now=now) for u in users]
    )


# --- changes ------------------------------------------------------------------------


def _body_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ScimError(400, "The body must be a JSON object", "invalidSyntax")
    return body


def _user_name(body: dict) -> str:
    value = body.get("userName")
    if not isinstance(value, str) or not value.strip():
        raise ScimError(400, "userName (the email address) is required", "invalidValue")
    try:
        return accounts.normalize_email(value)
    except InvalidInput:
        raise ScimError(400, "userName must be an email address", "invalidValue") from None


def _active(value: Any, *, field: str = "active") -> bool:
    # Some providers (Entra ID) send booleans as the strings "True"/"False".
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ScimError(400, f"{field} must be true or false", "invalidValue")


def _external_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 255 or not value.isprintable():
        raise ScimError(400, "externalId must be a string of up to 255 characters", "invalidValue")
    return value or None


def _record(action: str, user: User, actor: Actor, now: datetime, **details) -> None:
    audit.record(
        action,
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        **details,
    )


def create_user(*, tenant: Tenant, body: Any, actor: Actor, now: datetime) -> ScimUser:
    body = _body_object(body)
    email = _user_name(body)
    external_id = _external_id(body.get("externalId"))
    active = _active(body.get("active", True))
    if accounts.get_user_by_email(email) is not None:
        raise ScimError(409, "A user with this userName already exists", "uniqueness")
    user = accounts.create_user(
        tenant=tenant,
        email=email,
        password=None,  # provisioned people sign in through the tenant's provider
        role="member",
        now=now,
        actor=actor,
        check_rules=False,
    )
    identity = _identity_for(user, now=now)
    identity.external_id = external_id
    _record("scim.user_created", user, actor, now, scim_id=identity.scim_id, active=active)
    if not active:
        _set_active(identity, False, actor=actor, now=now)
    return identity


def _set_active(identity: ScimUser, active: bool, *, actor: Actor, now: datetime) -> None:
    user = identity.user
    if active == user.is_active:
        return
    if active:
        user.deactivated_at = None
        _record("scim.user_reactivated", user, actor, now, scim_id=identity.scim_id)
        return
    try:
        # The one deactivation: keys revoked, sessions and user access tokens ended.
        revoked = members.deactivate(tenant=user.tenant, user=user, actor=actor, now=now)
    except Conflict as exc:  # the last active admin
        raise ScimError(409, str(exc), "mutability") from None
    _record(
        "scim.user_deactivated", user, actor, now, scim_id=identity.scim_id, keys_revoked=revoked
    )


def _set_user_name(identity: ScimUser, email: str, *, actor: Actor, now: datetime) -> None:
    user = identity.user
    if email == user.email:
        return
    if accounts.get_user_by_email(email) is not None:
        raise ScimError(409, "A user with this userName already exists", "uniqueness")
    before = user.email
    user.email = email
    _record("scim.user_renamed", user, actor, now, scim_id=identity.scim_id, before=before)


def replace_user(*, identity: ScimUser, body: Any, actor: Actor, now: datetime) -> ScimUser:
    """PUT: userName, externalId and active as given (active defaults to true)."""
    body = _body_object(body)
    email = _user_name(body)
    external_id = _external_id(body.get("externalId"))
    active = _active(body.get("active", True))
    _set_user_name(identity, email, actor=actor, now=now)
    identity.external_id = external_id
    _set_active(identity, active, actor=actor, now=now)
    identity.updated_at = now
    return identity


def patch_user(*, identity: ScimUser, body: Any, actor: Actor, now: datetime) -> ScimUser:
    """PATCH (RFC 7644 §3.5.2): replace/add of active, userName, externalId, with a path or
    as a value object; attributes Keydesk does not keep are accepted and ignored."""
    body = _body_object(body)
    operations = body.get("Operations")
    if not isinstance(operations, list) or not operations or len(operations) > 100:
        raise ScimError(400, "Operations must be a list of 1 to 100 operations", "invalidSyntax")
    changes: list[tuple[str, Any]] = []
    for op in operations:
        if not isinstance(op, dict):
            raise ScimError(400, "Each operation must be an object", "invalidSyntax")
        kind = op.get("op")
        if not isinstance(kind, str) or kind.lower() not in ("replace", "add", "remove"):
            raise ScimError(400, "op must be add, replace or remove", "invalidSyntax")
        path = op.get("path")
        if path is not None and (not isinstance(path, str) or len(path) > 200):
            raise ScimError(400, "path must be a string", "invalidPath")
        if kind.lower() == "remove":
            if isinstance(path, str) and path.lower() == "externalid":
                changes.append(("externalid", None))
                continue
            if isinstance(path, str) and path.split(".")[0].split("[")[0].lower() in (
                IGNORED_ATTRIBUTES
            ):
                continue
            raise ScimError(400, f"{str(path)[:100]} cannot be removed", "mutability")
        if path:
            changes.append((path, op.get("value")))
        elif isinstance(op.get("value"), dict):
            changes.extend(op["value"].items())
        else:
            raise ScimError(
                400, "An operation without a path needs an object value", "invalidValue"
            )
    for path, value in changes:
        attribute = path.split(".")[0].split("[")[0].lower()
        if path.lower().startswith(USER_SCHEMA.lower() + ":"):
            attribute = path[len(USER_SCHEMA) + 1 :].split(".")[0].lower()
        elif path.lower().startswith("urn:"):
            continue  # an extension schema (enterprise User...): nothing Keydesk keeps
        if attribute == "active":
            _set_active(identity, _active(value), actor=actor, now=now)
        elif attribute == "username":
            if not isinstance(value, str):
                raise ScimError(400, "userName must be a string", "invalidValue")
            _set_user_name(identity, _user_name({"userName": value}), actor=actor, now=now)
        elif attribute == "externalid":
            identity.external_id = _external_id(value)
        elif attribute in IGNORED_ATTRIBUTES or attribute == "schemas":
            continue
        else:
            raise ScimError(400, f"Unknown attribute {str(path)[:100]}", "invalidPath")
    identity.updated_at = now
    return identity


def delete_user(*, identity: ScimUser, actor: Actor, now: datetime) -> None:
    """DELETE: deactivated (keys revoked, sessions ended), never removed: the audit log
    still names them. Afterwards the SCIM id answers 404, as RFC 7644 §3.6 asks."""
    _set_active(identity, False, actor=actor, now=now)
    identity.deleted_at = now
    identity.updated_at = now
    _record("scim.user_deleted", identity.user, actor, now, scim_id=identity.scim_id)
