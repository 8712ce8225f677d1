"""Rate limits for /api/v1, on Flask-Limiter's storage (RATELIMIT_STORAGE_URI):

- per key id, KEYDESK_API_RATE_LIMIT, charged on every authenticated request;
- failed authentications per client IP, KEYDESK_AUTH_FAILURE_LIMIT: every 401 is charged
  (count_auth_failure); once an address is over, it gets 429 before any key is looked at;
- leak reports per client IP, KEYDESK_LEAK_REPORT_LIMIT (default 30 per minute).

The limits are checked here rather than with @limiter.limit because the per-key limit can
only be keyed once the key is authenticated, inside the view's decorator. Identifiers carry
RATELIMIT_KEY_PREFIX so several deployments (or tests) can share one Redis.

If the storage fails (Redis down), the check falls back to this worker's memory and logs a
warning once; the primary is retried every RETRY_PRIMARY seconds. A limiter fault never
fails the request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from functools import lru_cache

from flask import Flask, current_app, g
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, RateLimiter

from app.extensions import limiter
from app.keys.authn import KeyContext
from app.net import client_ip

log = logging.getLogger(__name__)
RETRY_PRIMARY = 30.0
DEFAULT_LEAK_REPORT_LIMIT = "30 per minute"


class RateLimited(Exception):
    """429: `limit` was exhausted; `reset_at` is the Unix time the window ends."""

    def __init__(self, description: str, limit: RateLimitItem, reset_at: float) -> None:
        super().__init__(description)
        self.limit = limit
        self.reset_at = reset_at


class _Fallback:
    """Per-worker memory limits used while the configured storage is unreachable."""

    def __init__(self) -> None:
        self.strategy = FixedWindowRateLimiter(MemoryStorage())
        self.failed_at: float | None = None
        self.lock = threading.Lock()


@lru_cache(maxsize=64)
def _parse(text: str) -> RateLimitItem:
    return parse(text)


def _item(config_name: str, default: str | None = None) -> RateLimitItem:
    return _parse(current_app.config.get(config_name) or default)


def _ids(*parts: str) -> tuple[str, ...]:
    return (current_app.config.get("RATELIMIT_KEY_PREFIX") or "keydesk", *parts)


def _run(op):
    """op(strategy) on the configured storage, or on the memory fallback while it is down."""
    fallback: _Fallback = current_app.extensions["keydesk.ratelimit_fallback"]
    if fallback.failed_at is None or time.monotonic() - fallback.failed_at > RETRY_PRIMARY:
        try:
            result = op(limiter.limiter)
        except Exception:
            with fallback.lock:
                if fallback.failed_at is None:
                    log.warning(
                        "rate limit storage unreachable; using per-worker memory limits",
                        exc_info=True,
                    )
                fallback.failed_at = time.monotonic()
        else:
            if fallback.failed_at is not None:
                log.warning("rate limit storage is back")
                fallback.failed_at = None
            return result
    return op(fallback.strategy)


def _hit(item: RateLimitItem, *ids: str):
    """Charge one request; returns (allowed, remaining, reset_at)."""

    def op(strategy: RateLimiter):
        allowed = strategy.hit(item, *ids)
        stats = strategy.get_window_stats(item, *ids)
        return allowed, stats.remaining, stats.reset_time

    return _run(op)


def check_key(ctx: KeyContext) -> None:
    """Charge the per-key limit for an authenticated request; RateLimited when over."""
    item = _item("KEYDESK_API_RATE_LIMIT")
    allowed, remaining, reset_at = _hit(item, *_ids("key", ctx.key_id))
    g.keydesk_rate_limit = (item, remaining, reset_at)
    if not allowed:
        raise RateLimited(f"Rate limit of {item} for this API key exceeded", item, reset_at)


def check_auth_failures() -> None:
    """Before any key check: 429 when this address used up its failed-authentication budget."""
    item = _item("KEYDESK_AUTH_FAILURE_LIMIT")
    ids = _ids("authfail", client_ip())

    def op(strategy: RateLimiter):
        if strategy.test(item, *ids):
            return None
        return strategy.get_window_stats(item, *ids).reset_time

    reset_at = _run(op)
    if reset_at is not None:
        raise RateLimited(
            "Too many failed authentications from this address; try again later",
            item,
            reset_at,
        )


def count_auth_failure() -> None:
    """Charge one failed authentication to the client address (called on every 401)."""
    try:
        _hit(_item("KEYDESK_AUTH_FAILURE_LIMIT"), *_ids("authfail", client_ip()))
    except Exception:  # never turn a 401 into a 500
        log.warning("could not count a failed authentication", exc_info=True)


def check_leak_report() -> None:
    item = _item("KEYDESK_LEAK_REPORT_LIMIT", DEFAULT_LEAK_REPORT_LIMIT)
    allowed, remaining, reset_at = _hit(item, *_ids("leak", client_ip()))
    g.keydesk_rate_limit = (item, remaining, reset_at)
    if not allowed:
        raise RateLimited(f"Rate limit of {item} for leak reports exceeded", item, reset_at)


def _retry_after(reset_at: float) -> int:
    return max(1, math.ceil(reset_at - time.time()))


def add_headers(response):
    """The standard headers: X-RateLimit-* (as Flask-Limiter sends them, reset in Unix time)
    and the IETF draft RateLimit-* fields (reset in seconds from now)."""
    state = g.get("keydesk_rate_limit")
    if state is None:
        return response
    item, remaining, reset_at = state
    headers = response.headers
    headers["X-RateLimit-Limit"] = str(item.amount)
    headers["X-RateLimit-Remaining"] = str(max(0, remaining))
    headers["X-RateLimit-Reset"] = str(int(reset_at))
    headers["RateLimit-Limit"] = str(item.amount)
    headers["RateLimit-Remaining"] = str(max(0, remaining))
    headers["RateLimit-Reset"] = str(_retry_after(reset_at))
    headers["RateLimit-Policy"] = f"{item.amount};w={item.get_expiry()}"
    return response


def init_app(app: Flask) -> None:
    from app.api.errors import error_response

    app.extensions["keydesk.ratelimit_fallback"] = _Fallback()
    # A typo in a limit must stop the app at start, not turn every API call into a 500.
    for name, default in (
        ("KEYDESK_API_RATE_LIMIT", None),
        ("KEYDESK_AUTH_FAILURE_LIMIT", None),
        ("KEYDESK_LEAK_REPORT_LIMIT", DEFAULT_LEAK_REPORT_LIMIT),
    ):
        try:
            _parse(app.config.get(name) or default)
        except ValueError as exc:
            raise ValueError(f"{name}: not a rate limit ({exc})") from None

    @app.errorhandler(RateLimited)
    def _rate_limited(exc: RateLimited):
        response = error_response(429, "rate_limited", str(exc))
        response.headers["Retry-After"] = str(_retry_after(exc.reset_at))
        if g.get("keydesk_rate_limit") is None:
            g.keydesk_rate_limit = (exc.limit, 0, exc.reset_at)
        return response

    app.after_request(add_headers)
