"""The one place that writes audit events, and the chain check that proves none was altered.

Each event stores SHA-256 over the previous event's hash and its own canonical
fields. Editing, deleting or reordering a row breaks the chain at that row, and
`flask --app app audit verify` names it. Events are written in the caller's
transaction: a change and its audit event commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text

from app.clock import to_unix
from app.extensions import db
from app.metrics import note_audited
from app.models import AuditEvent, User

GENESIS = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who did something: a signed-in user, an API key, the CLI, or nobody known."""

    type: str  # "user" | "key" | "cli" | "anonymous" | "system"
    label: str  # email, key id, "cli"
    ip: str | None = None
    user_agent: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        return cls("cli", "cli")

    @classmethod
    def system(cls) -> Actor:
        return cls("system", "system")


def _json_value(value: object) -> object:
    """Details hold times as Unix seconds, as every JSON answer does (SPEC); anything else
    that JSON cannot hold, as text."""
    if isinstance(value, datetime):
        return to_unix(value)
    return str(value)


def _canonical(event: AuditEvent) -> str:
    return json.dumps(
        [
            event.prev_hash,
            event.tenant_id,
            to_unix(event.created_at),
            event.action,
            event.actor_type,
            event.actor,
            event.ip,
            event.user_agent,
            event.target_type,
            event.target,
            event.details,
        ],
        separators=(",", ":"),
        ensure_ascii=True,
    )


def compute_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_canonical(event).encode()).hexdigest()


def _lock_chain() -> None:
    """Serialize writers so two events never link to the same predecessor.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: every write transaction
    starts with BEGIN IMMEDIATE (see app/database.py), which already serializes writers.
    """
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(7242001)"))


def record(
    action: str,
    *,
    actor: Actor,
    now: datetime,
    tenant_id: int | None = None,
    target_type: str | None = None,
    target: str | None = None,
    **details: object,
) -> AuditEvent:
    """Append one event in the current transaction (the caller commits)."""
    event = _event(action, actor, now, tenant_id, target_type, target, details, _chain_head())
    db.session.add(event)
    db.session.flush()
    note_audited(db.session, action)  # keydesk_keys_*_total, counted at commit
    return event


def record_for_user(
    action: str, *, user: User, actor: Actor, now: datetime, **details: object
) -> None:
    """record() an event about one user's own account (factors, passkeys), in its tenant."""
    record(
        action,
        actor=actor,
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        **details,
    )


def record_many(
    action: str,
    items: Iterable[tuple[str | None, dict]],
    *,
    actor: Actor,
    now: datetime,
    tenant_id: int | None = None,
    target_type: str | None = None,
) -> None:
    """Append one event per (target, details) in `items`, chained exactly as record does.

    record reads the chain head and flushes once per event (about 2 ms); an incident that
    revokes 50,000 keys must finish within one request, so here the chain is extended in
    memory and the events inserted in one batch."""
    prev = _chain_head()
    events = []
    for target, details in items:
        event = _event(action, actor, now, tenant_id, target_type, target, details, prev)
        prev = event.hash
        events.append(event)
    db.session.add_all(events)
    db.session.flush()
    note_audited(db.session, action, len(events))


def _chain_head() -> str:
    """The last event's hash (GENESIS for none), with the chain locked until commit."""
    _lock_chain()
    prev = db.session.execute(
        select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    ).scalar()
    return prev or GENESIS


def _event(
    action: str,
    actor: Actor,
    now: datetime,
    tenant_id: int | None,
    target_type: str | None,
    target: str | None,
    details: dict,
    prev: str,
) -> AuditEvent:
    event = AuditEvent(
        tenant_id=tenant_id,
        created_at=now.replace(microsecond=0),
        action=action,
        actor_type=actor.type,
        actor=actor.label[:300],
        ip=actor.ip,
        user_agent=(actor.user_agent or None) and actor.user_agent[:300],
        target_type=target_type,
        target=target,
        details=json.dumps(details, sort_keys=True, separators=(",", ":"), default=_json_value),
        prev_hash=prev,
    )
    event.hash = compute_hash(event)
    return event


def verify_chain() -> tuple[int, str | None]:
    """Walk the chain in id order. Returns (events checked, problem or None)."""
    expected_prev = GENESIS
    checked = 0
    rows = db.session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()
    for event in rows.yield_per(1000):
        if event.prev_hash != expected_prev:
            return checked, (
                f"event {event.id}: the event before it is missing or was altered "
                f"(chain broken between the previous event and event {event.id})"
            )
        if compute_hash(event) != event.hash:
            return checked, f"event {event.id}: its contents were altered"
        expected_prev = event.hash
        checked += 1
    return checked, None
