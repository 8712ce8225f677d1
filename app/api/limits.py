"""Rate limits for /api/v1:

- per key id, KEYDESK_API_RATE_LIMIT, charged on every authenticated request;
- failed authentications per client IP, KEYDESK_AUTH_FAILURE_LIMIT: every 401 is charged
  (count_auth_failure); once an address is over, it gets 429 before any key is looked at;
- leak reports per client IP, KEYDESK_LEAK_REPORT_LIMIT (default 30 per minute).

The limits are checked here rather than with Flask-Limiter's @limiter.limit because the
per-key limit can only be keyed once the key is authenticated, inside the view's decorator.

Windows are fixed and start at a counter's first hit, as in the `limits` library's
fixed-window strategy (so a window never ends in the middle of a short burst by accident
of the clock). Storage follows RATELIMIT_STORAGE_URI:

- `memory://`: MemoryWindows below, one dict per worker;
- anything else (`redis://...`): a `limits` storage opened for this app, shared by every
  worker and machine. A failed authentication or a leak report is its atomic
  increment-with-expiry plus one TTL read. The per-key limit is LEASED on Redis
  (LeasedWindows): a worker takes a share of the key's window budget with one script
  call (INCRBY, expiry on the window's first share, PTTL) and spends it locally, so an
  authenticated call makes no Redis round trip in steady state.

What the lease guarantees (README "Performance"): never more than the limit per window
across all workers and machines (a share is granted only out of hits numbered up to the
limit by Redis' atomic counter); a share is at most 1/LEASE_SPREAD of what is left (at
most MAX_LEASE), so shares shrink to one hit near exhaustion; unused shares expire with
their window (never returned: a DECRBY could land in the next window and over-admit), so
a worker that goes quiet can take at most one share out of the window with it. Once a
worker learns the window is spent it refuses locally until the window ends.

The failed-authentication budget keeps its rule (an address over it gets 429 on every
request): failures are counted in Redis as they happen, and the worker that sees an
address reach the budget publishes "blocked until T" on the auth feed (app/keys/feed.py)
and records it in a Redis sorted set that a worker reads when its feed (re)connects. So
while the feed is live a successful call asks no storage about its address; while it is
down, each call reads the address's count from Redis as before.

Why not limits' FixedWindowRateLimiter (as until 2026-11): on every API call its hit plus
window stats cost ~10 µs on MemoryStorage, which also restarts an expiry Timer thread
every 10 ms while requests come in; MemoryWindows costs ~1 µs (bench/limiter_cost.py).

Storage keys carry RATELIMIT_KEY_PREFIX (several deployments or tests can share one Redis)
and the limit itself, so changing a limit starts fresh counters. If the storage fails
(Redis down), the checks fall back to this worker's memory and log a warning once; the
storage is retried every RETRY_PRIMARY seconds. A limiter fault never fails the request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from flask import Flask, current_app, request
from limits import parse
from limits.storage import Storage, storage_from_string

from app.net import client_ip

log = logging.getLogger(__name__)
RETRY_PRIMARY = 30.0
DEFAULT_LEAK_REPORT_LIMIT = "30 per minute"
# Where a request leaves its rate-limit headers for app.web.ResponseHeaders to send.
HEADERS_ENVIRON_KEY = "keydesk.rate_limit_headers"


@dataclass(frozen=True, slots=True)
class Limit:
    amount: int
    seconds: int
    text: str  # "5 per 1 minute", for messages
    namespace: str  # storage key prefix: "<RATELIMIT_KEY_PREFIX>/<kind>/<amount>/<seconds>/"
    fixed_headers: tuple[tuple[str, str], ...]  # the response headers that never change

    def key(self, ident: str) -> str:
        return self.namespace + ident


class RateLimited(Exception):
    """429: `limit` was exhausted; `reset_at` is the Unix time the window ends."""

    def __init__(self, description: str, limit: Limit, reset_at: float) -> None:
        super().__init__(description)
        self.limit = limit
        self.reset_at = reset_at


class Windows(Protocol):
    def hit(self, key: str, seconds: int, now: float, amount: int = 0) -> tuple[int, float]:
        """Count one; return (count in the window, Unix time the window ends). `amount`
        is the limit (LeasedWindows sizes its shares by it; counters ignore it)."""

    def count(self, key: str, now: float) -> int: ...

    def reset_at(self, key: str, now: float) -> float: ...


class MemoryWindows:
    """Fixed-window counters in this process: {storage key: [count, window end]}."""

    SWEEP_EVERY = 60.0

    def __init__(self) -> None:
        self._windows: dict[str, list] = {}
        self._lock = threading.Lock()
        self._sweep_at = 0.0

    def hit(self, key: str, seconds: int, now: float, amount: int = 0) -> tuple[int, float]:
        with self._lock:
            window = self._windows.get(key)
            if window is None or window[1] <= now:
                if now >= self._sweep_at:
                    self._sweep(now)
                window = self._windows[key] = [0, now + seconds]
            window[0] += 1
            return window[0], window[1]

    def count(self, key: str, now: float) -> int:
        window = self._windows.get(key)  # one dict read, atomic: no lock needed
        return 0 if window is None or window[1] <= now else window[0]

    def reset_at(self, key: str, now: float) -> float:
        window = self._windows.get(key)
        return now if window is None else window[1]

    def _sweep(self, now: float) -> None:
        # Drop ended windows once a minute, so keys and addresses that went quiet do not
        # pile up; a window is replaced in place on its own next hit anyway.
        self._sweep_at = now + self.SWEEP_EVERY
        for key in [key for key, window in self._windows.items() if window[1] <= now]:
            del self._windows[key]


class StorageWindows:
    """The same counters on a `limits` storage (Redis, Memcached, ...)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def hit(self, key: str, seconds: int, now: float, amount: int = 0) -> tuple[int, float]:
        count = self.storage.incr(key, seconds)  # atomic; sets the expiry on the first hit
        # The storage's TTL is whole seconds counted from its own read, a moment after `now`.
        return count, min(self.storage.get_expiry(key), now + seconds)

    def count(self, key: str, now: float) -> int:
        return self.storage.get(key)

    def reset_at(self, key: str, now: float) -> float:
        return self.storage.get_expiry(key)


