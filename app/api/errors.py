"""RFC 6750 JSON errors for everything under /api/v1: one place maps domain exceptions."""

from __future__ import annotations

import json
import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from app.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    IpNotAllowed,
    KeyExpired,
    KeyInvalid,
    KeyRevoked,
    NotFound,
    PolicyViolation,
    ScopeMissing,
)

log = logging.getLogger(__name__)
REALM = 'Bearer realm="keydesk"'
HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "server_error",
}


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


def error_response(
    status: int, error: str, description: str, *, www_authenticate: str | None = None
):
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    if www_authenticate is not None:
        response.headers["WWW-Authenticate"] = www_authenticate
    return response


def challenge(error: str | None = None, description: str | None = None, scope: str = "") -> str:
    parts = [REALM]
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{_quote(description)}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return ", ".join(parts)


def _with_field(response, field: str | None):
    """A refusal names the input it concerns in `field` (the exception carries it), so a
    client can point at it without parsing the description."""
    if field:
        response.set_data(
            json.dumps({**json.loads(response.get_data()), "field": field}, separators=(",", ":"))
        )
    return response


def forbidden(description: str):
    """403 forbidden, with the RFC 6750 challenge every 401 and 403 here carries."""
    return error_response(
        403, "forbidden", description, www_authenticate=challenge("forbidden", description)
    )


def http_error_json(exc: HTTPException):
    status = exc.code or 500
    description = "Internal server error" if status >= 500 else (exc.description or exc.name)
    response = error_response(status, HTTP_CODES.get(status, "invalid_request"), description)
    for name, value in exc.get_headers():
        if name in ("Retry-After", "Allow"):
            response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    from app.api.auth import BadRequestToken, MissingToken
    from app.metrics import count_outcome  # keydesk_api_auth_total: refusals counted here

    def unauthorized(error: str, description: str, outcome: str):
        # Every 401 counts against KEYDESK_AUTH_FAILURE_LIMIT for the client address.
        from app.api.limits import count_auth_failure

        count_outcome(outcome)
        count_auth_failure()
        return error_response(
            401, error, description, www_authenticate=challenge(error, description)
        )

    @app.errorhandler(MissingToken)
    def _missing(_exc):
        from app.api.limits import count_auth_failure

        count_auth_failure()
        count_outcome("invalid")
        return error_response(
            401, "invalid_request", "Missing Authorization: Bearer header",
            www_authenticate=REALM,
        )  # fmt: skip

    @app.errorhandler(BadRequestToken)
    def _bad_request(exc):
        count_outcome("invalid")
        return error_response(
            400, "invalid_request", str(exc),
            www_authenticate=challenge("invalid_request", str(exc)),
        )  # fmt: skip

    for exc_type, outcome in ((KeyInvalid, "invalid"), (KeyExpired, "expired"),
                              (KeyRevoked, "revoked")):  # fmt: skip
        app.register_error_handler(
            exc_type, lambda exc, outcome=outcome: unauthorized("invalid_token", str(exc), outcome)
        )

    @app.errorhandler(ScopeMissing)
    def _scope(exc: ScopeMissing):
        scope = " ".join(exc.scopes)
        count_outcome("insufficient_scope")
        return error_response(
            403, "insufficient_scope", str(exc),
            www_authenticate=challenge("insufficient_scope", str(exc), scope),
        )  # fmt: skip

    @app.errorhandler(IpNotAllowed)
    def _ip(exc):
        count_outcome("ip_not_allowed")
        return forbidden(str(exc))

    @app.errorhandler(Forbidden)
    def _forbidden(exc):
        return forbidden(str(exc) or "Forbidden")

    @app.errorhandler(NotFound)
    def _not_found(exc):
        return error_response(404, "not_found", str(exc))

    @app.errorhandler(InvalidInput)
    def _invalid(exc: InvalidInput):
        return _with_field(error_response(400, "invalid_request", str(exc)), exc.field)

    @app.errorhandler(PolicyViolation)
    def _policy(exc: PolicyViolation):
        return _with_field(error_response(400, "policy_violation", str(exc)), exc.field)

    @app.errorhandler(Conflict)
    def _conflict(exc):
        return error_response(409, "conflict", str(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return exc
        if not request.path.startswith("/api/"):
            raise exc
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "server_error", "Internal server error")
