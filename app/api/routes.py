"""/api/v1/ping and /api/v1/me."""

from flask import g, jsonify

from app.api import bp
from app.api.auth import require_scopes
from app.keys.status import effective_end


@bp.get("/ping")
def ping():
    return jsonify(pong=True)


@bp.get("/me")
@require_scopes()
def me():
    ctx = g.key
    return jsonify(
        key={
            "id": ctx.key_id,
            "kind": ctx.kind,
            "name": ctx.name,
            "scopes": sorted(ctx.scopes),
            "created_at": ctx.created_at,
            "expires_at": effective_end(ctx.expires_at, ctx.revoked_at),  # grace end first
            "last_used": ctx.last_used_at,
        },
        user=None if ctx.user_email is None else {"email": ctx.user_email, "role": ctx.user_role},
        tenant=None
        if ctx.tenant_slug is None
        else {"slug": ctx.tenant_slug, "name": ctx.tenant_name},
    )