# One round trip per lease: add the share, start the window's expiry with its first share,
# and say when the window ends.
_LEASE_SCRIPT = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {total, ttl}
"""
MAX_LEASE = 1000
LEASE_SPREAD = 16


class LeasedWindows:
    """Per-key windows on Redis, spent locally from leased shares (see the module doc).

    {storage key: [hits left in this worker's share, window end, hits handed out in the
    window as of our last lease]}."""

    SWEEP_EVERY = 60.0

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._script = storage.get_connection().register_script(_LEASE_SCRIPT)
        self._leases: dict[str, list] = {}
        self._lock = threading.Lock()
        self._sweep_at = 0.0
        self.leases_taken = 0  # round trips made, for tests and metrics

    def hit(self, key: str, seconds: int, now: float, amount: int = 0) -> tuple[int, float]:
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease[1] > now:
                if lease[0] > 0:
                    lease[0] -= 1
                    return min(lease[2], amount) - lease[0], lease[1]
                if lease[2] >= amount:
                    return amount + 1, lease[1]  # the window is spent: refuse locally
                handed_out = lease[2]
            else:
                handed_out = 0
                if now >= self._sweep_at:
                    self._sweep(now)
        size = max(1, min(MAX_LEASE, (amount - handed_out) // LEASE_SPREAD))
        total, ttl_ms = self._script(
            keys=[self.storage.prefixed_key(key)], args=[size, seconds * 1000]
        )
        self.leases_taken += 1
        total, end = int(total), now + int(ttl_ms) / 1000
        granted = min(size, max(0, amount - (total - size)))
        with self._lock:
            if granted == 0:
                self._leases[key] = [0, end, total]
                return amount + 1, end
            self._leases[key] = [granted - 1, end, total]
            return min(total, amount) - (granted - 1), end

    def count(self, key: str, now: float) -> int:
        lease = self._leases.get(key)
        return 0 if lease is None or lease[1] <= now else min(lease[2], 2**62) - lease[0]

    def reset_at(self, key: str, now: float) -> float:
        lease = self._leases.get(key)
        return now if lease is None else lease[1]

    def _sweep(self, now: float) -> None:
        self._sweep_at = now + self.SWEEP_EVERY
        for key in [key for key, lease in self._leases.items() if lease[1] <= now]:
            del self._leases[key]


class ApiLimits:
    """One app's limits, read from its config once, and where they are counted."""

    def __init__(self, config) -> None:
        prefix = config.get("RATELIMIT_KEY_PREFIX") or "keydesk"

        def limit(kind: str, name: str, default: str | None = None) -> Limit:
            try:
                item = parse(config.get(name) or default)
            except ValueError as exc:
                # A typo in a limit must stop the app at start, not fail every API call.
                raise ValueError(f"{name}: not a rate limit ({exc})") from None
            seconds = item.get_expiry()
            fixed = (
                ("X-RateLimit-Limit", str(item.amount)),
                ("RateLimit-Limit", str(item.amount)),
                ("RateLimit-Policy", f"{item.amount};w={seconds}"),
            )
            namespace = f"{prefix}/{kind}/{item.amount}/{seconds}/"
            return Limit(item.amount, seconds, str(item), namespace, fixed)

        self.per_key = limit("key", "KEYDESK_API_RATE_LIMIT")
        self.auth_failures = limit("authfail", "KEYDESK_AUTH_FAILURE_LIMIT")
        self.leak_reports = limit("leak", "KEYDESK_LEAK_REPORT_LIMIT", DEFAULT_LEAK_REPORT_LIMIT)
        uri = config.get("RATELIMIT_STORAGE_URI") or "memory://"
        self.primary: Windows = (
            MemoryWindows()
            if uri.startswith("memory://")
            else StorageWindows(
                storage_from_string(uri, **config.get("RATELIMIT_STORAGE_OPTIONS", {}))
            )
        )
        self.fallback = MemoryWindows()
        self.failed_at: float | None = None
        self._lock = threading.Lock()
        self.prefix = prefix
        # The per-key limit: leased where the storage is Redis, else as the other limits.
        self.key_windows: Windows = self.primary
        storage = getattr(self.primary, "storage", None)
        if storage is not None and hasattr(storage, "get_connection"):
            try:
                self.key_windows = LeasedWindows(storage)
            except Exception:  # Redis down at start: counters now, leases after a restart
                log.warning("rate limit storage unreachable; per-key limits unleased")
        # Addresses over their failure budget, spread by the auth feed: {ip: blocked until}.
        self.feed = None  # app/keys/feed.AuthFeed, attached by app/api/auth.py
        self.engine = None
        self.blocked: dict[str, float] = {}
        self.blocks_loaded_for = -1  # the feed connection (AuthFeed.reconnects) they came with

        if isinstance(self.primary, MemoryWindows):
            # Memory cannot be unreachable: call it directly, no failover wrapping per call.
            self.hit, self.count = self.primary.hit, self.primary.count
            self.reset_at = self.primary.reset_at
            self.key_hit = self.primary.hit

    def hit(self, key: str, seconds: int, now: float) -> tuple[int, float]:
        return self.run(lambda windows: windows.hit(key, seconds, now))

    def count(self, key: str, now: float) -> int:
        return self.run(lambda windows: windows.count(key, now))

    def reset_at(self, key: str, now: float) -> float:
        return self.run(lambda windows: windows.reset_at(key, now))

    def key_hit(self, key: str, seconds: int, now: float, amount: int) -> tuple[int, float]:
        return self.run(lambda windows: windows.hit(key, seconds, now, amount), self.key_windows)

    def run(self, op, primary: Windows | None = None):
        """op(windows) on the configured storage, or on the memory fallback while it is down."""
        if self.failed_at is None or time.monotonic() - self.failed_at > RETRY_PRIMARY:
            try:
                result = op(primary or self.primary)
            except Exception:
                with self._lock:
                    if self.failed_at is None:
                        log.warning(
                            "rate limit storage unreachable; using per-worker memory limits",
                            exc_info=True,
                        )
                    self.failed_at = time.monotonic()
            else:
                if self.failed_at is not None:
                    log.warning("rate limit storage is back")
                    self.failed_at = None
                return result
        return op(self.fallback)

    def charge(self, limit: Limit, ident: str, what: str, environ: dict, now: float) -> None:
        """Count one request against `limit` for `ident`; RateLimited when over.
        Either way the response carries the limit's headers."""
        if limit is self.per_key:
            count, reset_at = self.key_hit(
                limit.namespace + ident, limit.seconds, now, limit.amount
            )
        else:
            count, reset_at = self.hit(limit.namespace + ident, limit.seconds, now)
        environ[HEADERS_ENVIRON_KEY] = headers(limit, limit.amount - count, reset_at, now)
        if count > limit.amount:
            raise RateLimited(f"Rate limit of {limit.text} for {what} exceeded", limit, reset_at)

    def check_auth_failures(self, ip: str, now: float, live: bool | None = None) -> None:
        """Before any key check: 429 when `ip` used up its failed-authentication budget.
        `live`: whether the auth feed is live, as the caller just found it."""
        limit = self.auth_failures
        feed = self.feed
        if (
            feed is not None
            and self.blocks_loaded_for == feed.reconnects
            and (feed.live(time.monotonic()) if live is None else live)
        ):
            # The feed is live and brought every block since it connected: no round trip.
            until = self.blocked.get(ip)
            if until is not None and until > now:
                raise RateLimited(
                    "Too many failed authentications from this address; try again later",
                    limit,
                    until,
                )
            return
        key = limit.namespace + ip
        if self.count(key, now) >= limit.amount:
            raise RateLimited(
                "Too many failed authentications from this address; try again later",
                limit,
                self.reset_at(key, now),
            )

    # --- blocks on the auth feed

    def _blocked_key(self) -> str:
        return f"{self.prefix}/authfail-blocked/{self.auth_failures.amount}"

    def attach_feed(self, feed, engine) -> None:
        """Spread address blocks on `feed` (Redis storage and a PostgreSQL feed only)."""
        storage = getattr(self.primary, "storage", None)
        if feed is None or storage is None or not hasattr(storage, "get_connection"):
            return
        self.feed, self.engine = feed, engine
        feed.on_block = self._note_block
        feed.on_connect = self._load_blocks

    def _note_block(self, ip: str, until: float) -> None:
        if until > self.blocked.get(ip, 0):
            self.blocked[ip] = until

    def _load_blocks(self) -> None:
        """On each feed (re)connect: the blocks in force, from Redis (one round trip)."""
        feed = self.feed
        self.blocks_loaded_for = -1
        now = time.time()
        redis = self.primary.storage.get_connection()
        name = self.primary.storage.prefixed_key(self._blocked_key())
        pipe = redis.pipeline(transaction=False)
        pipe.zremrangebyscore(name, "-inf", now)
        pipe.zrangebyscore(name, now, "+inf", withscores=True)
        _, rows = pipe.execute()
        self.blocked = {(ip.decode() if isinstance(ip, bytes) else ip): until for ip, until in rows}
        self.blocks_loaded_for = feed.reconnects

    def block(self, ip: str, until: float) -> None:
        """`ip` used up its failure budget: tell every worker (feed) and later ones (Redis)."""
        from app.keys import feed as auth_feed

        self._note_block(ip, until)
        storage = self.primary.storage
        storage.get_connection().zadd(storage.prefixed_key(self._blocked_key()), {ip: until})
        auth_feed.publish(self.engine, f"b:{until}:{ip}")


