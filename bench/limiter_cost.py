"""What a rate-limit check costs per request, in-process (µs of CPU time, best of 5).

    .venv/bin/python bench/limiter_cost.py

Compares the same JSON view in a bare Flask app: without Flask-Limiter, with
Flask-Limiter bound but no limit on the view (its before/after_request hooks run
anyway), with a memory:// per-key limit through Flask-Limiter's decorator, and the
same limit checked directly with the `limits` library Flask-Limiter is built on, and
with the counters Keydesk's API uses (app/api/limits.py MemoryWindows).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from flask import Flask, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.profile import call  # noqa: E402

HIGH = "100000000 per minute"


def per_request_us(app, path: str, n: int = 3000) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            call(app, path, "kd_TESTKEY")
        best = min(best, (time.process_time() - started) / n)
    return best * 1e6


def main() -> None:
    from flask_limiter import Limiter
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    from app.api.limits import MemoryWindows

    def key() -> str:
        return request.headers.get("Authorization", "")

    plain = Flask("plain")
    plain.get("/v")(lambda: jsonify(pong=True))

    limited = Flask("limited")
    limiter = Limiter(key_func=key, storage_uri="memory://", app=limited)
    limited.get("/none")(lambda: jsonify(pong=True))
    limited.add_url_rule("/limited", "limited", limiter.limit(HIGH)(lambda: jsonify(pong=True)))

    rate = parse(HIGH)
    fixed = FixedWindowRateLimiter(MemoryStorage())
    moving = MovingWindowRateLimiter(MemoryStorage())
    direct = Flask("direct")

    @direct.get("/fixed")
    def fixed_view():
        if not fixed.hit(rate, "key", key()):
            return jsonify(error="rate_limited"), 429
        return jsonify(pong=True)

    @direct.get("/fixed-stats")
    def fixed_stats_view():  # what app/api/limits.py did until 2026-11: hit + window stats
        allowed = fixed.hit(rate, "key", key())
        fixed.get_window_stats(rate, "key", key())
        if not allowed:
            return jsonify(error="rate_limited"), 429
        return jsonify(pong=True)

    windows = MemoryWindows()

    @direct.get("/windows")
    def windows_view():
        count, _reset_at = windows.hit("key/" + key(), rate.get_expiry(), time.time())
        if count > rate.amount:
            return jsonify(error="rate_limited"), 429
        return jsonify(pong=True)

    @direct.get("/moving")
    def moving_view():
        if not moving.hit(rate, "key", key()):
            return jsonify(error="rate_limited"), 429
        return jsonify(pong=True)

    base = per_request_us(plain, "/v")
    rows = [
        ("Flask, no limiter", base),
        ("Flask-Limiter bound, view not limited", per_request_us(limited, "/none")),
        ("Flask-Limiter @limit, memory:// (fixed window)", per_request_us(limited, "/limited")),
        ("limits FixedWindowRateLimiter.hit, memory://", per_request_us(direct, "/fixed")),
        ("limits FixedWindow hit + get_window_stats", per_request_us(direct, "/fixed-stats")),
        ("limits MovingWindowRateLimiter.hit, memory://", per_request_us(direct, "/moving")),
        ("Keydesk MemoryWindows.hit (app/api/limits.py)", per_request_us(direct, "/windows")),
    ]
    for name, us in rows:
        print(f"{name:50s} {us:7.1f} µs/request  (+{us - base:5.1f})")


if __name__ == "__main__":
    main()
