"""Admin API: the tenant's keys and audit log, for tenant admins' keys.

`@require_scopes` checks the key's scopes; the caller must also be an admin of the
named tenant (a client key, which serves the platform, may name any tenant).
"""

from __future__ import annotations

from flask import g, jsonify, request, url_for

from app.admin import auditlog, inventory
from app.api import bp
from app.api.auth import require_scopes
from app.api.common import key_actor, tenant_for
from app.clock import utcnow
from app.errors import Forbidden, InvalidInput
from app.extensions import db
from app.keys import service as keys
from app.params import whole_number

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
KEYS_PER_PAGE, MAX_KEYS_PER_PAGE = 100, 1000


def _admin_tenant(slug: str):
    """The tenant named in the URL, if the calling key may administer it: tenant_for's
    404 rules, then 403 for a user key that is not an admin's."""
    ctx = g.key
    tenant = tenant_for(slug, ctx)
    if not ctx.is_client and ctx.user_role != "admin":
        raise Forbidden("Only a tenant admin's key may do this")
    return tenant


def _int_arg(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    value = whole_number(raw, low=1, high=maximum)
    if value is None:
        raise InvalidInput(f"{name} must be a whole number from 1 to {maximum}", name)
    return value


@bp.get("/tenant/<slug>/admin/api-keys")
@require_scopes("admin:read")
def admin_list_keys(slug: str):
    """Every key of the tenant with its owner; the filters of /admin/keys; paged with Link."""
    tenant = _admin_tenant(slug)
    filters = inventory.parse_filter(request.args)
    per_page = _int_arg("per_page", KEYS_PER_PAGE, MAX_KEYS_PER_PAGE)
    page_no = _int_arg("page", 1, 10**6)
    now = utcnow()
    page = inventory.key_page(
        tenant_id=tenant.id, filters=filters, now=now, page=page_no, per_page=per_page
    )
    body = [{**keys.key_json(row.key, now), "owner": row.owner} for row in page.rows]
    if page_no > page.pages:
        body = []
    response = jsonify(body)
    response.headers["X-Total-Count"] = str(page.total)
    if page_no < page.pages:
        # Only the known filters: arbitrary query keys would reach url_for's own
        # arguments (_scheme, _external, slug...).
        args = {k: v for k, v in request.args.items() if k in inventory.FILTER_NAMES}
        link = url_for(
            "api.admin_list_keys", slug=slug, **args, page=page_no + 1, per_page=per_page
        )
        response.headers["Link"] = f'<{link}>; rel="next"'
    return response


@bp.post("/tenant/<slug>/admin/api-keys/<key_id>/revoke")
@require_scopes("admin:write")
def admin_revoke_key(slug: str, key_id: str):
    tenant = _admin_tenant(slug)
    key = keys.get_tenant_key(tenant_id=tenant.id, key_id=key_id)
    keys.revoke_key(key=key, now=utcnow(), actor=key_actor())
    db.session.commit()
    return jsonify(success=True, message="API key revoked successfully")


@bp.get("/tenant/<slug>/audit-events")
@require_scopes("admin:read")
def audit_events(slug: str):
    """Newest first; `next_cursor` is opaque to callers (today: the last event's id)."""
    tenant = _admin_tenant(slug)
    limit = _int_arg("limit", DEFAULT_LIMIT, MAX_LIMIT)
    cursor = auditlog.parse_cursor(request.args.get("cursor"))
    filters = auditlog.parse_filter(request.args, tenant_id=tenant.id)
    events, next_cursor = auditlog.events_page(
        tenant_id=tenant.id,
        filters=filters,
        before=cursor,
        limit=limit,
    )
    return jsonify(
        events=[auditlog.event_json(e) for e in events],
        next_cursor=str(next_cursor) if next_cursor is not None else None,
    )
