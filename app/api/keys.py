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
from app.clock import from_unix, utcnow
from app.errors import InvalidInput
from app.extensions import db
from app.keys import scopes as scope_rules
from app.keys import service as keys
from app.keys.authn import validate_allowed_ips
from app.keys.status import effective_end
from app.models import ApiKey


def key_out(key: ApiKey, now) -> dict:
    data = keys.key_json(key, now)
    data["allowed_ips"] = key.allowed_ips.split() if key.allowed_ips else None
    return data


def _caller_end() -> int | None:
    """The calling key's effective end of life (expiry or grace end, whichever is first):
    no key it creates, rotates or changes may outlive it. A user access token is a
    signed-in user, bound by tenant policy only (SPEC "Signing in from a terminal")."""
    if g.key.kind == keys.USER_TOKEN:
        return None
    return effective_end(g.key.expires_at, g.key.revoked_at)


def _allowed_ips(ips: list[str] | None) -> str | None:
    try:
        return validate_allowed_ips(ips) if ips is not None else None
    except ValueError as exc:
        raise InvalidInput(str(exc), field="allowed_ips") from None


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
    name, scopes, days, description = body.name, body.scopes, body.expires_in_days, body.description
    allowed_ips = _allowed_ips(body.allowed_ips)
    now = utcnow()
    allowed_ips = keys.limit_to_parent(
        parent_allowed_ips=g.key.allowed_ips,
        parent_expires_at=_caller_end(),
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
        description=description,
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
    body = parse(schemas.KeyRotate, required=False)
    # None keeps the old key's lifetime, where the tenant policy still allows it.
    grace_hours, days = body.grace_hours, body.expires_in_days
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
        parent_expires_at=_caller_end(),
        allowed_ips=key.allowed_ips or keys.ANY_ADDRESS,
        expires_in_days=keys.lifetime_days_of(key) if days is None else days,
        now=now,
    )
    new_key, full_key = keys.rotate_key(
        key=key, grace_hours=grace_hours, now=now, actor=key_actor(), expires_in_days=days
    )
    db.session.commit()
    return _created(new_key, full_key, now)


EDITABLE = tuple(schemas.KeyUpdate.model_fields)  # declared once, in app/api/schemas.py
MAX_UNIX = 2**40  # year 36812: beyond any expiry, and far inside every integer type


@bp.patch("/tenant/<slug>/api-keys/<key_id>")
@require_scopes("keys:write")
def update_key(slug: str, key_id: str):
    """Change name, description, scopes, expiry or allow-list of one of the owner's keys,
    under the creation rules: tenant policy, and nothing the calling key does not hold
    itself (so no key can widen itself or another)."""
    owner = key_owner(slug, g.key)
    data = json_body()
    unknown = sorted(set(data) - set(EDITABLE))
    if unknown:
        raise InvalidInput(
            f"Unknown field: {unknown[0][:40]}; a key's editable fields are " + ", ".join(EDITABLE),
            field=unknown[0][:40],
        )
    if not data:
        raise InvalidInput("Send at least one of " + ", ".join(EDITABLE))
    # Validated by KeyUpdate with nulls as sent: in a PATCH a null clears a field.
    body = schemas.validate(schemas.KeyUpdate, data)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if "expires_at" in changes:
        stamp = changes["expires_at"]
        if stamp is not None and not 0 < stamp < MAX_UNIX:
            raise InvalidInput(
                "expires_at must be Unix seconds in the future, or null", field="expires_at"
            )
        changes["expires_at"] = from_unix(stamp)
    if "allowed_ips" in changes:
        changes["allowed_ips"] = _allowed_ips(changes["allowed_ips"])
    key = keys.get_user_key(user=owner, key_id=key_id)
    now = utcnow()
    keys.update_key(
        key=key,
        now=now,
        actor=key_actor(),
        granting_scopes=g.key.scopes,
        parent_expires_at=_caller_end(),
        parent_allowed_ips=g.key.allowed_ips,
        **changes,
    )
    db.session.commit()
    return jsonify(key_out(key, now))
