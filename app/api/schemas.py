"""The JSON API's request and response bodies, declared once (pydantic).

app/api/openapi.py generates the document's `components.schemas` from these classes, and
the views parse request bodies with `parse(Model)`, so what the document promises and what
the server accepts come from one declaration. Field rules that depend on the tenant or
the caller (which scopes may be granted, policy lifetimes, name characters) stay in the
services and raise InvalidInput naming the field, as before.

Not on the hot path: /api/v1/me and the key lookup build their answers by hand (a
pydantic model per API call would cost more than the whole authentication).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError
from pydantic.json_schema import models_json_schema

from app.api.common import json_body
from app.errors import InvalidInput
from app.keys.scopes import ALL_SCOPES

Status = Literal["active", "expiring", "expired", "revoked", "rotated", "leaked"]

# Documented as an enum; unknown scopes are refused by keys.scopes.normalize, which names
# the scope ("Unknown scope: x"), rather than by a generic enum error here.
ScopeName = Annotated[str, Field(json_schema_extra={"enum": list(ALL_SCOPES)})]
Unix = Annotated[int, Field(description="Unix seconds")]
UnixOrNull = Annotated[int | None, Field(description="Unix seconds; null for never")]


class Body(BaseModel):
    """A request body: strict types (true is no integer, "5" is no number), extra keys
    ignored (clients may send more than this version knows)."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- errors ---------------------------------------------------------------------------


class Error(Out):
    error: str = Field(
        description="invalid_request, invalid_token, insufficient_scope, forbidden,"
        " not_found, conflict, policy_violation, rate_limited, ..."
    )
    error_description: str
    field: str | None = Field(None, description="the input a 400 refusal concerns")


class OAuthError(Out):
    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_scope",
        "invalid_grant",
        "unsupported_grant_type",
        "authorization_pending",
        "slow_down",
        "access_denied",
        "expired_token",
    ] = Field(description="RFC 6749 section 5.2 and RFC 8628 section 3.5")
    error_description: str


# --- keys -----------------------------------------------------------------------------


class Key(Out):
    id: str = Field(description="the public key id")
    name: str
    description: str | None = None
    scopes: list[ScopeName]
    created_at: Unix
    expires_at: UnixOrNull = Field(
        description="effective end of life: expiry, or the end of a rotation's grace period"
        " when that comes first; null = never"
    )
    last_used: UnixOrNull
    revoked: bool
    status: Status | None = None
    allowed_ips: list[str] | None = Field(None, description="CIDR allow-list; null = any address")


class NewKey(Key):
    api_key: str = Field(description="the full key; shown in this response only")


class AdminKey(Key):
    owner: str | None = Field(description="owner's email")
    status: Status


# Limits that keys.service checks with its own words (after trimming names, say) are
# documented here with _doc(...), not enforced twice.
def _doc(**schema) -> dict:
    return {"json_schema_extra": schema}


class KeyCreate(Body):
    name: str = Field(**_doc(minLength=1, maxLength=100))
    description: str | None = Field(None, **_doc(maxLength=100))
    scopes: list[ScopeName] = Field(
        description="a subset of the calling key's scopes (admin:all covers all)",
        **_doc(minItems=1),
    )
    expires_in_days: int = Field(
        0, description="0 = never (where tenant policy allows)", **_doc(minimum=0, maximum=3650)
    )
    allowed_ips: list[str] | None = Field(
        None,
        description="IPv4/IPv6 addresses or CIDR ranges the key may be used from",
        **_doc(maxItems=50),
    )


class KeyRotate(Body):
    grace_hours: int = Field(
        24, description="how long the old key keeps working", **_doc(minimum=0, maximum=168)
    )
    expires_in_days: int | None = Field(
        None,
        description="the successor's lifetime; absent keeps the old key's where policy allows",
        **_doc(minimum=0, maximum=3650),
    )


def _optional(**schema) -> dict:
    """A PATCH field: may be left out (no default in the document: absent means unchanged)."""

    def extra(s: dict) -> None:
        s.pop("default", None)
        s.update(schema)

    return {"default": None, "json_schema_extra": extra}


class KeyUpdate(Body):
    """PATCH: only the fields given change (`model_fields_set`); null clears description,
    expires_at (never) and allowed_ips (any address); name and scopes cannot be null."""

    name: str = Field(**_optional(minLength=1, maxLength=100))
    description: str | None = Field(**_optional(maxLength=100))
    scopes: list[ScopeName] = Field(**_optional(minItems=1))
    expires_at: UnixOrNull = Field(**_optional())
    allowed_ips: list[str] | None = Field(**_optional(maxItems=50))


class RevokeResult(Out):
    success: Literal[True]
    message: str


# --- /me ------------------------------------------------------------------------------


class MeKey(Out):
    id: str
    kind: Literal["user", "client", "user_token"] | None = Field(
        None, description="user_token: a terminal sign-in (keydesk login)"
    )
    name: str
    scopes: list[ScopeName]
    created_at: Unix
    expires_at: UnixOrNull
    last_used: UnixOrNull


class MeUser(Out):
    email: str
    role: Literal["admin", "member"]


class MeTenant(Out):
    slug: str
    name: str


