"""Last-used tracking and per-day request counts without a write per request.

Each worker counts requests in memory. The row the hot path already read says
when the key was last recorded; only when that is a minute old does this worker
try one conditional UPDATE (`... WHERE last_used_at <= now - 60`). Of all workers,
at most one wins each minute, and the winner also flushes its buffered counts
and addresses. Losers keep their buffer for a later minute. So the database sees
at most one write transaction per key per minute, whatever the request rate.
Buffers of keys that went quiet are written too: whenever this worker writes, it also
tries every buffer idle for a minute, and at exit (atexit, which gunicorn's graceful
worker shutdown runs) it writes what is left without the minute gate. A killed worker
loses at most its last minute of counts.

The gate is this worker's own clock as well as the row's `last_used_at`: on PostgreSQL
the row may come from the worker's key cache (app/keys/feed.py), which a usage write does
not evict, so the row alone would say "due" on every request. With `background` (the
default outside tests) the write runs on a thread of the worker after it is queued, so
the request that made it due pays no round trip for it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from app import audit
from app.audit import Actor
from app.extensions import db
from app.keys.authn import KeyContext
from app.models import ApiKey, KeyIpSeen, KeyUsageDaily

INTERVAL = 60  # seconds between recorded uses of one key
log = logging.getLogger(__name__)


@dataclass
class _Pending:
    counts: Counter = field(default_factory=Counter)  # UTC day number (unix // 86400) -> requests
    ips: dict[str, int] = field(default_factory=dict)  # ip -> last seen (unix)
    last_ip: str | None = None
    last_used: int = 0
    ctx: KeyContext | None = None  # the key, for writing this buffer later
    tried_at: int = 0  # when this worker last tried to write it


class UsageRecorder:
    def __init__(self, app=None, *, background: bool = False) -> None:
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._swept_at = 0  # when buffers of quiet keys were last looked for
        self._next_try: dict[int, int] = {}  # key pk -> when this worker may write it again
        self._app = weakref.ref(app) if app is not None else None
        self._background = background and app is not None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_pid: int | None = None

    def note(self, ctx: KeyContext, ip: str, now: int) -> bool:
        """Count one request; True when this key is due for a database write."""
        with self._lock:
            pending = self._pending.get(ctx.pk)
            if pending is None:
                pending = self._pending[ctx.pk] = _Pending()
            pending.counts[now // 86400] += 1  # a date object per request would cost more
            pending.ips[ip] = now
            pending.last_ip = ip
            pending.last_used = now
            pending.ctx = ctx
        if now < self._next_try.get(ctx.pk, 0):
            return False
        return ctx.last_used_at is None or now - ctx.last_used_at >= INTERVAL

    def submit(self, ctx: KeyContext, now: int) -> None:
        """Write this key's buffer (it is due): inline, or queued for the writer thread."""
        self._next_try[ctx.pk] = now + INTERVAL
        if len(self._next_try) > 10_000:  # forget keys whose minute is long over
            self._next_try = {pk: t for pk, t in self._next_try.items() if t > now}
        if not self._background:
            self.flush(ctx, now)
            return
        if self._writer is None or not self._writer.is_alive() or self._writer_pid != os.getpid():
            self._writer_pid = os.getpid()
            self._writer = threading.Thread(target=self._write_queued, daemon=True,
                                            name="keydesk-usage-writer")  # fmt: skip
            self._writer.start()
        self._queue.put((ctx, now))

    def _write_queued(self) -> None:
        while True:
            ctx, now = self._queue.get()
            if isinstance(ctx, _Marker):
                ctx.done.set()
                continue
            app = self._app() if self._app is not None else None
            if app is None:
                return
            try:
                with app.app_context():
                    self.flush(ctx, now)
                    db.session.remove()
            except Exception as exc:  # the thread must outlive a failed write
                log.warning("usage writer: %s", type(exc).__name__)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until the writer thread has written what was queued (tests, shutdown)."""
        if self._writer is None or not self._writer.is_alive():
            return
        done = threading.Event()
        self._queue.put((_Marker(done), 0))  # reached after everything queued before it
        done.wait(timeout)

    def pending_count(self) -> int:
        with self._lock:
            return sum(sum(p.counts.values()) for p in self._pending.values())

    def flush(self, ctx: KeyContext, now: int) -> bool:
        """Try to record this key's buffered use, then any buffer idle for a minute.

        Returns True when this worker won the minute for `ctx`."""
        won = self._flush_one(ctx.pk, now, gate=True)
        if now - self._swept_at < INTERVAL:  # sweep the other buffers once a minute at most
            return won
        self._swept_at = now
        with self._lock:
            idle = [
                pk for pk, p in self._pending.items()
                if pk != ctx.pk and now - max(p.last_used, p.tried_at) >= INTERVAL
            ]  # fmt: skip
        for pk in idle:
            self._flush_one(pk, now, gate=True)
        return won

    def flush_all(self, now: int) -> None:
        """At exit: write every buffer, minute gate or not (nothing would write it later)."""
        with self._lock:
            pks = list(self._pending)
        for pk in pks:
            self._flush_one(pk, now, gate=False)

    def _flush_one(self, pk: int, now: int, *, gate: bool) -> bool:
        with self._lock:
            pending = self._pending.pop(pk, None)
        if pending is None or pending.ctx is None:
            return False
        try:
            won = _write(pending.ctx, pending, now, gate=gate)
        except Exception as exc:  # a failed bookkeeping write must not fail the API call
            with suppress(Exception):  # the connection may be gone too
                db.session.rollback()
            # No traceback: it is expected while the database is down, and retried later.
            log.warning("could not record usage of key %s: %s", pending.ctx.key_id, exc)
            won = False
        if not won:
            pending.tried_at = now
            self._merge_back(pk, pending)
        return won

    def _merge_back(self, pk: int, pending: _Pending) -> None:
        with self._lock:
            current = self._pending.setdefault(pk, _Pending())
            current.counts.update(pending.counts)
            for ip, seen in pending.ips.items():
                current.ips[ip] = max(seen, current.ips.get(ip, 0))
            current.last_ip = current.last_ip or pending.last_ip
            current.last_used = max(current.last_used, pending.last_used)
            current.ctx = current.ctx or pending.ctx
            current.tried_at = max(current.tried_at, pending.tried_at)


class _Marker:
    """Queued by drain(): the writer reaches it after everything queued before."""

    def __init__(self, done: threading.Event) -> None:
        self.done = done


def _upsert(model, values: dict, index: list[str], set_: dict):
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(model).values(**values)
    return stmt.on_conflict_do_update(index_elements=index, set_=set_(stmt.excluded))


def _write(ctx: KeyContext, pending: _Pending, now: int, *, gate: bool = True) -> bool:
    """One transaction: last use, counts, addresses. With `gate`, only if nobody recorded
    this key in the last minute (False: another worker did; the caller keeps the buffer)."""
    when = datetime.fromtimestamp(pending.last_used or now, UTC)
    cutoff = datetime.fromtimestamp(now - INTERVAL, UTC) if gate else when
    result = db.session.execute(
        update(ApiKey)
        .where(ApiKey.id == ctx.pk)
        .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at <= cutoff))
        .values(last_used_at=when, last_used_ip=pending.last_ip)
        .execution_options(synchronize_session=False)
    )
    if gate and result.rowcount != 1:
        db.session.rollback()
        return False
    for day_number, count in pending.counts.items():
        day = datetime.fromtimestamp(day_number * 86400, UTC).date()
        db.session.execute(
            _upsert(
                KeyUsageDaily,
                {"api_key_id": ctx.pk, "day": day, "count": count},
                ["api_key_id", "day"],
                lambda excluded: {"count": KeyUsageDaily.count + excluded.count},
            )
        )
    known = set(
        db.session.execute(select(KeyIpSeen.ip).where(KeyIpSeen.api_key_id == ctx.pk)).scalars()
    )
    for ip, seen in pending.ips.items():
        seen_at = datetime.fromtimestamp(seen, UTC)
        db.session.execute(
            _upsert(
                KeyIpSeen,
                {"api_key_id": ctx.pk, "ip": ip, "first_seen_at": seen_at, "last_seen_at": seen_at},
                ["api_key_id", "ip"],
                lambda excluded: {"last_seen_at": excluded.last_seen_at},
            )
        )
        if ip not in known:
            audit.record(
                "key.used_from_new_ip",
                actor=Actor("key", ctx.key_id, ip),
                now=seen_at,
                tenant_id=ctx.tenant_id,
                target_type="key",
                target=ctx.key_id,
                first_use=not known,
            )
    db.session.commit()
    return True


def usage_by_day(*, api_key_pk: int, days: list[date]) -> dict[date, int]:
    rows = db.session.execute(
        select(KeyUsageDaily.day, KeyUsageDaily.count).where(
            KeyUsageDaily.api_key_id == api_key_pk, KeyUsageDaily.day >= days[0]
        )
    ).all()
    found = {day: count for day, count in rows}
    return {day: found.get(day, 0) for day in days}
