"""/api/v1/oauth/device_authorization and /api/v1/oauth/token: the terminal sign-in
(RFC 8628). Parameters come form-encoded (RFC 6749 section 4.1.3 / RFC 8628 section 3.1);
errors are RFC 6749 section 5.2 JSON, never cached."""

from __future__ import annotations

import math
import time

from flask import current_app, jsonify, request, url_for
from limits import parse as parse_limit

from app.api import bp
from app.api.common import anonymous_actor
from app.clock import utcnow
from app.extensions import db, limiter
from app.keys import device, tokens
from app.net import client_ip

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
PARAMETERS = ("grant_type", "device_code", "client_id", "scope", "token", "token_type_hint")


def _params() -> dict[str, str | None]:
    """The form parameters; each may appear at most once (RFC 6749 section 3.2)."""
    if request.mimetype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise device.OAuthError(
            "invalid_request", "Send the parameters as application/x-www-form-urlencoded"
        )
    form = request.form
    for name in PARAMETERS:
        if len(form.getlist(name)) > 1:
            raise device.OAuthError("invalid_request", f"Parameter {name} given more than once")
    return {name: form.get(name) for name in PARAMETERS}


def _error(exc: device.OAuthError):
    response = jsonify(error=exc.error, error_description=str(exc))
    response.status_code = exc.status
    response.headers.update(NO_STORE)
    return response


def _public_url(path: str) -> str:
    base = (current_app.config.get("KEYDESK_BASE_URL") or "").rstrip("/")
    return (base or request.url_root.rstrip("/")) + path


def _rate_limited(kind: str):
    """Count one request from this address against KEYDESK_LOGIN_RATE_LIMIT; a 429 answer
    with Retry-After when over it, else None. (Flask-Limiter's decorator would answer
    without Retry-After here: its header hook is not installed, see create_app.)"""
    item = parse_limit(current_app.config["KEYDESK_LOGIN_RATE_LIMIT"])
    key = f"{kind}:{client_ip()}"
    try:
        if limiter.limiter.hit(item, key):
            return None
        reset_at, _ = limiter.limiter.get_window_stats(item, key)
    except Exception:  # a limiter fault never fails the request
        current_app.logger.warning("rate limit storage unavailable", exc_info=True)
        return None
    response = jsonify(error="rate_limited", error_description=f"Rate limit of {item} exceeded")
    response.status_code = 429
    response.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
    response.headers.update(NO_STORE)
    return response


@bp.post("/oauth/device_authorization")
def device_authorization():
    limited = _rate_limited("device-authz")
    if limited is not None:
        return limited
    try:
        params = _params()
        row, device_code, user_code = device.start(
            client_id=params["client_id"],
            scope=params["scope"],
            ip=client_ip(),
            user_agent=request.user_agent.string,
            now=utcnow(),
        )
    except device.OAuthError as exc:
        return _error(exc)
    db.session.commit()
    uri = _public_url(url_for("device.enter_code"))
    response = jsonify(
        device_code=device_code,
        user_code=user_code,
        verification_uri=uri,
        verification_uri_complete=f"{uri}?user_code={user_code}",
        expires_in=int((row.expires_at - row.created_at).total_seconds()),
        interval=row.interval,
    )
    response.headers.update(NO_STORE)  # the device code is a secret
    return response


@bp.post("/oauth/token")
def token():
    now = utcnow()
    try:
        params = _params()
        row, full = device.exchange(
            grant_type=params["grant_type"],
            device_code=params["device_code"],
            client_id=params["client_id"],
            now=now,
            actor=anonymous_actor(),
        )
    except device.OAuthError as exc:
        db.session.commit()  # keep the polling state (last poll, slowed-down interval)
        return _error(exc)
    scope = " ".join(row.scope_list)
    db.session.commit()
    response = jsonify(
        access_token=full,
        token_type="Bearer",  # noqa: S106  (the RFC 6749 word, not a secret)
        expires_in=int(tokens.token_lifetime().total_seconds()),
        scope=scope,
    )
    response.headers.update(NO_STORE)
    return response


@bp.post("/oauth/revoke")
def revoke():
    """RFC 7009 token revocation for user access tokens (`keydesk logout`): 200 whether or
    not the token was valid, so the answer tells a guesser nothing."""
    limited = _rate_limited("token-revoke")
    if limited is not None:
        return limited
    try:
        params = _params()
        device.check_client(params["client_id"])
        if not params["token"]:
            raise device.OAuthError("invalid_request", "Missing parameter: token")
    except device.OAuthError as exc:
        return _error(exc)
    if tokens.revoke_presented_token(token=params["token"], now=utcnow(), actor=anonymous_actor()):
        db.session.commit()
    response = jsonify(revoked=True)
    response.headers.update(NO_STORE)
    return response
