"""/api/v1/openapi.json: the OpenAPI 3.1 document of the JSON API. The bodies (components)
are generated from the pydantic declarations in app/api/schemas.py, which the views also
parse requests with; the paths, scopes and error answers are listed here.

tests/test_api_openapi.py checks that it is valid, that every /api/v1 route is in it, and
runs schemathesis against the live app so the document and the behaviour cannot drift.
"""

from __future__ import annotations

from functools import cache

from flask import jsonify

from app.api import bp
from app.api.schemas import component_schemas
from app.keys.scopes import ALL_SCOPES

STATUSES = ["active", "expiring", "expired", "revoked", "rotated", "leaked"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


SCOPE = {"type": "string", "enum": list(ALL_SCOPES)}

# Every body the API takes or gives, generated from its declaration in app/api/schemas.py.
SCHEMAS: dict = component_schemas()

_RATE_HEADERS = {
    name: {"schema": {"type": "string"}, "description": text}
    for name, text in (
        ("Retry-After", "seconds until the limit resets"),
        ("X-RateLimit-Limit", "requests allowed in the window"),
        ("X-RateLimit-Remaining", "requests left in the window"),
        ("X-RateLimit-Reset", "Unix time the window resets"),
        ("RateLimit-Limit", "requests allowed in the window"),
        ("RateLimit-Remaining", "requests left in the window"),
        ("RateLimit-Reset", "seconds until the window resets"),
    )
}
_CHALLENGE = {
    "WWW-Authenticate": {
        "schema": {"type": "string"},
        "description": 'Bearer realm="keydesk" with error= (and scope= on 403), RFC 6750',
    }
}
ERROR = _ref("Error")
RESPONSES: dict = {
    "BadRequest": _json(ERROR, "invalid_request (bad body, field or header) or policy_violation"),
    "Unauthorized": {
        **_json(ERROR, "no key (bare challenge) or invalid_token: unknown, expired, revoked"),
        "headers": _CHALLENGE,
    },
    "Forbidden": {
        **_json(ERROR, "insufficient_scope, or forbidden (IP allow-list, client key)"),
        "headers": _CHALLENGE,
    },
    "NotFound": _json(ERROR, "not_found (also for another tenant's objects)"),
    "Conflict": _json(ERROR, "conflict: already revoked or rotated"),
    "TooLarge": _json(ERROR, "request_too_large: the body exceeds 64 KiB"),
    "UnsupportedMediaType": _json(ERROR, "unsupported_media_type: send application/json"),
    "RateLimited": {**_json(ERROR, "rate_limited"), "headers": _RATE_HEADERS},
    "ServerError": _json(ERROR, "server_error (no details are exposed)"),
    "Unavailable": _json(ERROR, "temporarily_unavailable: the database is down"),
}


def _errors(*codes: int) -> dict:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        413: "TooLarge",
        415: "UnsupportedMediaType",
        429: "RateLimited",
        500: "ServerError",
        503: "Unavailable",
    }
    return {str(c): {"$ref": f"#/components/responses/{names[c]}"} for c in codes}


AUTHED = (400, 401, 403, 429, 500, 503)
BODY = (413, 415)


def _op(
    summary: str,
    ok: dict,
    *,
    scopes: str | None = "",
    errors: tuple[int, ...] = AUTHED,
    body: str | None = None,
    body_required: bool = True,
    params: list | None = None,
    description: str = "",
) -> dict:
    op: dict = {"summary": summary, "responses": {**ok, **_errors(*sorted(set(errors)))}}
    if description:
        op["description"] = description
    if scopes is None:
        op["security"] = []
    else:
        op["x-required-scopes"] = scopes.split()
        if scopes:
            op["description"] = (description + f"\n\nScope: `{scopes}`.").strip()
    if body:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = params
    return op


def _form_op(
    summary: str, body: str, ok: dict, *, limited: bool = False, description: str = ""
) -> dict:
    """An OAuth endpoint: form-encoded parameters, RFC 6749 errors, no bearer key."""
    errors = _json(_ref("OAuthError"), "RFC 6749 / RFC 8628 error")
    op = _op(summary, ok, scopes=None, errors=(413, 500, 503), description=description)
    op["responses"]["400"] = errors
    if limited:
        op["responses"].update(_errors(429))
    op["requestBody"] = {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": _ref(body)}},
    }
    return {"post": op}


