"""/api/v1/tenant/<slug>/api-keys/...: a key manages its owner's own keys.

The caller must be a user key of <slug> (another tenant's slug is 404; a client key owns
no keys and gets 403). New and rotated keys may carry only scopes the caller holds.
"""

from __future__ import annotations

from flask import g, jsonify

from app.api import bp, schemas
from app.api.auth import require_scopes
from app.api.common import json_body, key_actor, key_owner
from app.api.schemas import parse
from app.clock import utcnow
from app.errors import InvalidInput
from app.extensions import db
from app.keys import scopes as scope_rules
from app.keys import service as keys
from app.keys.authn import validate_allowed_ips
from app.models import ApiKey


def _lifetime_bound(ctx) -> int | None:
    """A key may not create keys that outlive it; a user access token is a signed-in user,
    bound by tenant policy only (SPEC "Signing in from a terminal")."""
    return None if ctx.kind == keys.USER_TOKEN else ctx.expires_at


def key_out(key: ApiKey, now) -> dict:
    data = keys.key_json(key, now)
    data["allowed_ips"] = key.allowed_ips.split() if key.allowed_ips else None
    return data


def _created(key: ApiKey, full_key: str, now):
    # `api_key` appears in this one response only; nothing may store it.
    response = jsonify({**key_out(key, now), "api_key": full_key})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/tenant/<slug>/api-keys/create")
@require_scopes("keys:write")
def create_key(slug: str):
    owner = key_owner(slug, g.key)
    body = parse(schemas.KeyCreate)
    name, scopes, days, ips = body.name, body.scopes, body.expires_in_days, body.allowed_ips
    try:
        allowed_ips = validate_allowed_ips(ips) if ips is not None else None
    except ValueError as exc:
        raise InvalidInput(str(exc), field="allowed_ips") from None
    now = utcnow()
    allowed_ips = keys.limit_to_parent(
        parent_allowed_ips=g.key.allowed_ips,
        parent_expires_at=_lifetime_bound(g.key),
        allowed_ips=allowed_ips,
        expires_in_days=days,
        now=now,
    )
    key, full_key = keys.issue_key(
        user=owner,
        name=name,
        scopes=scopes,
        expires_in_days=days,
        now=now,
        actor=key_actor(),
        granting_scopes=g.key.scopes,
        allowed_ips=allowed_ips,
    )
    db.session.commit()
    return _created(key, full_key, now)


@bp.get("/tenant/<slug>/api-keys/list")
@require_scopes("keys:read")
def list_keys(slug: str):
    owner = key_owner(slug, g.key)
    now = utcnow()
    return jsonify([key_out(key, now) for key in keys.list_user_keys(user=owner)])


@bp.get("/tenant/<slug>/api-keys/<key_id>")
@require_scopes("keys:read")
def get_key(slug: str, key_id: str):
    owner = key_owner(slug, g.key)
    return jsonify(key_out(keys.get_user_key(user=owner, key_id=key_id), utcnow()))


@bp.post("/tenant/<slug>/api-keys/<key_id>/revoke")
@require_scopes("keys:write")
def revoke_key(slug: str, key_id: str):
    owner = key_owner(slug, g.key)
    json_body(required=False)  # a body is optional, but if sent it must be JSON
    key = keys.get_user_key(user=owner, key_id=key_id)
    keys.revoke_key(key=key, now=utcnow(), actor=key_actor())
    db.session.commit()
    return jsonify(success=True, message="API key revoked successfully")


@bp.post("/tenant/<slug>/api-keys/<key_id>/rotate")
@require_scopes("keys:write")
def rotate_key(slug: str, key_id: str):
    owner = key_owner(slug, g.key)
    grace_hours = parse(schemas.KeyRotate, required=False).grace_hours
    key = keys.get_user_key(user=owner, key_id=key_id)
    # Rotation hands out a new secret with the old key's scopes: the same subset rule as create.
    refused = scope_rules.missing(g.key.scopes, key.scope_list)
    if refused:
        raise InvalidInput(
            "A key can only rotate keys with a subset of its own scopes; not held: "
            + ", ".join(refused),
            field="scopes",
        )
    now = utcnow()
    # The successor keeps the old key's allow-list (none: any address) and lifetime;
    # both must lie within the caller's own.
    keys.limit_to_parent(
        parent_allowed_ips=g.key.allowed_ips,
        parent_expires_at=_lifetime_bound(g.key),
        allowed_ips=key.allowed_ips or keys.ANY_ADDRESS,
        expires_in_days=keys.lifetime_days_of(key),
        now=now,
    )
    new_key, full_key = keys.rotate_key(
        key=key, grace_hours=grace_hours, now=now, actor=key_actor()
    )
    db.session.commit()
    return _created(new_key, full_key, now)
