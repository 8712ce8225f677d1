"""The hot path: turn a bearer token into a KeyContext, or raise why not.

Runs on every API call, so it stays small and avoids the ORM:
1. parse + CRC32 check, and the prefix must be the key prefix or the user access token
   prefix (no I/O: a mistyped or random token, or one of another kind, never reaches the
   database);
2. one indexed lookup by key id on a DBAPI connection in autocommit, kept by this module
   (no Session, no identity map, no pool checkout, no ping, no rollback);
3. HMAC-SHA256(pepper, secret) compared in constant time;
4. revoked / expired / grace decided from that one row (scopes and IPs by the caller).
On PostgreSQL the row comes from a per-worker cache while its invalidation feed is live
(app/keys/feed.py): no round trip for a key seen recently, and a change to the key, its
user or its tenant evicts it in every worker within milliseconds of the commit. On SQLite
the same cache is cleared whenever SQLite's commit counter moved (app/keys/commits.py),
asked on every call. The decision is always made afresh from the row and the clock, never
cached.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from contextlib import suppress
from functools import lru_cache
from typing import NamedTuple

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app.database import configure_engine
from app.errors import KeyExpired, KeyInvalid, KeyRevoked
from app.keys import format as keyformat
from app.keys.commits import CommitWatch
from app.keys.feed import AuthFeed, KeyCache, install_emitter

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
# Idle lookup connections kept per app and process (see Authenticator.__init__).
MAX_IDLE = 8
# Spent on unknown key ids too, so "no such key" costs what "wrong secret" costs.
_DUMMY_DIGEST = bytes(32)


class KeyContext(NamedTuple):
    """What a request may know about the key that authenticated it (never the secret).

    A NamedTuple: as immutable as a frozen dataclass, and built on every API call in a
    fraction of the time (a frozen dataclass sets its 16 fields one object.__setattr__ each).
    """

    pk: int
    key_id: str
    name: str
    kind: str  # "user" | "client" | "user_token"
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

    def __init__(
        self, engine: Engine, pepper: bytes, prefix: str = "kd", *,
        cache_ttl: float | None = None, heartbeat: float | None = None,
    ) -> None:  # fmt: skip
        self.pepper = pepper
        self._digest = keyformat.Digester(pepper)
        # prefix -> whether it names a user access token (SPEC "Key format": "kdu_..."). A
        # token with any other prefix is refused before the lookup: the checksum alone does
        # not bind the prefix (anyone can recompute a CRC).
        self._prefixes = {prefix: False, keyformat.user_token_prefix(prefix): True}
        # Connections come from a small engine of its own, on the same database, so that
        # SQLAlchemy applies the URL, the driver options and the connect events (SQLite
        # pragmas), and in AUTOCOMMIT: a lookup is one statement and never leaves a
        # transaction (or a stale read snapshot) open, so the next lookup sees any
        # revocation committed by any worker.
        self.engine = create_engine(engine.url, isolation_level="AUTOCOMMIT")
        configure_engine(self.engine)  # SQLite: WAL, busy timeout, foreign keys
        # Whoever resets the app's engine (tests, a DB failover) resets these connections too.
        event.listen(engine, "engine_disposed", lambda _engine: self.close())
        param = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self.sql = _LOOKUP.format(param=param)
        dbapi = engine.dialect.loaded_dbapi
        self._gone = (dbapi.OperationalError, dbapi.InterfaceError)
        # Idle DBAPI connections, detached from the engine's pool, last used first. A pool
        # checkout and return cost ~12 µs of a ~60 µs authentication (measured in a request,
        # bench/profile.py); list.pop and list.append are atomic and cost nothing. There is
        # no pre-ping and no rollback on return, each a round trip more than the lookup: a
        # connection found dead is closed and the lookup retried once on a new one.
        # At most MAX_IDLE are kept (a burst of concurrent lookups in a threaded worker
        # must not pin that many database connections for the worker's lifetime). They
        # belong to one process: gunicorn builds the app in each worker (no --preload in
        # gunicorn.conf.py), so no lookup connection is ever inherited across a fork.
        self._idle: list = []
        self._generation = 0  # close_connections() bumps it: older connections are closed
        self._lock = threading.Lock()
        # The cache, only where something keeps it exact: on PostgreSQL the invalidation
        # feed, on SQLite its commit counter, asked on every call (app/keys/commits.py).
        # cache_ttl None or 0 turns it off.
        self.cache: KeyCache | None = None
        self.feed: AuthFeed | None = None
        self.watch: CommitWatch | None = None
        install_emitter()  # every write path, cache or not, goes through it
        if cache_ttl is not None and cache_ttl > 0 and engine.dialect.name == "postgresql":
            self.cache = KeyCache(ttl=cache_ttl)
            conninfo = engine.url.set(drivername="postgresql").render_as_string(False)
            self.feed = AuthFeed(
                conninfo, self.cache, **({"heartbeat": heartbeat} if heartbeat else {})
            )
        elif (
            cache_ttl is not None
            and cache_ttl > 0
            and engine.dialect.name == "sqlite"
            # An in-memory database is another one on every connection: never cached.
            and engine.url.database not in (None, "", ":memory:")
        ):
            self.cache = KeyCache(ttl=cache_ttl)
            self.watch = CommitWatch(self.engine, self.cache)

    def feed_live(self) -> bool:
        return self.feed is not None and self.feed.live(time.monotonic())

    def row(self, key_id: str, live: bool | None = None) -> tuple | None:
        """lookup(), served from the cache while the feed is live or, on SQLite, nothing was
        committed since the row was read (fail closed otherwise). `live`: feed_live() as
        the caller found it a moment ago (one check per request)."""
        cache = self.cache
        if cache is None:
            return self.lookup(key_id)
        now = time.monotonic()
        if self.watch is not None:
            if not self.watch.fresh():  # clears the cache after any commit
                return self.lookup(key_id)
        else:
            feed = self.feed
            if not (feed.live(now) if live is None else live):
                feed.ensure_started()  # cheap when running; a lookup meanwhile, as uncached
                return self.lookup(key_id)
        row = cache.get(key_id, now)
        if row is None:
            epoch = cache.epoch  # read BEFORE the lookup: see KeyCache.put
            row = self.lookup(key_id)
            if row is not None:
                cache.put(key_id, row, epoch, now)
        return row

    def lookup(self, key_id: str) -> tuple | None:
        """The key row joined with its tenant and user, or None. One indexed query.

        If the database is down this raises SQLAlchemy's OperationalError, which
        app/web.py answers with 503.
        """
        try:
            return self._fetch(key_id)
        except self._gone:
            # That connection was dead (database restarted, idle timeout), and so are likely
            # all its idle siblings: drop them, as SQLAlchemy's pool does, then once more.
            self.close_connections()
        try:
            return self._fetch(key_id)
        except self._gone as exc:
            raise OperationalError(self.sql, (key_id,), exc) from exc

    def _fetch(self, key_id: str) -> tuple | None:
        try:
            generation, conn = self._idle.pop()
        except IndexError:
            generation, conn = self._connect()
        else:
            if generation != self._generation:  # put back during close_connections()
                _close_quietly(conn)
                generation, conn = self._connect()
        try:
            cursor = conn.cursor()
            cursor.execute(self.sql, (key_id,))
            # fetchall, not fetchone: stepping past the (unique) row finishes the
            # statement, so SQLite keeps no read snapshot open between requests.
            rows = cursor.fetchall()
            cursor.close()
        except BaseException:
            _close_quietly(conn)  # whatever went wrong, never reuse it half-way
            raise
        if generation == self._generation and len(self._idle) < MAX_IDLE:
            self._idle.append((generation, conn))
        else:
            _close_quietly(conn)  # stale (close_connections ran meanwhile) or one too many
        return rows[0] if rows else None

    def _connect(self) -> tuple[int, object]:
        generation = self._generation
        pooled = self.engine.raw_connection()  # connect events and isolation level applied
        pooled.detach()  # from now on the pool does not know it: ours to close
        return generation, pooled.dbapi_connection

    def close(self) -> None:
        """Stop the feed (its next use starts it again; the cache is dropped) and close
        the idle connections."""
        if self.feed is not None:
            self.feed.stop()
        if self.watch is not None:
            self.watch.close()
        self.close_connections()

    def close_connections(self) -> None:
        """Close the idle connections; those in use are closed when their lookup ends."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for _, conn in idle:
            _close_quietly(conn)

    def authenticate(self, token: str, *, now: int, live: bool | None = None) -> KeyContext:
        parsed = keyformat.parse(token)  # raises KeyInvalid without I/O
        is_token = self._prefixes.get(parsed.prefix)
        if is_token is None:  # another prefix: refused before any lookup
            raise KeyInvalid()
        row = self.row(parsed.key_id, live)
        digest = self._digest(parsed.secret)
        stored = bytes(row[2]) if row is not None else _DUMMY_DIGEST
        if not hmac.compare_digest(digest, stored) or row is None:
            raise KeyInvalid()
        (pk, key_id, _, name, kind, scopes, allowed_ips, created_at, expires_at, revoked_at,
         last_used_at, tenant_id, tenant_slug, tenant_name, user_id, email, role,
         deactivated_at) = row  # fmt: skip
        if (kind == "user_token") is not is_token:  # a token's id under the key prefix
            raise KeyInvalid()
        if (revoked_at is not None and revoked_at <= now) or deactivated_at is not None:
            raise KeyRevoked()
        if expires_at is not None and expires_at <= now:
            raise KeyExpired()
        return KeyContext(
            pk, key_id, name, kind, frozenset(scopes.split()), allowed_ips, created_at,
            expires_at, revoked_at, last_used_at, tenant_id, tenant_slug, tenant_name,
            user_id, email, role,
        )  # fmt: skip

    def tenant_id_of(self, token: str) -> int | None:
        """The tenant of the key a well-formed token names (None: no such key, client key).
        Not on the hot path: /keys/verify asks it after a refusal that proved the secret."""
        try:
            parsed = keyformat.parse(token)
        except KeyInvalid:
            return None
        row = self.lookup(parsed.key_id)
        return row[11] if row is not None else None


def _close_quietly(conn) -> None:
    with suppress(Exception):  # it is being thrown away, often because it failed
        conn.close()


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
