"""The hot path: turn a bearer token into a KeyContext, or raise why not.

Runs on every API call, so it stays small and avoids the ORM:
1. parse + CRC32 check (no I/O: a mistyped or random token never reaches the database);
2. one indexed lookup by key id on a pooled DBAPI connection (no Session, no identity map);
3. HMAC-SHA256(pepper, secret) compared in constant time;
4. revoked / expired / grace decided from that one row (scopes and IPs by the caller).
There is no positive cache: a revocation is seen by every worker on its next request.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import threading
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app.errors import KeyExpired, KeyInvalid, KeyRevoked
from app.keys import format as keyformat

_COLUMNS = (
    "k.id, k.key_id, k.digest, k.name, k.kind, k.scopes, k.allowed_ips, k.created_at,"
    " k.expires_at, k.revoked_at, k.last_used_at, k.tenant_id, t.slug, t.name, k.user_id,"
    " u.email, u.role, u.deactivated_at"
)
# Constant text; {param} becomes the driver's placeholder.
_LOOKUP = (
    f"SELECT {_COLUMNS} FROM api_keys k"  # noqa: S608
    " LEFT JOIN tenants t ON t.id = k.tenant_id"
    " LEFT JOIN users u ON u.id = k.user_id"
    " WHERE k.key_id = {param}"
)
# Spent on unknown key ids too, so "no such key" costs what "wrong secret" costs.
_DUMMY_DIGEST = bytes(32)
_INHERITED: list = []  # connections inherited through fork(), deliberately never closed


@dataclass(slots=True, frozen=True)
class KeyContext:
    """What a request may know about the key that authenticated it (never the secret)."""

    pk: int
    key_id: str
    name: str
    kind: str  # "user" | "client"
    scopes: frozenset[str]
    allowed_ips: str | None
    created_at: int
    expires_at: int | None
    revoked_at: int | None  # set and in the future: rotated, in its grace period
    last_used_at: int | None
    tenant_id: int | None
    tenant_slug: str | None
    tenant_name: str | None
    user_id: int | None
    user_email: str | None
    user_role: str | None

    @property
    def is_client(self) -> bool:
        return self.kind == "client"


class Authenticator:
    """Bound once per app to its engine and pepper."""

    def __init__(self, engine: Engine, pepper: bytes) -> None:
        self.engine = engine
        self.pepper = pepper
        param = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self.sql = _LOOKUP.format(param=param)
        # Errors that mean "this connection (or the server) is gone", per driver.
        dbapi = engine.dialect.loaded_dbapi
        self._gone = (dbapi.OperationalError, dbapi.InterfaceError)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict = {}  # connection -> pid of the process that opened it
        self._generation = 0
        event.listen(engine, "engine_disposed", lambda _engine: self.close_all())

    # Why not engine.raw_connection() per request: a pool checkout + return costs
    # more than the lookup itself (checkout bookkeeping, pool_pre_ping's extra round
    # trip, and on PostgreSQL a ROLLBACK on return). Instead each thread keeps one
    # DBAPI connection, detached from the pool and in autocommit, so a lookup is one
    # statement and never leaves a transaction (or a stale snapshot) open: a revocation
    # committed by any worker is seen by the next lookup.

    def _cursor(self):
        local = self._local
        if getattr(local, "key", None) == (os.getpid(), self._generation):
            return local.cursor
        if getattr(local, "pid", None) not in (None, os.getpid()):
            # Inherited across fork(): the socket is shared with the parent, so the
            # child must neither use nor close it (closing would end the parent's
            # PostgreSQL session). Keep a reference so it is never garbage-collected.
            _INHERITED.append(local.conn)
            with self._lock:
                self._open.pop(local.conn, None)
        fairy = self.engine.raw_connection()  # connect args and "connect" listeners apply
        fairy.detach()  # ours from now on; the pool opens a replacement when it needs one
        conn = fairy.dbapi_connection
        if self.engine.dialect.name == "postgresql":
            conn.autocommit = True  # SQLite ones are autocommit already (app/database.py)
        with self._lock:
            self._open[fairy] = os.getpid()
        local.conn, local.pid, local.cursor = fairy, os.getpid(), conn.cursor()
        local.key = (os.getpid(), self._generation)
        return local.cursor

    def _discard(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.key = self._local.conn = self._local.pid = None
        if conn is not None:
            with self._lock:
                self._open.pop(conn, None)
            with suppress(Exception):
                conn.close()

    def close_all(self) -> None:
        """Close every thread's connection (on engine.dispose()); threads reconnect lazily."""
        with self._lock:
            self._generation += 1
            conns, self._open = self._open, {}
        for conn, pid in conns.items():
            if pid != os.getpid():  # opened before a fork: the parent's, not ours to close
                _INHERITED.append(conn)
                continue
            with suppress(Exception):
                conn.close()

    def _fetch(self, key_id: str) -> tuple | None:
        cursor = self._cursor()
        cursor.execute(self.sql, (key_id,))
        # fetchall, not fetchone: stepping past the (unique) row finishes the statement,
        # so SQLite does not keep a read snapshot open between requests.
        rows = cursor.fetchall()
        return rows[0] if rows else None

    def lookup(self, key_id: str) -> tuple | None:
        """The key row joined with its tenant and user, or None. One indexed query.

        A connection that died (database restarted, idle timeout) is replaced and the
        lookup retried once: the reconnect pool_pre_ping would give, without a ping per
        request. If the database is really down this raises SQLAlchemy's
        OperationalError (also what raw_connection() raises when it cannot connect),
        which app/web.py answers with 503.
        """
        try:
            return self._fetch(key_id)
        except self._gone:
            self._discard()
        try:
            return self._fetch(key_id)
        except self._gone as exc:
            self._discard()
            raise OperationalError(self.sql, (key_id,), exc) from exc

    def authenticate(self, token: str, *, now: int) -> KeyContext:
        parsed = keyformat.parse(token)  # raises KeyInvalid without I/O
        row = self.lookup(parsed.key_id)
        digest = keyformat.digest(self.pepper, parsed.secret)
        stored = bytes(row[2]) if row is not None else _DUMMY_DIGEST
        if not hmac.compare_digest(digest, stored) or row is None:
            raise KeyInvalid()
        (pk, key_id, _, name, kind, scopes, allowed_ips, created_at, expires_at, revoked_at,
         last_used_at, tenant_id, tenant_slug, tenant_name, user_id, email, role,
         deactivated_at) = row  # fmt: skip
        if (revoked_at is not None and revoked_at <= now) or deactivated_at is not None:
            raise KeyRevoked()
        if expires_at is not None and expires_at <= now:
            raise KeyExpired()
        return KeyContext(
            pk, key_id, name, kind, frozenset(scopes.split()), allowed_ips, created_at,
            expires_at, revoked_at, last_used_at, tenant_id, tenant_slug, tenant_name,
            user_id, email, role,
        )  # fmt: skip


@lru_cache(maxsize=4096)
def _networks(allowed_ips: str) -> tuple:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allowed_ips.split())


def ip_allowed(allowed_ips: str | None, ip: str) -> bool:
    """True when the key has no allow-list or `ip` falls in one of its CIDRs."""
    if not allowed_ips:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in _networks(allowed_ips) if net.version == address.version)


def validate_allowed_ips(value: str | list[str] | None) -> str | None:
    """Normalize a list of CIDRs (or addresses) to the stored form; raise ValueError when bad."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value or [])
    nets = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("allowed_ips must be a list of strings")
        try:
            nets.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"Not an IP address or CIDR range: {item.strip()[:60]}") from None
    if len(nets) > 50:
        raise ValueError("At most 50 entries in an IP allow-list")
    return " ".join(dict.fromkeys(nets)) or None
