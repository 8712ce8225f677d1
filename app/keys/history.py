"""What happened to a key: its audit events and the addresses it was used from."""

from sqlalchemy import select

from app.extensions import db
from app.models import ApiKey, AuditEvent, KeyIpSeen


def key_events(key: ApiKey, limit: int = 50) -> list[AuditEvent]:
    return list(
        db.session.execute(
            select(AuditEvent)
            .where(
                AuditEvent.tenant_id == key.tenant_id,
                AuditEvent.target_type == "key",
                AuditEvent.target == key.key_id,
            )
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        ).scalars()
    )


def recent_ips(key: ApiKey, limit: int = 10) -> list[KeyIpSeen]:
    return list(
        db.session.execute(
            select(KeyIpSeen)
            .where(KeyIpSeen.api_key_id == key.id)
            .order_by(KeyIpSeen.last_seen_at.desc())
            .limit(limit)
        ).scalars()
    )
