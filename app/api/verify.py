"""/api/v1/keys/verify (Keydesk as key authority for other services) and
/api/v1/keys/report-leak (secret-scanning intake, no authentication)."""

from __future__ import annotations

import time

from flask import g, jsonify
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from app.api import bp, limits
from app.api.auth import authenticator, require_scopes
from app.api.common import anonymous_actor, json_body
from app.api.schemas import VerifyRequest, parse
from app.clock import utcnow
from app.errors import InvalidInput, KeyExpired, KeyInvalid, KeyRevoked
from app.extensions import db
from app.keys.leaks import report_leak
from app.keys.scopes import ALL_SCOPES
from app.keys.status import effective_end

REASONS = {KeyInvalid: "invalid", KeyExpired: "expired", KeyRevoked: "revoked"}


@bp.post("/keys/verify")
@require_scopes("keys:verify")
def verify_key():
    token = parse(VerifyRequest).key
    caller = g.key
    checker = authenticator()
    try:
        # The same verdict as the hot path: rotated keys in grace are valid, leaked and
        # rotated-past-grace keys are revoked.
        ctx = checker.authenticate(token.strip(), now=int(time.time()))
    except KeyInvalid:
        return jsonify(valid=False, reason="invalid")
    except (KeyExpired, KeyRevoked) as exc:
        # Raised only for the right secret. A user key is an authority for its own tenant
        # only: another tenant's key reads "invalid", or its state would leak across tenants.
        if not caller.is_client and checker.tenant_id_of(token.strip()) != caller.tenant_id:
            return jsonify(valid=False, reason="invalid")
        return jsonify(valid=False, reason=REASONS[type(exc)])
    # A user key is an authority for its own tenant only; a client key for every tenant.
    # A user access token is a terminal sign-in to Keydesk itself, no key for other services.
    if (not caller.is_client and ctx.tenant_id != caller.tenant_id) or ctx.kind == "user_token":
        return jsonify(valid=False, reason="invalid")
    return jsonify(
        valid=True,
        key_id=ctx.key_id,
        owner=ctx.user_email,
        tenant=ctx.tenant_slug,
        scopes=[s for s in ALL_SCOPES if s in ctx.scopes],
        expires_at=effective_end(ctx.expires_at, ctx.revoked_at),
        # So that a relying service can enforce the key's allow-list itself (null: any).
        allowed_ips=ctx.allowed_ips.split() if ctx.allowed_ips else None,
    )


@bp.post("/keys/report-leak")
def report_leaked_key():
    limits.check_leak_report()
    try:
        data = json_body()
    except (InvalidInput, UnsupportedMediaType, RequestEntityTooLarge, BadRequest):
        data = {}  # garbage, even too much of it, gets the same answer: 202
    if report_leak(
        token=data.get("key"),
        source_url=data.get("source_url"),
        now=utcnow(),
        actor=anonymous_actor("leak-report"),
    ):
        db.session.commit()
    response = jsonify(
        accepted=True,
        message="Report received. A live Keydesk key in it, if any, is now revoked.",
    )
    response.status_code = 202
    return response
