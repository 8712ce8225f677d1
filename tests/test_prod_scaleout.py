"""The production configuration with real servers: two gunicorn instances on one
PostgreSQL database and one Redis. A revocation made through one instance is refused by
every worker of the other within 2 s; two instances at three times a key's limit allow
the limit per window (within 5 %), never more; a blocked address is blocked by another
instance without asking Redis; Redis unreachable never fails an API call."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app import create_app
from app.extensions import db
from app.keys import format as keyformat
from tests import cache_helpers
from tests.cache_helpers import RedisMonitor, wait_for
from tests.conftest import (
    REDIS_URL,
    _test_config,
    bearer,
    create_user,
    issue_key,
    pg_app,
    service_missing,
)
from tests.servers import free_port, gunicorn, server_env

redis_prefix = cache_helpers.redis_prefix  # a fixture


@pytest.fixture
def pg(pg_database):
    pg_database.create()
    if pg_database.error:
        service_missing(pg_database.error)
    return pg_database


def _setup(pg, **config):
    """Empty tables on the session's PostgreSQL database, alice and her keys."""
    app = pg_app(pg, {"SQLALCHEMY_DATABASE_URI": pg.url, **config})
    create_user(app)
    key = issue_key(app, scopes=("api:read",))
    manager = issue_key(app, scopes=("keys:write", "keys:read"))
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    return key, manager


def _me(server, key: str, ip: str | None = None) -> requests.Response:
    headers = bearer(key)
    return requests.get(server.url + "/api/v1/me", headers=headers, timeout=30)


def _every_worker_served(server, key: str, workers: int) -> None:
    """Concurrent calls until each worker has answered 200 a few times (so each has the
    key in its cache once its feed is live)."""
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(2 * workers) as pool:
        while time.monotonic() < deadline:
            statuses = list(pool.map(lambda _: _me(server, key).status_code, range(8 * workers)))
            assert set(statuses) == {200}, statuses
            served = [pid for pid, status, path in server.access() if path == "/api/v1/me"]
            if len(set(served)) >= workers and min(map(served.count, set(served))) >= 5:
                return
    raise AssertionError("not every worker served the key")


def test_revocation_through_one_instance_is_refused_by_the_other_within_2s(
    pg, redis_prefix, tmp_path
):
    key, manager = _setup(pg)
    env = server_env(
        pg.url,
        KEYDESK_RATELIMIT_STORAGE_URI=REDIS_URL,
        KEYDESK_RATELIMIT_KEY_PREFIX=redis_prefix,
        KEYDESK_API_RATE_LIMIT="100000 per minute",
    )
    with (
        gunicorn(env, 2, tmp_path / "a.log") as a,
        gunicorn(env, 2, tmp_path / "b.log") as b,
    ):
        _every_worker_served(b, key, 2)
        key_id = keyformat.parse(key).key_id
        revoked = requests.post(
            f"{a.url}/api/v1/tenant/acme/api-keys/{key_id}/revoke", headers=bearer(manager),
            timeout=30,
        )  # fmt: skip
        committed = time.monotonic()  # the response comes after the commit
        assert revoked.status_code == 200, revoked.text
        while (status := _me(b, key).status_code) == 200:
            assert time.monotonic() - committed < 2, "instance B still serves the revoked key"
        assert status == 401
        # From then on no worker of either instance serves it.
        with ThreadPoolExecutor(4) as pool:
            for server in (a, b):
                statuses = set(pool.map(lambda _, s=server: _me(s, key).status_code, range(24)))
                assert statuses == {401}, statuses
        logs = a.log() + b.log()
    assert "Traceback" not in logs


def test_two_instances_at_three_times_a_keys_limit_allow_the_limit(pg, redis_prefix, tmp_path):
    limit, window = 100, 4
    key, _ = _setup(pg)
    env = server_env(
        pg.url,
        KEYDESK_RATELIMIT_STORAGE_URI=REDIS_URL,
        KEYDESK_RATELIMIT_KEY_PREFIX=redis_prefix,
        KEYDESK_API_RATE_LIMIT=f"{limit} per {window} seconds",
    )
    with (
        gunicorn(env, 2, tmp_path / "a.log") as a,
        gunicorn(env, 2, tmp_path / "b.log") as b,
    ):
        rate, seconds = 3 * limit / window, 3.5 * window
        count = int(rate * seconds)
        started = time.monotonic()

        def call(i: int) -> requests.Response:
            delay = started + i / rate - time.monotonic()  # paced: three times the limit
            if delay > 0:
                time.sleep(delay)
            return _me(a if i % 2 else b, key)

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(call, range(count)))
        served = {pid for pid, status, path in a.access(0.5) + b.access() if status == 200}
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, set(statuses)
    assert len(served) == 4, "every worker of both instances admitted calls"
    # Group by window: every answer names the end of its window (X-RateLimit-Reset).
    ends = sorted({int(r.headers["X-RateLimit-Reset"]) for r in responses})
    windows: list[list[int]] = []
    for end in ends:
        if windows and end - windows[-1][-1] <= 1:
            windows[-1].append(end)
        else:
            windows.append([end])
    ok_ends = [int(r.headers["X-RateLimit-Reset"]) for r in responses if r.status_code == 200]
    allowed = [sum(1 for end in ok_ends if end in w) for w in windows]
    print("allowed per window:", allowed)
    assert len(allowed) >= 3, allowed
    assert all(n <= limit for n in allowed), allowed  # never more than the limit
    assert all(n >= 0.95 * limit for n in allowed[:3]), allowed  # full windows: within 5 %


