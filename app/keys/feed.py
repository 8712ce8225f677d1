"""A per-worker cache of key lookups, and the push feed that keeps it honest (issue 15).

On PostgreSQL every worker keeps what `Authenticator.lookup` returned for the keys it
saw recently, so an authenticated call makes no database round trip. The cache is only
as good as its invalidation, so the rules are:

- ONE place emits invalidations: `install_emitter()` hooks SQLAlchemy's
  before/after_cursor_execute on every Engine, so every statement that reaches the
  database through SQLAlchemy (ORM flush, Core or ORM bulk update()/delete(), text(),
  exec_driver_sql) is classified here. A write that can change an auth decision (any
  column of api_keys, users or tenants except the bookkeeping ones in IGNORED) queues a
  target; at COMMIT the targets go out as one `pg_notify` in the SAME transaction.
  PostgreSQL delivers a notification only after its transaction committed, so the row
  has changed before any worker evicts it and the cache cannot refill with the old row
  afterwards. A statement whose rows cannot be told from its text evicts everything.
- A listener thread per worker (`AuthFeed`) LISTENs on CHANNEL and evicts. A cache
  entry is stored only if no eviction ran during its lookup (`KeyCache.epoch`).
- Fail closed: the worker serves from its cache only while the feed is connected AND a
  heartbeat it sent to itself through the database's notification queue came back
  within MAX_SILENCE (notifications arrive in commit order, so a returned heartbeat
  proves every invalidation committed before it was delivered). Down or lagging: every
  lookup goes to the database, as without a cache. On (re)connect the cache is dropped
  whole. Entries also expire after a bounded lifetime (KEYDESK_AUTH_CACHE_TTL).
- The worker that made a change also evicts in-process at once (before its commit and
  again at it), so its own next request is refused without waiting for the feed.

Besides evictions the feed carries "this address is blocked until T" (app/api/limits.py
publishes it when an address runs out of its failed-authentication budget), so a
successful call needs no rate-limit storage round trip to learn that its address is fine.

Feed state for metrics: `status(feed)` below, or `AuthFeed.state()` ("down" | "lagging" |
"live"), `AuthFeed.lag()` (seconds) and the plain attributes `connected`, `reconnects`,
`evictions`, `confirmed_at`.
"""

from __future__ import annotations

import logging
import re
import secrets
import select
import threading
import time
import weakref
from contextlib import suppress

from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

CHANNEL = "keydesk_auth"
HEARTBEAT = 0.25  # seconds between heartbeats a listener sends itself
MAX_SILENCE = 1.0  # no heartbeat back for this long: the feed counts as lagging
RECONNECT_DELAY = 0.5
DEFAULT_TTL = 60.0
DRAIN_WAIT = 0.005  # seconds a request waits for the listener before looking its key up
MAX_ENTRIES = 50_000  # rows of ~1 KB: a bounded worst case of ~50 MB a worker
# Columns whose change never alters an auth decision: bookkeeping written by the hot path
# itself (usage) or by reminders and sign-in. Every other column of these tables evicts,
# including columns added later (deny by default).
WATCHED = {"api_keys": "k", "users": "u", "tenants": "t"}
IGNORED = {
    "api_keys": {"last_used_at", "last_used_ip", "reminded_at"},
    "users": {"last_login_at"},
    "tenants": set(),
}
NOTIFY_PAYLOAD_MAX = 7000  # PostgreSQL's limit is 8000 bytes; above it we evict all

# Lookup row positions (app/keys/authn.py _COLUMNS).
_PK, _TENANT, _USER = 0, 11, 14