def _limits() -> ApiLimits:
    return current_app.extensions["keydesk.limits"]


def count_auth_failure() -> None:
    """Charge one failed authentication to the client address (called on every 401)."""
    limits = _limits()
    limit, now = limits.auth_failures, time.time()
    ip = client_ip()
    try:
        count, reset_at = limits.hit(limit.key(ip), limit.seconds, now)
        over = limits.feed is not None and count >= limit.amount and limits.failed_at is None
        if over and limits.blocked.get(ip, 0) < reset_at:  # newly over: tell every worker
            limits.block(ip, reset_at)
    except Exception:  # never turn a 401 into a 500
        log.warning("could not count a failed authentication", exc_info=True)


def check_leak_report() -> None:
    limits = _limits()
    limits.charge(limits.leak_reports, client_ip(), "leak reports", request.environ, time.time())


def _retry_after(reset_at: float, now: float) -> int:
    return max(1, math.ceil(reset_at - now))


def headers(limit: Limit, remaining: int, reset_at: float, now: float) -> list[tuple[str, str]]:
    """The standard headers: X-RateLimit-* (as Flask-Limiter sends them, reset in Unix time)
    and the IETF draft RateLimit-* fields (reset in seconds from now)."""
    left = str(max(0, remaining))
    return [
        *limit.fixed_headers,
        ("X-RateLimit-Remaining", left),
        ("X-RateLimit-Reset", str(int(reset_at))),
        ("RateLimit-Remaining", left),
        ("RateLimit-Reset", str(_retry_after(reset_at, now))),
    ]


# ops: keydesk_rate_limit_refusals_total{limit} by the namespace's kind (Limit.namespace).
_LIMIT_NAMES = {"key": "api_key", "authfail": "auth_failures", "leak": "leak_reports"}


def init_app(app: Flask) -> None:
    from app.api.errors import error_response
    from app.metrics import count_rate_limited  # ops

    app.extensions["keydesk.limits"] = ApiLimits(app.config)

    @app.errorhandler(RateLimited)
    def _rate_limited(exc: RateLimited):
        now = time.time()
        count_rate_limited(_LIMIT_NAMES.get(exc.limit.namespace.split("/")[-4], "api_key"))  # ops
        response = error_response(429, "rate_limited", str(exc))
        response.headers["Retry-After"] = str(_retry_after(exc.reset_at, now))
        request.environ.setdefault(HEADERS_ENVIRON_KEY, headers(exc.limit, 0, exc.reset_at, now))
        return response
