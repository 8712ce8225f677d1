"""Per-key rate limits, failed-authentication limits per IP, on memory:// and real Redis."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.conftest import bearer, create_user, issue_key, make_app

REDIS_URL = os.environ.get("KEYDESK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_or_skip():
    import redis

    conn = redis.Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI but not reachable at {REDIS_URL}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    return conn


@pytest.fixture(params=["memory", "redis"])
def storage(request):
    """Limiter config for each storage; Redis gets a unique key prefix, deleted afterwards."""
    if request.param == "memory":
        yield {"RATELIMIT_STORAGE_URI": "memory://"}
        return
    conn = _redis_or_skip()
    prefix = f"keydesk-test-{uuid.uuid4().hex}"
    yield {"RATELIMIT_STORAGE_URI": REDIS_URL, "RATELIMIT_KEY_PREFIX": prefix}
    for name in conn.scan_iter(match=f"*{prefix}*"):
        conn.delete(name)
    conn.close()


def _app(tmp_path, storage, **config):
    app = make_app(tmp_path, **storage, **config)
    create_user(app)
    return app


def test_per_key_limit_with_headers(tmp_path, storage):
    app = _app(tmp_path, storage, KEYDESK_API_RATE_LIMIT="5 per minute")
    client = app.test_client()
    key, other = issue_key(app), issue_key(app, name="other")
    for n in range(5):
        response = client.get("/api/v1/me", headers=bearer(key))
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(4 - n)
        assert response.headers["RateLimit-Limit"] == "5"
        assert 0 < int(response.headers["RateLimit-Reset"]) <= 60
    limited = client.get("/api/v1/resources", headers=bearer(key))
    assert limited.status_code == 429
    assert limited.json["error"] == "rate_limited" and limited.json["error_description"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    # Per key, not per address: another key from the same address is unaffected.
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 200
    # And per key, not per address the other way round.
    elsewhere = client.get(
        "/api/v1/me", headers=bearer(key), environ_base={"REMOTE_ADDR": "1.2.3.4"}
    )
    assert elsewhere.status_code == 429


def test_limit_is_shared_by_workers_on_redis(tmp_path):
    """Two app instances (two workers) on one Redis share one budget per key."""
    conn = _redis_or_skip()
    prefix = f"keydesk-test-{uuid.uuid4().hex}"
    config = {
        "RATELIMIT_STORAGE_URI": REDIS_URL,
        "RATELIMIT_KEY_PREFIX": prefix,
        "KEYDESK_API_RATE_LIMIT": "4 per minute",
    }
    try:
        app = _app(tmp_path, {}, **config)
        key = issue_key(app)
        first = app.test_client()
        assert all(
            first.get("/api/v1/me", headers=bearer(key)).status_code == 200 for _ in range(2)
        )
        second = make_app(tmp_path, **config)  # same database, fresh limiter storage object
        worker2 = second.test_client()
        assert [worker2.get("/api/v1/me", headers=bearer(key)).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        assert any(prefix in name.decode() for name in conn.scan_iter(match=f"*{prefix}*"))
    finally:
        for name in conn.scan_iter(match=f"*{prefix}*"):
            conn.delete(name)
        conn.close()


def test_failed_authentications_are_limited_per_ip(tmp_path, storage):
    app = _app(tmp_path, storage, KEYDESK_AUTH_FAILURE_LIMIT="3 per minute")
    client = app.test_client()
    good = issue_key(app)
    bad = good[:-1] + ("a" if good[-1] != "a" else "b")
    assert client.get("/api/v1/me", headers=bearer(bad)).status_code == 401
    assert client.get("/api/v1/me").status_code == 401  # no header counts too
    assert client.get("/api/v1/me", headers=bearer(bad)).status_code == 401
    # Over the budget: even a good key from this address gets 429 before any key check.
    blocked = client.get("/api/v1/me", headers=bearer(good))
    assert blocked.status_code == 429 and blocked.json["error"] == "rate_limited"
    assert int(blocked.headers["Retry-After"]) >= 1
    assert client.get("/api/v1/me", headers=bearer(bad)).status_code == 429
    # Another address is unaffected.
    other = client.get("/api/v1/me", headers=bearer(good), environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 200
    # Unauthenticated routes stay open.
    assert client.get("/api/v1/ping").status_code == 200


def test_successful_requests_do_not_count_as_failures(tmp_path):
    app = _app(
        tmp_path, {"RATELIMIT_STORAGE_URI": "memory://"}, KEYDESK_AUTH_FAILURE_LIMIT="2/minute"
    )
    client = app.test_client()
    key = issue_key(app)
    assert all(client.get("/api/v1/me", headers=bearer(key)).status_code == 200 for _ in range(5))


def test_unreachable_storage_falls_back_to_memory(tmp_path, caplog):
    # A closed port: the limiter logs a warning and limits in memory instead of failing.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = _app(
        tmp_path,
        {"RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{port}/0"},
        KEYDESK_API_RATE_LIMIT="2 per minute",
    )
    client = app.test_client()
    key = issue_key(app)
    codes = [client.get("/api/v1/me", headers=bearer(key)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    warnings = [r for r in caplog.records if "rate limit storage unreachable" in r.getMessage()]
    assert len(warnings) == 1


def test_memory_windows_start_at_the_first_hit_and_ended_ones_are_dropped():
    from app.api.limits import MemoryWindows

    windows = MemoryWindows()
    assert windows.hit("a", 60, now=1000.0) == (1, 1060.0)
    assert windows.hit("a", 60, now=1059.0) == (2, 1060.0)
    assert windows.count("a", now=1059.0) == 2
    assert windows.count("a", now=1060.0) == 0  # the window has ended
    assert windows.hit("a", 60, now=1061.0) == (1, 1121.0)  # a new one starts here
    for n in range(100):  # addresses that each failed once and went quiet
        windows.hit(f"quiet-{n}", 60, now=1061.0)
    windows.hit("b", 60, now=1061.0 + windows.SWEEP_EVERY + 60)  # a new window sweeps
    assert set(windows._windows) == {"b"}