class KeyCache:
    """key_id -> (lookup row, monotonic time stored). Guarded by `epoch`: every eviction
    bumps it, and `put` refuses a row whose lookup started before an eviction."""

    def __init__(self, ttl: float = DEFAULT_TTL, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.epoch = 0
        self._rows: dict[str, tuple] = {}
        self._by_pk: dict[int, str] = {}
        self._lock = threading.Lock()
        self.evictions = 0
        _caches.add(self)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key_id: str, now: float) -> tuple | None:
        entry = self._rows.get(key_id)  # one dict read: atomic, no lock
        if entry is None or now - entry[1] > self.ttl:
            return None
        return entry[0]

    def put(self, key_id: str, row: tuple, epoch: int, now: float) -> None:
        with self._lock:
            if epoch != self.epoch:
                return  # an eviction ran while this row was being read: it may be stale
            if len(self._rows) >= self.max_entries:
                oldest = next(iter(self._rows))  # insertion order: the oldest entry
                self._by_pk.pop(self._rows.pop(oldest)[0][_PK], None)
            self._rows[key_id] = (row, now)
            self._by_pk[row[_PK]] = key_id

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._rows = {}
            self._by_pk = {}

    def evict(self, targets: list[str]) -> None:
        """Targets: "k:<pk>", "K:<key_id>", "u:<user id>", "t:<tenant id>", "*"."""
        with self._lock:
            self.epoch += 1
            self.evictions += 1
            users, tenants = set(), set()
            for target in targets:
                kind, _, ident = target.partition(":")
                if kind == "*":
                    self._rows, self._by_pk = {}, {}
                    return
                if kind == "k":
                    with suppress(ValueError):
                        key_id = self._by_pk.pop(int(ident), None)
                        if key_id is not None:
                            self._rows.pop(key_id, None)
                elif kind == "K":
                    entry = self._rows.pop(ident, None)
                    if entry is not None:
                        self._by_pk.pop(entry[0][_PK], None)
                elif kind == "u":
                    with suppress(ValueError):
                        users.add(int(ident))
                elif kind == "t":
                    with suppress(ValueError):
                        tenants.add(int(ident))
            if users or tenants:  # rare (deactivation, role or policy change): one scan
                for key_id, (row, _) in list(self._rows.items()):
                    if row[_USER] in users or row[_TENANT] in tenants:
                        del self._rows[key_id]
                        self._by_pk.pop(row[_PK], None)


# Every cache in this process, for the emitter's in-process eviction.
_caches: weakref.WeakSet[KeyCache] = weakref.WeakSet()


def evict_locally(targets: list[str]) -> None:
    for cache in list(_caches):
        cache.evict(targets)


