"""/api/v1/resources: the demo domain. A user key works in its own tenant (naming another
with ?tenant= is 404); a client key must name one with ?tenant= (400 without)."""

from __future__ import annotations

from flask import g, jsonify, request

from app import resources
from app.api import bp
from app.api.auth import require_scopes
from app.api.common import key_actor, tenant_for
from app.api.schemas import ResourceCreate, parse
from app.clock import utcnow
from app.errors import InvalidInput
from app.extensions import db
from app.models import Tenant


def _tenant() -> Tenant:
    slug = request.args.get("tenant")
    if g.key.is_client and not slug:
        raise InvalidInput("A client key must name the tenant with ?tenant=<slug>", field="tenant")
    return tenant_for(slug, g.key)


@bp.get("/resources")
@require_scopes("api:read")
def list_resources():
    tenant = _tenant()
    return jsonify([resources.resource_json(r) for r in resources.list_resources(tenant=tenant)])


@bp.post("/resources")
@require_scopes("api:write")
def create_resource():
    tenant = _tenant()
    body = parse(ResourceCreate)
    resource = resources.create_resource(
        tenant=tenant,
        name=body.name,
        type_=body.type,
        now=utcnow(),
        actor=key_actor(),
    )
    db.session.commit()
    return jsonify(resources.resource_json(resource)), 201


@bp.get("/resources/<resource_id>")
@require_scopes("api:read")
def get_resource(resource_id: str):
    tenant = _tenant()
    return jsonify(
        resources.resource_json(resources.get_resource(tenant=tenant, public_id=resource_id))
    )


@bp.delete("/resources/<resource_id>")
@require_scopes("api:write")
def delete_resource(resource_id: str):
    tenant = _tenant()
    resources.delete_resource(tenant=tenant, public_id=resource_id, now=utcnow(), actor=key_actor())
    db.session.commit()
    return "", 204