def _path(name: str, description: str) -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


SLUG = _path("slug", "tenant slug; a user key may name only its own tenant")
KEY_ID = _path("key_id", "the key's public id")
RESOURCE_ID = _path("resource_id", "the resource id")
TENANT_Q = _query(
    "tenant", {"type": "string"}, "tenant slug: required for client keys; a user key may omit it"
)
KEY_MGMT = (
    "Acts on the caller's own keys: the caller must be a user key of `slug` (another "
    "tenant's slug is 404; a client key owns no keys and gets 403)."
)


def _ok(status: int, schema: dict | None, description: str) -> dict:
    if schema is None:
        return {str(status): {"description": description}}
    return {str(status): _json(schema, description)}


def _paths() -> dict:
    keys = "/api/v1/tenant/{slug}/api-keys"
    admin = "/api/v1/tenant/{slug}/admin"
    array = {"type": "array"}
    return {
        "/api/v1/ping": {
            "get": _op(
                "Liveness, no database work",
                _ok(200, {"type": "object", "properties": {"pong": {"const": True}}}, "pong"),
                scopes=None,
                errors=(500,),
            )
        },
        "/api/v1/me": {
            "get": _op("The calling key, its owner and tenant", _ok(200, _ref("Me"), "me"))
        },
        f"{keys}/create": {
            "post": _op(
                "Create a key for the caller's owner",
                _ok(201, _ref("NewKey"), "the new key, with its secret shown once"),
                scopes="keys:write",
                errors=AUTHED + BODY + (404,),
                body="KeyCreate",
                params=[SLUG],
                description=KEY_MGMT + " Tenant policy applies (400 policy_violation).",
            )
        },
        f"{keys}/list": {
            "get": _op(
                "The caller's own keys (no secrets)",
                _ok(200, {**array, "items": _ref("Key")}, "keys, newest first"),
                scopes="keys:read",
                errors=AUTHED + (404,),
                params=[SLUG],
                description=KEY_MGMT,
            )
        },
        f"{keys}/{{key_id}}": {
            "get": _op(
                "One of the caller's own keys",
                _ok(200, _ref("Key"), "the key"),
                scopes="keys:read",
                errors=AUTHED + (404,),
                params=[SLUG, KEY_ID],
                description=KEY_MGMT,
            ),
            "patch": _op(
                "Change one of the caller's own keys (name, description, scopes, expiry,"
                " allow-list)",
                _ok(200, _ref("Key"), "the key as changed"),
                scopes="keys:write",
                errors=AUTHED + BODY + (404, 409),
                body="KeyUpdate",
                params=[SLUG, KEY_ID],
                description=KEY_MGMT + " A key may not widen itself or another key beyond its"
                " own scopes, lifetime and allow-list; tenant policy applies.",
            ),
        },
        f"{keys}/{{key_id}}/revoke": {
            "post": _op(
                "Revoke one of the caller's own keys at once",
                _ok(200, _ref("RevokeResult"), "revoked"),
                scopes="keys:write",
                errors=AUTHED + BODY + (404, 409),
                params=[SLUG, KEY_ID],
                description=KEY_MGMT,
            )
        },
        f"{keys}/{{key_id}}/rotate": {
            "post": _op(
                "Rotate: a successor with the same name, scopes and lifetime",
                _ok(201, _ref("NewKey"), "the successor, with its secret shown once"),
                scopes="keys:write",
                errors=AUTHED + BODY + (404, 409),
                body="KeyRotate",
                body_required=False,
                params=[SLUG, KEY_ID],
                description=KEY_MGMT + " The old key keeps working for grace_hours.",
            )
        },
        f"{admin}/api-keys": {
            "get": _op(
                "Every key of the tenant (tenant admins)",
                _ok(200, {**array, "items": _ref("AdminKey")}, "keys"),
                scopes="admin:read",
                errors=AUTHED + (404,),
                params=[
                    SLUG,
                    _query("status", {"type": "string", "enum": STATUSES}, "key status"),
                    _query("owner", {"type": "string"}, "owner email"),
                    _query("scope", SCOPE, "keys holding this scope"),
                    _query("expiring_within_days", {"type": "integer", "minimum": 0}, ""),
                    _query("unused_for_days", {"type": "integer", "minimum": 0}, ""),
                    _query("q", {"type": "string"}, "name contains"),
                ],
                description="The key's owner must be an admin of `slug`.",
            )
        },
        f"{admin}/api-keys/{{key_id}}/revoke": {
            "post": _op(
                "Revoke any key of the tenant (tenant admins)",
                _ok(200, _ref("RevokeResult"), "revoked"),
                scopes="admin:write",
                errors=AUTHED + BODY + (404, 409),
                params=[SLUG, KEY_ID],
                description="The key's owner must be an admin of `slug`.",
            )
        },
        "/api/v1/tenant/{slug}/audit-events": {
            "get": _op(
                "The tenant's audit log, newest first (tenant admins)",
                _ok(200, _ref("AuditPage"), "a page of events"),
                scopes="admin:read",
                errors=AUTHED + (404,),
                params=[
                    SLUG,
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                        "page size",
                    ),
                    _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                ],
                description="The key's owner must be an admin of `slug`.",
            )
        },
        "/api/v1/resources": {
            "get": _op(
                "The tenant's resources",
                _ok(200, {**array, "items": _ref("Resource")}, "resources, newest first"),
                scopes="api:read",
                errors=AUTHED + (404,),
                params=[TENANT_Q],
            ),
            "post": _op(
                "Create a resource",
                _ok(201, _ref("Resource"), "created"),
                scopes="api:write",
                errors=AUTHED + BODY + (404,),
                body="ResourceCreate",
                params=[TENANT_Q],
            ),
        },
        "/api/v1/resources/{resource_id}": {
            "get": _op(
                "One resource",
                _ok(200, _ref("Resource"), "the resource"),
                scopes="api:read",
                errors=AUTHED + (404,),
                params=[RESOURCE_ID, TENANT_Q],
            ),
            "delete": _op(
                "Delete a resource",
                _ok(204, None, "deleted"),
                scopes="api:write",
                errors=AUTHED + (404,),
                params=[RESOURCE_ID, TENANT_Q],
            ),
        },
        "/api/v1/keys/verify": {
            "post": _op(
                "Verify a key (Keydesk as key authority)",
                _ok(200, _ref("VerifyResult"), "the verdict, valid or not"),
                scopes="keys:verify",
                errors=AUTHED + BODY,
                body="VerifyRequest",
                description="Needs `keys:verify` or a client key. A user key verifies keys of "
                "its own tenant only (others read as invalid).",
            )
        },
        "/api/v1/keys/report-leak": {
            "post": _op(
                "Report a leaked key (no authentication)",
                _ok(202, _ref("Accepted"), "always, whatever the body held"),
                scopes=None,
                errors=(413, 429, 500, 503),
                body="LeakReport",
                body_required=False,
                description="A genuine key is revoked at once with status `leaked`. The answer "
                "never depends on the key. Rate limited per client address.",
            )
        },
        "/api/v1/oauth/device_authorization": _form_op(
            "Start a terminal sign-in (RFC 8628 device authorization)",
            "DeviceAuthorizationRequest",
            _ok(200, _ref("DeviceAuthorization"), "codes for the terminal and its user"),
            limited=True,
        ),
        "/api/v1/oauth/token": _form_op(
            "Poll for the user access token (RFC 8628 section 3.4)",
            "TokenRequest",
            _ok(200, _ref("Token"), "approved: the token, exchangeable once"),
            description="400 with authorization_pending, slow_down (polled sooner than "
            "`interval`), access_denied, expired_token or invalid_grant (unknown or already "
            "exchanged) until approved.",
        ),
        "/api/v1/oauth/revoke": _form_op(
            "End a user access token (RFC 7009; `keydesk logout`)",
            "RevokeTokenRequest",
            _ok(200, _ref("TokenRevoked"), "whatever the token was: the answer tells nothing"),
            limited=True,
        ),
        "/api/v1/openapi.json": {
            "get": _op(
                "This document",
                _ok(200, {"type": "object"}, "OpenAPI 3.1"),
                scopes=None,
                errors=(500,),
            )
        },
    }


@cache
def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Keydesk API",
            "version": "1",
            "description": "Self-hosted API keys. Send `Authorization: Bearer <key>`; never "
            "put a key in the URL (that is refused with 400). Times are Unix seconds.",
        },
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "kd_<key id>_<secret><checksum>",
                }
            },
            "schemas": SCHEMAS,
            "responses": RESPONSES,
        },
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(document())
