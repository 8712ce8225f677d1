"""Reading a tenant's audit log: filters, keyset pages, JSON shape and streamed exports.

Pages are keyset pages on (tenant_id, id), newest first, so page 1,000 costs what
page 1 costs. Exports walk the same index in chunks, each chunk in its own short
read: on SQLite every transaction takes the write lock (BEGIN IMMEDIATE), and an
export of a million events must not hold it for the whole download. The log is
append-only and read downwards by id, so chunking loses and repeats nothing.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import ColumnElement, func, select

from app.clock import to_unix
from app.errors import InvalidInput
from app.extensions import db
from app.models import AuditEvent
from app.params import whole_number

PAGE_SIZE = 50
EXPORT_CHUNK = 1000
CSV_FIELDS = (
    "id",
    "created_at",
    "action",
    "actor_type",
    "actor",
    "ip",
    "user_agent",
    "target_type",
    "target",
    "details",
)


@dataclass(frozen=True)
class EventFilter:
    action: str | None = None
    actor: str | None = None
    date_from: date | None = None
    date_to: date | None = None

    def query_args(self) -> dict[str, str]:
        out = {
            "action": self.action,
            "actor": self.actor,
            "from": self.date_from.isoformat() if self.date_from else None,
            "to": self.date_to.isoformat() if self.date_to else None,
        }
        return {k: v for k, v in out.items() if v}


# The dates a filter may name. 'to' is inclusive, so the query runs to the next midnight:
# 9999-12-31 has none (date.max + 1 day overflows), and no event predates Unix time.
FIRST_DATE, LAST_DATE = date(1970, 1, 1), date(9998, 12, 31)
# How /admin/audit labels its filters: a page's refusal names the field as the page shows it.
PAGE_LABELS = {"action": "Action", "actor": "Actor", "from": "From", "to": "To",
               "format": "Export format", "before": "Page"}  # fmt: skip
# Every action Keydesk records (what `?action=` may name), beside those a tenant's own log
# holds (events written by features added later are found there).
ACTIONS = (
    "2fa.passkey_added", "2fa.passkey_removed", "2fa.passkey_renamed",
    "2fa.recovery_codes_generated", "2fa.reset", "2fa.totp_disabled", "2fa.totp_enabled",
    "auth.login", "auth.login_failed", "auth.password_verified", "auth.second_factor_failed",
    "auth.sudo_failed", "auth.sudo_granted", "client_key.issued", "device.approved",
    "device.denied", "invite.accepted", "invite.created", "invite.resent", "invite.revoked",
    "key.allowed_ips_changed", "key.issued", "key.leaked", "key.revoked", "key.rotated",
    "key.updated", "key.used_from_new_ip", "keys.bulk_revoked", "member.deactivated",
    "member.role_changed", "policy.changed", "resource.created", "resource.deleted",
    "scim.token_created", "scim.user_created", "scim.user_deactivated", "scim.user_deleted",
    "scim.user_reactivated", "scim.user_renamed", "seed.keys_created", "session.revoked",
    "session.revoked_others", "sso.config_changed", "sso.config_removed", "sso.password_refused",
    "sso.refused", "sso.signed_in", "tenant.created", "user.created", "user.password_changed",
    "user.password_reset", "user.password_reset_requested", "user.password_set",
    "user_token.ended", "user_token.issued", "user_token.revoked",
)  # fmt: skip
EXPORT_FORMATS = ("csv", "json")


def _date(args: Mapping[str, str], name: str, label: str) -> date | None:
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"{label} must be a date like 2026-01-31", name) from None
    if not FIRST_DATE <= day <= LAST_DATE:
        raise InvalidInput(
            f"{label} must be a date from {FIRST_DATE.isoformat()} to {LAST_DATE.isoformat()}",
            name,
        )
    return day


def parse_filter(
    args: Mapping[str, str],
    *,
    tenant_id: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> EventFilter:
    """The log's filters; InvalidInput names the bad one (by its label in `labels`) and the
    values it takes. With tenant_id, `action` must be one Keydesk records or one in that
    tenant's log (an unknown action is refused, not answered with nothing)."""

    def label(name: str) -> str:
        return (labels or {}).get(name, name)

    f = EventFilter(
        action=(args.get("action") or "").strip()[:64] or None,
        actor=(args.get("actor") or "").strip()[:300] or None,
        date_from=_date(args, "from", label("from")),
        date_to=_date(args, "to", label("to")),
    )
    if f.date_from and f.date_to and f.date_from > f.date_to:
        raise InvalidInput(f"{label('from')} must not be after {label('to')}", "from")
    if f.action is not None and tenant_id is not None:
        known = sorted(set(ACTIONS) | set(known_actions(tenant_id=tenant_id)))
        if f.action not in known:
            if labels:  # a page: its Action list shows them all; a shorter message reads better
                raise InvalidInput(
                    f"{label('action')} must be one of the actions in its list"
                    f" (such as auth.login or key.issued), not “{f.action[:40]}”",
                    "action",
                )
            raise InvalidInput(f"action must be one of: {', '.join(known)}", "action")
    return f


def parse_cursor(raw: str | None, label: str = "cursor", name: str = "cursor") -> int | None:
    """A page cursor (an event id) or None; InvalidInput naming it otherwise."""
    if raw is None or not raw.strip():
        return None
    value = whole_number(raw, low=1, high=2**31 - 1)  # event ids fit PostgreSQL's integer
    if value is None:
        raise InvalidInput(
            f"{label} is not valid; use the link or next_cursor of the previous page", name
        )
    return value


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, UTC)