def _app(pg, **config):
    return create_app(_test_config({"SQLALCHEMY_DATABASE_URI": pg.url, **config}))


def test_a_blocked_address_is_blocked_by_another_instance_without_asking_redis(pg, redis_prefix):
    config = {
        "RATELIMIT_STORAGE_URI": REDIS_URL,
        "RATELIMIT_KEY_PREFIX": redis_prefix,
        "KEYDESK_AUTH_FAILURE_LIMIT": "3 per minute",
        "KEYDESK_API_RATE_LIMIT": "100000 per minute",
    }
    key, _ = _setup(pg, **config)
    a, b = _app(pg, **config), _app(pg, **config)
    try:
        x, y = {"REMOTE_ADDR": "198.51.100.7"}, {"REMOTE_ADDR": "198.51.100.8"}
        client_a, client_b = a.test_client(), b.test_client()
        # B is warm: its feed is live and has loaded the blocks in force (none).
        feed_b = b.extensions["keydesk.authenticator"].feed
        limits_b = b.extensions["keydesk.limits"]

        def warm() -> bool:
            assert (
                client_b.get("/api/v1/me", headers=bearer(key), environ_base=y).status_code == 200
            )
            return feed_b.state() == "live" and limits_b.blocks_loaded_for == feed_b.reconnects

        wait_for(warm, what="B's feed")
        assert client_b.get("/api/v1/me", headers=bearer(key), environ_base=x).status_code == 200

        unknown = keyformat.assemble("kd", keyformat.new_key_id(), keyformat.new_secret())
        for _ in range(3):
            assert (
                client_a.get("/api/v1/me", headers=bearer(unknown), environ_base=x).status_code
                == 401
            )
        assert client_a.get("/api/v1/me", headers=bearer(key), environ_base=x).status_code == 429

        monitor = RedisMonitor(redis_prefix)
        try:
            wait_for(lambda: "198.51.100.7" in limits_b.blocked, timeout=2, what="the block on B")
            refused = client_b.get("/api/v1/me", headers=bearer(key), environ_base=x)
            fine = client_b.get("/api/v1/me", headers=bearer(key), environ_base=y)
            commands = monitor.settle()
        finally:
            monitor.stop()
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert fine.status_code == 200
        assert commands == [], commands

        # A worker that starts later learns the block from Redis when its feed connects.
        c = _app(pg, **config)
        try:
            client_c = c.test_client()
            feed_c = c.extensions["keydesk.authenticator"].feed
            limits_c = c.extensions["keydesk.limits"]
            wait_for(
                lambda: (
                    client_c.get("/api/v1/me", headers=bearer(key), environ_base=y).status_code
                    == 200
                    and limits_c.blocks_loaded_for == feed_c.reconnects
                    and feed_c.state() == "live"
                ),
                what="C's feed",
            )
            assert (
                client_c.get("/api/v1/me", headers=bearer(key), environ_base=x).status_code == 429
            )
        finally:
            with c.app_context():
                db.engine.dispose()
    finally:
        for app in (a, b):
            with app.app_context():
                db.session.remove()
                db.engine.dispose()


def test_redis_unreachable_never_fails_an_api_call_on_postgresql(pg):
    config = {
        "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{free_port()}",
        "KEYDESK_API_RATE_LIMIT": "5 per minute",
        "KEYDESK_AUTH_FAILURE_LIMIT": "2 per minute",
    }
    key, _ = _setup(pg, **config)
    app = _app(pg, **config)
    try:
        client = app.test_client()
        statuses = [client.get("/api/v1/me", headers=bearer(key)).status_code for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2  # the per-worker memory fallback still limits
        unknown = keyformat.assemble("kd", keyformat.new_key_id(), keyformat.new_secret())
        other = {"REMOTE_ADDR": "192.0.2.77"}
        failures = [
            client.get("/api/v1/me", headers=bearer(unknown), environ_base=other).status_code
            for _ in range(3)
        ]
        assert failures == [401, 401, 429]
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_leases_shrink_to_one_hit_and_never_hand_out_more_than_the_limit(redis_prefix):
    """Three workers' LeasedWindows on one Redis counter, taking turns at random."""
    import random

    from limits.storage import storage_from_string

    from app.api.limits import LeasedWindows

    storage = storage_from_string(REDIS_URL)
    workers = [LeasedWindows(storage) for _ in range(3)]
    key, limit, now = f"{redis_prefix}/key/100/60/k", 100, time.time()
    sizes, admitted, chooser = [], 0, random.Random(7)
    for _ in range(400):
        worker = chooser.choice(workers)
        before = worker.leases_taken
        count, reset_at = worker.hit(key, 60, now, limit)
        if worker.leases_taken > before:
            lease = worker._leases[key]
            sizes.append(lease[0] + (1 if count <= limit else 0))
        admitted += count <= limit
        assert now < reset_at <= now + 60
    assert admitted == limit  # exactly the limit: none lost (all busy), none over
    assert sizes[0] == limit // 16 and 1 in sizes  # shares shrink down to a single hit
    assert sum(w.leases_taken for w in workers) < 60  # far fewer round trips than hits
    # Once a worker has learned the window is spent, it refuses without asking Redis.
    for worker in workers:
        worker.hit(key, 60, now, limit)  # at most one more (empty) lease to learn it
    taken = [w.leases_taken for w in workers]
    assert all(w.hit(key, 60, now, limit)[0] > limit for w in workers for _ in range(10))
    assert [w.leases_taken for w in workers] == taken