class AuthFeed:
    """One LISTEN connection per worker process, on a thread of its own (with a second
    connection that sends the heartbeats)."""

    def __init__(self, conninfo: str, cache: KeyCache, *, heartbeat: float = HEARTBEAT) -> None:
        self.conninfo = conninfo
        self.cache = cache
        self.heartbeat = heartbeat
        self.max_silence = max(MAX_SILENCE, 4 * heartbeat)
        self.on_block = None  # callable(ip, until) set by app/api/limits.py
        self.on_connect = None  # callable() run each time the feed is (re)connected
        self.connected = False
        self.confirmed_at = 0.0  # monotonic time a heartbeat that came back was sent
        self.reconnects = 0
        self.evictions = 0
        self.backend_pid: int | None = None
        self._hb_channel = f"keydesk_hb_{secrets.token_hex(8)}"
        self._sent: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conn = None
        self._fd: int | None = None
        self._start_lock = threading.Lock()
        self._handling = threading.Lock()  # held while the connection is used: see _listen
        self._pid = None

    # --- what the hot path asks

    def live(self, now: float) -> bool:
        """True while the cache may be served: connected, caught up, and nothing read or
        waiting on the feed's socket that is not handled yet. The last one closes the gap
        between a notification (or the connection's end) reaching this process and the
        listener thread getting the GIL to act on it (up to the interpreter's 5 ms switch
        interval). In steady state it is one non-blocking poll, a few µs, no round trip.
        When something is waiting (most often one of the feed's own heartbeats), the
        request handles it itself under the listener's lock (held only while handling,
        microseconds), then serves: a heartbeat never costs a lookup, and an eviction is
        applied before the cache is read."""
        if not self.connected or now - self.confirmed_at > self.max_silence:
            return False
        fd = self._fd
        if fd is None:
            return False
        if not self._handling.locked() and not _readable(fd):
            return True  # nothing arrived that the listener has not handled
        # Let the listener finish what it is handling, then handle what waits, as it would.
        if not self._handling.acquire(timeout=DRAIN_WAIT):
            return False
        try:
            conn = self._conn
            if conn is None or self._fd != fd:
                return False
            self._drain(conn)
        except Exception:  # noqa: BLE001 - the connection broke: the listener reconnects
            return False
        finally:
            self._handling.release()
        return self.connected and not _readable(fd)  # more arrived meanwhile: look it up

    def state(self) -> str:
        if not self.connected:
            return "down"
        return "live" if self.live(time.monotonic()) else "lagging"

    def lag(self) -> float:
        """Seconds since the newest heartbeat that has come back was sent (inf: never)."""
        if not self.connected or not self.confirmed_at:
            return float("inf")
        return max(0.0, time.monotonic() - self.confirmed_at)

    def ensure_started(self) -> None:
        import os

        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._stop.clear()
            self._pid = os.getpid()  # a forked child starts its own listener
            self.connected = False
            self._thread = threading.Thread(target=self._run, name="keydesk-auth-feed", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # the listener checks it at least every heartbeat
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None
        self._down()

    # --- the listener

    def _down(self) -> None:
        self._fd = None  # before the socket closes: its number may be reused
        if self.connected and not self._stop.is_set():  # stop() is no outage
            log.warning("auth cache feed down; looking keys up in the database until it is back")
        self.connected = False
        self.cache.clear()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                conn = psycopg.connect(
                    self.conninfo, autocommit=True, application_name="keydesk-auth-feed",
                    connect_timeout=5,
                )  # fmt: skip
            except Exception:
                self._down()
                self._stop.wait(RECONNECT_DELAY)
                continue
            self._conn = conn
            try:
                self._listen(conn)
            except Exception as exc:  # expected when the database goes away: no traceback
                if not self._stop.is_set():
                    log.warning("auth cache feed lost: %s", type(exc).__name__)
            finally:
                with self._handling:  # never closed under a request that drains it
                    self._conn = None
                    self._down()
                    with suppress(Exception):
                        conn.close()
            self._stop.wait(RECONNECT_DELAY)

    def _listen(self, conn) -> None:
        import psycopg

        conn.execute(f"LISTEN {CHANNEL}")
        conn.execute(f"LISTEN {self._hb_channel}")
        self.backend_pid = conn.info.backend_pid
        # Whatever changed while we were not listening is unknown: start empty.
        self.cache.clear()
        self._sent.clear()
        self.confirmed_at = 0.0
        self.reconnects += 1
        self._fd = conn.fileno()
        self.connected = True
        if self.on_connect is not None:
            try:
                self.on_connect()
            except Exception as exc:
                log.warning("auth cache feed: on_connect failed: %s", type(exc).__name__)
        next_beat = 0.0
        waiting = select.poll()
        waiting.register(self._fd, select.POLLIN | select.POLLPRI)
        # Heartbeats go out on a connection of their own: the listening one then runs no
        # query after LISTEN, so whenever _handling is free, everything read from its
        # socket has been handled, and a request never waits on a heartbeat's round trip.
        # Notifications are delivered in commit order whoever sent them, so a heartbeat
        # that came back still proves that every earlier invalidation did.
        with psycopg.connect(
            self.conninfo, autocommit=True, application_name="keydesk-auth-heartbeat",
            connect_timeout=5,
        ) as sender:  # fmt: skip
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    beat = str(int(now * 1e6))
                    with self._handling:
                        self._sent[beat] = now
                    sender.execute("SELECT pg_notify(%s, %s)", (self._hb_channel, beat))
                    next_beat = now + self.heartbeat
                with self._handling:
                    self._drain(conn)
                if not self.connected:
                    return
                # Wait for data with no lock held (poll releases the GIL).
                waiting.poll(max(0.0, next_beat - time.monotonic()) * 1000)

    def _drain(self, conn) -> None:
        """Handle every notification read or waiting, without blocking (under _handling)."""
        for note in conn.notifies(timeout=0):
            if note.channel == self._hb_channel:
                sent = self._sent.pop(note.payload, None)
                if sent is not None:
                    self.confirmed_at = max(self.confirmed_at, sent)
                    # Older beats that never came back are gone for good.
                    for stale in [b for b, t in self._sent.items() if t < sent]:
                        del self._sent[stale]
            else:
                self._handle(note.payload)

    def _handle(self, payload: str) -> None:
        targets, blocks = [], []
        for item in payload.split():
            if item.startswith("b:"):
                _, until, ip = (item.split(":", 2) + ["", ""])[:3]
                with suppress(ValueError):  # a malformed message is ignored, never fatal
                    if ip:
                        blocks.append((ip, float(until)))
            else:
                targets.append(item)
        if targets:
            self.evictions += 1
            self.cache.evict(targets)
        if blocks and self.on_block is not None:
            for ip, until in blocks:
                self.on_block(ip, until)


def _readable(fd: int) -> bool:
    """Whether data (or the connection's end) waits on `fd`: one non-blocking poll."""
    try:
        if fd < 1000:
            return bool(select.select((fd,), (), (), 0)[0])
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True  # cannot tell: treat as waiting (the caller fails closed)


def status(feed: AuthFeed | None) -> dict:
    """For metrics and health pages (no round trip): the `feed` of
    `app.extensions["keydesk.authenticator"]`."""
    if feed is None:
        return {"state": "off", "lag_seconds": None, "reconnects": 0, "evictions": 0,
                "cached_keys": 0}  # fmt: skip
    lag = feed.lag()
    return {
        "state": feed.state(),
        "lag_seconds": None if lag == float("inf") else lag,
        "reconnects": feed.reconnects,
        "evictions": feed.evictions,
        "cached_keys": len(feed.cache),
    }


# --- the one place that emits invalidations -------------------------------------------

_MENTION = re.compile(r"\b(api_keys|users|tenants)\b", re.I)
_HARMLESS = re.compile(r"^\s*(SELECT|EXPLAIN|PRAGMA|SHOW|SAVEPOINT|RELEASE|BEGIN)\b", re.I)
_INSERT = re.compile(r'^\s*INSERT\s+INTO\s+"?(\w+)"?', re.I)
_UPDATE = re.compile(r'^\s*UPDATE\s+"?(\w+)"?\s+SET\s+(.*?)(?:\s+WHERE\s+(.*))?$', re.I | re.S)
_DELETE = re.compile(r'^\s*DELETE\s+FROM\s+"?(\w+)"?(?:\s+WHERE\s+(.*))?$', re.I | re.S)
_SET_COLUMN = re.compile(r'(?:^|,)\s*"?(\w+)"?\s*=')
_BY_ROW = re.compile(
    r'^\s*(?:"?\w+"?\.)?"?(id|key_id|user_id|tenant_id)"?\s*=\s*(\?|%s|%\((\w+)\)s|:(\w+))(?:::\w+)?(.*)$',
    re.I | re.S,
)
_RETURNING = re.compile(r"\s+RETURNING\b.*$", re.I | re.S)
# (table, column the WHERE starts with) -> the cache target kind it names.
_TARGET_KIND = {
    ("api_keys", "id"): "k", ("api_keys", "key_id"): "K", ("api_keys", "user_id"): "u",
    ("api_keys", "tenant_id"): "t", ("users", "id"): "u", ("users", "tenant_id"): "t",
    ("tenants", "id"): "t",
}  # fmt: skip
PENDING = "keydesk.auth_targets"


def classify(statement: str, parameters, executemany: bool) -> list[str] | None:
    """The cache targets a statement invalidates; None when it changes no auth decision."""
    if not _MENTION.search(statement) or _HARMLESS.match(statement):
        return None
    insert = _INSERT.match(statement)
    if insert:
        table = insert.group(1).lower()
        if table not in WATCHED:  # e.g. INSERT INTO audit_events ... a user's name
            return None
        # A new row changes no cached decision (unknown keys are never cached), unless it
        # is an upsert that may rewrite an existing row.
        return (
            ["*"] if re.search(r"\bON\s+CONFLICT\b.*\bUPDATE\b", statement, re.I | re.S) else None
        )
    update, delete = _UPDATE.match(statement), _DELETE.match(statement)
    if update:
        table, where = update.group(1).lower(), update.group(3)
        if table not in WATCHED:  # writing another table never changes the watched rows
            return None
        columns = {c.lower() for c in _SET_COLUMN.findall(update.group(2))}
        if columns and columns <= IGNORED[table]:
            return None
    elif delete:
        table, where = delete.group(1).lower(), delete.group(2)
        if table not in WATCHED:
            return None
    else:
        return ["*"]  # TRUNCATE, DDL, a CTE, MERGE...: cannot tell which rows
    return _targets(statement, table, _RETURNING.sub("", where or ""), parameters, executemany)


def _targets(statement: str, table: str, where: str, parameters, executemany: bool) -> list[str]:
    """Targets when the WHERE clause starts with `<column> = <one parameter>` and anything
    after it is ANDed on (so the rows changed are among those that column names);
    otherwise everything."""
    by_row = _BY_ROW.match(where)
    if not by_row:
        return ["*"]
    column, marker, pyformat, named, rest = by_row.groups()
    kind = _TARGET_KIND.get((table, column.lower()))
    if kind is None or not _only_ands(rest):
        return ["*"]
    name = pyformat or named
    # Positional: the parameter's index is the number of placeholders before it.
    index = None if name else statement[: len(statement) - len(rest)].count(marker) - 1
    targets = []
    for params in parameters if executemany else [parameters]:
        try:
            value = params[name] if name else params[index]
        except (KeyError, IndexError, TypeError):
            return ["*"]
        targets.append(f"{kind}:{value}")
    return targets


def _only_ands(rest: str) -> bool:
    rest = rest.strip()
    if not rest:
        return True
    if not re.match(r"AND\b", rest, re.I):
        return False
    depth = 0
    for part in re.findall(r"\(|\)|\bOR\b|'(?:[^']|'')*'", rest, re.I):
        if part == "(":
            depth += 1
        elif part == ")":
            depth -= 1
        elif part.upper() == "OR" and depth == 0:
            return False
    return True


def _before(conn, cursor, statement, parameters, context, executemany) -> None:
    targets = classify(statement, parameters, executemany)
    if context is not None:
        context._keydesk_auth = targets if targets is not None else []  # for the test's check
    if targets:
        conn.info.setdefault(PENDING, []).extend(targets)
        evict_locally(targets)


def _after(conn, cursor, statement, parameters, context, executemany) -> None:
    # An autocommit connection has no COMMIT to ride on: notify right after the statement.
    pending = conn.info.get(PENDING)
    if pending and getattr(conn.connection.dbapi_connection, "autocommit", None) is True:
        _notify(conn, pending)


def _on_commit(conn) -> None:
    pending = conn.info.get(PENDING)
    if pending:
        _notify(conn, pending)


def _on_rollback(conn) -> None:
    conn.info.pop(PENDING, None)


def _notify(conn, pending: list[str]) -> None:
    targets = list(dict.fromkeys(pending))
    pending.clear()
    evict_locally(targets)  # again, for a row read by another thread since the statement
    if conn.dialect.name != "postgresql":
        return  # SQLite: its commit counter tells every worker (app/keys/commits.py)
    payload = " ".join(targets)
    if len(payload) > NOTIFY_PAYLOAD_MAX:
        payload = "*"
    # On the DBAPI cursor, inside the transaction being committed: delivered at its commit.
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
    finally:
        cursor.close()


def publish(engine: Engine, payload: str) -> None:
    """Send one feed message now (its own transaction): an address block, for instance."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        conn.commit()


_installed = False


def install_emitter() -> None:
    """Hook every Engine of this process (idempotent)."""
    global _installed
    if _installed:
        return
    event.listen(Engine, "before_cursor_execute", _before)
    event.listen(Engine, "after_cursor_execute", _after)
    event.listen(Engine, "commit", _on_commit)
    event.listen(Engine, "rollback", _on_rollback)
    _installed = True
