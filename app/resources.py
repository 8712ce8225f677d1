"""The demo domain behind /api/v1/resources: named, typed resources of a tenant.

Services take the tenant explicitly; views decide which tenant a key may name.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from app import audit
from app.audit import Actor
from app.clock import to_unix
from app.errors import NotFound
from app.extensions import db
from app.keys import format as keyformat
from app.models import Resource, Tenant
from app.names import NAME_MAX, clean_name

PUBLIC_ID_LENGTH = 16


def _text(value: str, field: str, limit: int) -> str:
    return clean_name(value, field=field, label=field, limit=limit)


def resource_json(resource: Resource) -> dict:
    return {
        "id": resource.public_id,
        "name": resource.name,
        "type": resource.type,
        "created_at": to_unix(resource.created_at),
    }


def list_resources(*, tenant: Tenant) -> list[Resource]:
    return list(
        db.session.execute(
            select(Resource)
            .where(Resource.tenant_id == tenant.id)
            .order_by(Resource.created_at.desc(), Resource.id.desc())
        ).scalars()
    )


def get_resource(*, tenant: Tenant, public_id: str) -> Resource:
    """One resource of `tenant`; NotFound for anything else, other tenants' included."""
    resource = db.session.execute(
        select(Resource).where(Resource.public_id == public_id, Resource.tenant_id == tenant.id)
    ).scalar_one_or_none()
    if resource is None:
        raise NotFound("No such resource")
    return resource


def create_resource(
    *, tenant: Tenant, name: str, type_: str, now: datetime, actor: Actor
) -> Resource:
    resource = Resource(
        public_id=keyformat.random_base62(PUBLIC_ID_LENGTH),
        tenant_id=tenant.id,
        name=_text(name, "name", NAME_MAX),
        type=_text(type_, "type", 64),
        created_at=now,
        created_by=actor.label,
    )
    db.session.add(resource)
    db.session.flush()
    audit.record(
        "resource.created",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="resource",
        target=resource.public_id,
        name=resource.name,
        type=resource.type,
    )
    return resource


def delete_resource(*, tenant: Tenant, public_id: str, now: datetime, actor: Actor) -> None:
    resource = get_resource(tenant=tenant, public_id=public_id)
    # Conditional on the row still existing, so two concurrent deletes cannot both audit.
    result = db.session.execute(
        delete(Resource)
        .where(Resource.id == resource.id)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise NotFound("No such resource")
    audit.record(
        "resource.deleted",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="resource",
        target=public_id,
        name=resource.name,
    )