class Me(Out):
    key: MeKey
    user: MeUser | None = Field(description="null for a client key")
    tenant: MeTenant | None = Field(description="null for a client key")


# --- resources ------------------------------------------------------------------------


class Resource(Out):
    id: str
    name: str
    type: str
    created_at: Unix


class ResourceCreate(Body):
    name: str = Field(**_doc(minLength=1, maxLength=200))
    type: str = Field(**_doc(minLength=1, maxLength=64))


# --- verification and leaks -----------------------------------------------------------


class VerifyRequest(Body):
    key: str = Field(description="the full key to check")


class VerifyValid(Out):
    valid: Literal[True]
    key_id: str
    owner: str | None = Field(description="email; null: client")
    tenant: str | None = Field(description="slug; null: client")
    scopes: list[ScopeName]
    expires_at: UnixOrNull


class VerifyInvalid(Out):
    valid: Literal[False]
    reason: Literal["invalid", "expired", "revoked"]


class VerifyResult(RootModel[VerifyValid | VerifyInvalid]):
    pass


class LeakReport(Out):
    # Never validated: report-leak answers 202 to anything, so it is no oracle.
    key: str | None = Field(None, description="the leaked key")
    source_url: str | None = Field(None, description="where it was found")


class Accepted(Out):
    accepted: Literal[True]
    message: str | None = None


# --- audit ----------------------------------------------------------------------------


class AuditEvent(Out):
    id: int | str | None = None
    created_at: Unix | None = None
    action: str | None = None
    actor_type: str | None = None
    actor: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    target_type: str | None = None
    target: str | None = None
    details: dict[str, Any] | None = None


class AuditPage(Out):
    events: list[AuditEvent]
    next_cursor: str | None


# --- terminal sign-in (form-encoded, RFC 6749 / RFC 8628 / RFC 7009) ------------------


class DeviceAuthorizationRequest(Body):
    client_id: Literal["keydesk-cli"]
    scope: str | None = Field(
        None, description="space-separated; fewer than the user may grant (optional)"
    )


class DeviceAuthorization(Out):
    device_code: str = Field(description="secret: poll the token with it")
    user_code: str = Field(pattern="^[A-Z]{4}-[A-Z]{4}$")
    verification_uri: str = Field(description="/device")
    verification_uri_complete: str
    expires_in: int = Field(description="seconds")
    interval: int = Field(description="seconds between polls")


class TokenRequest(Body):
    grant_type: Literal["urn:ietf:params:oauth:grant-type:device_code"]
    device_code: str
    client_id: Literal["keydesk-cli"]


class Token(Out):
    access_token: str = Field(description="a user access token, kdu_...")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="seconds")
    scope: str = Field(description="space-separated")


class RevokeTokenRequest(Body):
    client_id: Literal["keydesk-cli"]
    token: str = Field(description="the user access token to end")
    token_type_hint: str | None = None


class TokenRevoked(Out):
    revoked: Literal[True]


COMPONENTS: tuple[type[BaseModel], ...] = (
    Error, Key, NewKey, AdminKey, KeyCreate, KeyRotate, RevokeResult, Me, Resource,
    ResourceCreate, VerifyRequest, VerifyResult, LeakReport, Accepted, AuditEvent, AuditPage,
    KeyUpdate, OAuthError, DeviceAuthorizationRequest, DeviceAuthorization, TokenRequest, Token,
    RevokeTokenRequest, TokenRevoked,
)  # fmt: skip


def component_schemas() -> dict[str, dict]:
    """JSON Schema (2020-12, as OpenAPI 3.1 uses) of every model, keyed by class name,
    with references pointing into components.schemas. Requests are described as the
    server validates them, responses as it serializes them."""
    modes = [(m, "validation" if issubclass(m, Body) else "serialization") for m in COMPONENTS]
    _, top = models_json_schema(modes, ref_template="#/components/schemas/{model}")
    return dict(top["$defs"])


# --- parsing request bodies -----------------------------------------------------------

_KIND_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "list_type": "a list",
    "bool_type": "a boolean",
    "dict_type": "an object",
}

M = TypeVar("M", bound=Body)


def _message(error: dict) -> tuple[str, str | None]:
    loc = error.get("loc") or ()
    if not loc:
        return "The request body must be a JSON object", None
    name, kind = str(loc[0]), error.get("type", "")
    if kind == "missing":
        return f"Missing field: {name}", name
    if len(loc) > 1:  # an item of a list
        return f"Field {name} must be a list of strings", name
    if kind in _KIND_WORDS:
        return f"Field {name} must be {_KIND_WORDS[kind]}", name
    return f"Field {name} is not valid", name


def parse(model: type[M], *, required: bool = True) -> M:
    """The request's JSON body as `model`; InvalidInput naming the first bad field.

    A field sent as null reads as absent (its default), as the API always did."""
    data = json_body(required=required)
    return validate(model, {k: v for k, v in data.items() if v is not None})


def validate(model: type[M], data: dict) -> M:
    """`data` as `model`, nulls as sent (a PATCH's null clears a field: the fields sent are
    the model's `model_fields_set`); InvalidInput naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, field = _message(exc.errors(include_url=False)[0])
        raise InvalidInput(message, field=field) from None