def conditions(*, tenant_id: int, filters: EventFilter) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [AuditEvent.tenant_id == tenant_id]
    if filters.action:
        conds.append(AuditEvent.action == filters.action)
    if filters.actor:
        conds.append(func.lower(AuditEvent.actor) == filters.actor.lower())
    if filters.date_from:
        conds.append(AuditEvent.created_at >= _start_of(filters.date_from))
    if filters.date_to:  # inclusive: the whole of the 'to' day
        conds.append(AuditEvent.created_at < _start_of(filters.date_to + timedelta(days=1)))
    return conds


def events_page(
    *, tenant_id: int, filters: EventFilter, before: int | None = None, limit: int = PAGE_SIZE
) -> tuple[list[AuditEvent], int | None]:
    """Up to `limit` events older than id `before`, newest first, and the next cursor."""
    conds = conditions(tenant_id=tenant_id, filters=filters)
    if before is not None:
        conds.append(AuditEvent.id < before)
    rows = list(
        db.session.execute(
            select(AuditEvent).where(*conds).order_by(AuditEvent.id.desc()).limit(limit + 1)
        ).scalars()
    )
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


def known_actions(*, tenant_id: int) -> list[str]:
    return list(
        db.session.execute(
            select(AuditEvent.action)
            .where(AuditEvent.tenant_id == tenant_id)
            .distinct()
            .order_by(AuditEvent.action)
        ).scalars()
    )


def event_json(event: AuditEvent) -> dict:
    return {
        "id": event.id,
        "action": event.action,
        "actor_type": event.actor_type,
        "actor": event.actor,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "target_type": event.target_type,
        "target": event.target,
        "details": unix_times(json.loads(event.details or "{}")),
        "created_at": to_unix(event.created_at),
    }


def unix_times(value):
    """Times in details as Unix seconds, as everywhere in JSON: events written before
    audit.record stored them so hold them as text ("2026-12-31 07:36:33.420590+00:00")."""
    if isinstance(value, dict):
        return {k: unix_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unix_times(v) for v in value]
    if isinstance(value, str) and _ISO_TIME.fullmatch(value) and value[-6:] in ("+00:00",):
        try:
            return to_unix(datetime.fromisoformat(value))
        except ValueError:
            return value
    return value


def iter_events(*, tenant_id: int, filters: EventFilter) -> Iterator[AuditEvent]:
    """Every matching event, newest first, read in chunks (see the module docstring)."""
    before = None
    while True:
        conds = conditions(tenant_id=tenant_id, filters=filters)
        if before is not None:
            conds.append(AuditEvent.id < before)
        chunk = list(
            db.session.execute(
                select(AuditEvent).where(*conds).order_by(AuditEvent.id.desc()).limit(EXPORT_CHUNK)
            ).scalars()
        )
        # End the read transaction before handing anything out: a slow download must not
        # hold it (on SQLite every transaction holds the write lock, see app/database.py).
        # Detach first: a rollback expires the objects still in the session.
        db.session.expunge_all()
        db.session.rollback()
        count = len(chunk)
        if chunk:
            before = chunk[-1].id
        yield from chunk
        if count < EXPORT_CHUNK:
            return


def export_csv(events: Iterator[AuditEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    for event in events:
        data = event_json(event)
        data["created_at"] = event.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        data["details"] = json.dumps(data["details"], sort_keys=True, separators=(",", ":"))
        writer.writerow([_csv_safe(data[name]) for name in CSV_FIELDS])
        if buffer.tell() > 16384:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _csv_safe(value: object) -> str:
    """Neutralize spreadsheet formulas: actor and target text come from users."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def export_json(events: Iterator[AuditEvent]) -> Iterator[str]:
    yield "["
    first = True
    for event in events:
        yield ("" if first else ",") + "\n" + json.dumps(event_json(event), sort_keys=True)
        first = False
    yield "\n]\n"


_ISO_TIME = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d)(:\d\d(\.\d+)?)?(\+00:00|Z)?")


def _shown(value, limit: int = 80, name: str = "") -> str:
    if isinstance(value, str) and (stamp := _ISO_TIME.fullmatch(value)):
        return f"{stamp[1]} {stamp[2]} UTC"  # as the rest of the page writes times
    if name.endswith("_at") and isinstance(value, int) and not isinstance(value, bool):
        try:  # a time in Unix seconds, as audit.record stores them
            return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")
        except (OverflowError, OSError, ValueError):
            return str(value)
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, list):
        text = ", ".join(str(v) for v in value) or "none"
    elif isinstance(value, dict):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def readable_details(raw: str | None) -> list[tuple[str, str]]:
    """An event's details as short (name, value) pairs for the log page; a before/after
    pair shows only what changed, as "old → new". The exports keep the raw JSON."""
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return [("details", _shown(raw))]
    if not isinstance(data, dict):
        return [("details", _shown(data))]
    out: list[tuple[str, str]] = []
    before, after = data.pop("before", None), data.pop("after", None)
    if isinstance(before, dict) and isinstance(after, dict):
        for name in [*before, *(k for k in after if k not in before)]:
            if before.get(name) != after.get(name):
                old, new = _shown(before.get(name), 40, name), _shown(after.get(name), 40, name)
                out.append((name, f"{old} → {new}"))
    elif before is not None or after is not None:
        out.append(("change", f"{_shown(before, 40)} → {_shown(after, 40)}"))
    out.extend((name, _shown(value, name=name)) for name, value in data.items())
    return out
