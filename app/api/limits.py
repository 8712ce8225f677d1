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
  worker and machine. A hit is its atomic increment-with-expiry plus one TTL read.

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
    def hit(self, key: str, seconds: int, now: float) -> tuple[int, float]:
        """Count one; return (count in the window, Unix time the window ends)."""

    def count(self, key: str, now: float) -> int: ...

    def reset_at(self, key: str, now: float) -> float: ...


class MemoryWindows:
    """Fixed-window counters in this process: {storage key: [count, window end]}."""

    SWEEP_EVERY = 60.0

    def __init__(self) -> None:
        self._windows: dict[str, list] = {}
        self._lock = threading.Lock()
        self._sweep_at = 0.0

    def hit(self, key: str, seconds: int, now: float) -> tuple[int, float]:
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

    def hit(self, key: str, seconds: int, now: float) -> tuple[int, float]:
        count = self.storage.incr(key, seconds)  # atomic; sets the expiry on the first hit
        # The storage's TTL is whole seconds counted from its own read, a moment after `now`.
        return count, min(self.storage.get_expiry(key), now + seconds)

    def count(self, key: str, now: float) -> int:
        return self.storage.get(key)

    def reset_at(self, key: str, now: float) -> float:
        return self.storage.get_expiry(key)


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

        if isinstance(self.primary, MemoryWindows):
            # Memory cannot be unreachable: call it directly, no failover wrapping per call.
            self.hit, self.count = self.primary.hit, self.primary.count
            self.reset_at = self.primary.reset_at

    def hit(self, key: str, seconds: int, now: float) -> tuple[int, float]:
        return self.run(lambda windows: windows.hit(key, seconds, now))

    def count(self, key: str, now: float) -> int:
        return self.run(lambda windows: windows.count(key, now))

    def reset_at(self, key: str, now: float) -> float:
        return self.run(lambda windows: windows.reset_at(key, now))

    def run(self, op):
        """op(windows) on the configured storage, or on the memory fallback while it is down."""
        if self.failed_at is None or time.monotonic() - self.failed_at > RETRY_PRIMARY:
            try:
                result = op(self.primary)
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
        count, reset_at = self.hit(limit.namespace + ident, limit.seconds, now)
        environ[HEADERS_ENVIRON_KEY] = headers(limit, limit.amount - count, reset_at, now)
        if count > limit.amount:
            raise RateLimited(f"Rate limit of {limit.text} for {what} exceeded", limit, reset_at)

    def check_auth_failures(self, ip: str, now: float) -> None:
        """Before any key check: 429 when `ip` used up its failed-authentication budget."""
        limit = self.auth_failures
        key = limit.namespace + ip
        if self.count(key, now) >= limit.amount:
            raise RateLimited(
                "Too many failed authentications from this address; try again later",
                limit,
                self.reset_at(key, now),
            )


def _limits() -> ApiLimits:
    return current_app.extensions["keydesk.limits"]


def count_auth_failure() -> None:
    """Charge one failed authentication to the client address (called on every 401)."""
    limits = _limits()
    limit, now = limits.auth_failures, time.time()
    try:
        limits.hit(limit.key(client_ip()), limit.seconds, now)
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
