"""The per-worker key cache and its invalidation feed (app/keys/feed.py), on real
PostgreSQL and Redis: what is cached, what evicts it, and that it fails closed."""

from __future__ import annotations

import re
import select as io_select
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update

from app.accounts import members, policy
from app.accounts import service as accounts
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import feed as auth_feed
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import ApiKey, KeyIpSeen, KeyUsageDaily, Tenant, User
from tests import cache_helpers
from tests.cache_helpers import RedisMonitor, count_statements, wait_for
from tests.conftest import (
    REDIS_URL,
    bearer,
    create_user,
    issue_key,
    pg_app,
    pg_connect,
    service_missing,
)

ROOT = Path(__file__).resolve().parent.parent
redis_prefix = cache_helpers.redis_prefix  # a fixture


@pytest.fixture
def pg(pg_database):
    pg_database.create()
    if pg_database.error:
        service_missing(pg_database.error)
    return pg_database


@pytest.fixture
def make_pg_app(pg):
    apps = []

    def make(**config):
        app = pg_app(pg, {"SQLALCHEMY_DATABASE_URI": pg.url, **config}) if not apps else None
        if app is None:  # a second "instance" on the same data: no TRUNCATE
            from app import create_app
            from tests.conftest import _test_config

            app = create_app(_test_config({"SQLALCHEMY_DATABASE_URI": pg.url, **config}))
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def _key_id(key: str) -> str:
    return keyformat.parse(key).key_id


def _cached(app, key: str) -> bool:
    authn = app.extensions["keydesk.authenticator"]
    return authn.cache.get(_key_id(key), time.monotonic()) is not None


def _warm(app, client, key: str) -> None:
    """Call until the feed is live and the key is in the cache."""

    def ready() -> bool:
        assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
        return _cached(app, key)

    wait_for(ready, what="the key to be cached behind a live feed")


def _raw_revoke(pg, key: str) -> None:
    """A write that bypasses SQLAlchemy (and so the emitter): only the fail-closed rules
    can make a worker notice it."""
    with pg_connect(pg.name) as conn:
        conn.execute(
            "UPDATE api_keys SET revoked_at = 1 WHERE key_id = %s", (_key_id(key),)
        )  # a raw write; no NOTIFY


def test_a_cached_key_costs_no_statement_and_no_redis_command(make_pg_app, redis_prefix):
    app = make_pg_app(
        RATELIMIT_STORAGE_URI=REDIS_URL,
        RATELIMIT_KEY_PREFIX=redis_prefix,
        KEYDESK_API_RATE_LIMIT="100000 per minute",
        KEYDESK_AUTH_FAILURE_LIMIT="50 per minute",
    )
    create_user(app)
    key = issue_key(app)
    statements = count_statements(app)
    client = app.test_client()
    _warm(app, client, key)
    monitor = RedisMonitor(redis_prefix)
    try:
        statements.clear()
        for _ in range(300):
            response = client.get("/api/v1/me", headers=bearer(key))
            assert response.status_code == 200
            assert response.headers["X-RateLimit-Limit"] == "100000"
        commands = monitor.settle()
    finally:
        monitor.stop()
    # Without the cache this is 300 lookups and 300 Redis round trips. A heartbeat of the
    # feed's found unread on its socket is handled by the request itself: none at all.
    assert statements == []
    assert commands == []
    # And the counters still count: the lease ran down by the 300 calls and the warm-up.
    assert int(response.headers["X-RateLimit-Remaining"]) <= 100000 - 301


def test_the_cache_really_serves(make_pg_app, pg):
    """A write the feed never hears of (raw SQL) is not seen while the key is cached:
    proof that the rows come from the cache, which the tests below rely on."""
    app = make_pg_app()
    create_user(app)
    key = issue_key(app)
    client = app.test_client()
    _warm(app, client, key)
    _raw_revoke(pg, key)
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    app.extensions["keydesk.authenticator"].cache.clear()
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401


def test_feed_killed_by_pg_terminate_backend_fails_closed(make_pg_app, pg):
    app = make_pg_app()
    create_user(app)
    key = issue_key(app)
    client = app.test_client()
    _warm(app, client, key)
    feed = app.extensions["keydesk.authenticator"].feed
    reconnects, listener = feed.reconnects, feed.backend_pid
    _raw_revoke(pg, key)  # the cache now holds a stale row
    with pg_connect() as admin:
        # With a timeout, pg_terminate_backend waits until the backend is gone.
        assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", (listener,)).fetchone()[0]
    # Down (or already back with an emptied cache): either way the stale row is not served.
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401
    wait_for(lambda: feed.reconnects > reconnects and feed.state() == "live", what="reconnect")
    assert feed.backend_pid != listener
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401


def test_a_notification_the_listener_has_not_read_is_handled_by_the_request(
    make_pg_app, pg, monkeypatch
):
    """The gap between a notification reaching the worker and its listener thread acting
    on it: the request finds it waiting on the socket, handles it itself (the eviction
    first), and the feed stays live; no lookup is spent on what only needed reading."""
    app = make_pg_app()
    create_user(app)
    key = issue_key(app)
    client = app.test_client()
    _warm(app, client, key)
    feed = app.extensions["keydesk.authenticator"].feed
    real_drain = type(feed)._drain

    def listener_stalls(self, conn):  # the listener thread never gets to read
        if threading.current_thread().name == "keydesk-auth-feed":
            self._handling.release()  # stalled as if without the GIL, not holding the lock
            time.sleep(0.01)
            self._handling.acquire()
            return
        real_drain(self, conn)

    monkeypatch.setattr(type(feed), "_drain", listener_stalls)
    _raw_revoke(pg, key)  # no emitter: only the notification below can evict
    with pg_connect(pg.name) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (auth_feed.CHANNEL, f"K:{_key_id(key)}"))
    wait_for(lambda: io_select.select((feed._fd,), (), (), 0)[0], what="the notification")
    assert _cached(app, key)  # still cached: nobody has read the notification yet
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401
    # Evicted, looked up and cached again as revoked: the request read the notification
    # and found the feed live. (Failing closed instead would have left the old row.)
    row = app.extensions["keydesk.authenticator"].cache.get(_key_id(key), time.monotonic())
    assert row is not None and row[9] is not None  # revoked_at (authn._COLUMNS)
    assert not io_select.select((feed._fd,), (), (), 0)[0]  # the socket was read


def test_a_lagging_feed_is_not_trusted(make_pg_app, pg, monkeypatch):
    app = make_pg_app()
    create_user(app)
    key = issue_key(app)
    client = app.test_client()
    _warm(app, client, key)
    feed = app.extensions["keydesk.authenticator"].feed
    _raw_revoke(pg, key)
    # Heartbeats stop coming back (as when the listener falls behind the queue).
    monkeypatch.setattr(feed, "_hb_channel", "keydesk_hb_nobody_listens")
    # Wait for the condition itself: "lagging" is also a feed with a notification still
    # unread on its socket for a moment, which a fast check could catch instead.
    wait_for(lambda: feed.lag() > feed.max_silence, timeout=10, what="the feed to fall behind")
    assert feed.state() == "lagging"  # no heartbeat can come back on the changed channel
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401


def _admin(app) -> tuple[User, Tenant]:
    user = accounts.get_user_by_email("alice@example.com")
    return user, user.tenant


def _change_key(app, key, how):
    key_id = _key_id(key)
    row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()
    now, actor = utcnow(), Actor.cli()
    if how == "revoke":
        keys.revoke_key(key=row, now=now, actor=actor)
    elif how == "leak":
        keys.revoke_key(key=row, now=now, actor=actor, reason="leaked")
    elif how == "rotate_no_grace":
        keys.rotate_key(key=row, grace_hours=0, now=now, actor=actor)
    elif how == "allow_list":
        keys.set_allowed_ips(key=row, allowed_ips="203.0.113.0/24", now=now, actor=actor)
    elif how == "orm_expiry":
        row.expires_at = now - timedelta(seconds=1)
    elif how == "orm_scopes":
        row.scopes = "admin:all"  # not what the view asks for in the checks below: see test
    elif how == "core_bulk":
        db.session.execute(
            update(ApiKey).where(ApiKey.tenant_id == row.tenant_id).values(revoked_at=now)
        )
    elif how == "text_sql":
        db.session.execute(
            text("UPDATE api_keys SET revoked_at = :t WHERE key_id = :k"),
            {"t": int(now.timestamp()), "k": key_id},
        )
    elif how == "delete":
        for model in (KeyUsageDaily, KeyIpSeen):
            db.session.execute(delete(model).where(model.api_key_id == row.id))
        db.session.execute(delete(ApiKey).where(ApiKey.id == row.id))
    elif how == "deactivate_user":
        user, tenant = _admin(app)
        create_user(app, "bob@example.com", role="admin")  # not the last admin
        members.deactivate(tenant=tenant, user=user, actor=actor, now=now)
    elif how == "role_change":
        create_user(app, "bob@example.com", role="admin")
        user, tenant = _admin(app)
        members.change_role(tenant=tenant, user=user, role="member", actor=actor, now=now)
    elif how == "policy_change":
        _, tenant = _admin(app)
        policy.update_policy(
            tenant=tenant, max_key_lifetime_days=30, require_expiry=True,
            member_scopes=["api:read"], actor=actor, now=now,
        )  # fmt: skip
    elif how == "tenant_rename":
        db.session.execute(update(Tenant).values(name="Renamed"))
    db.session.commit()


REFUSED = ["revoke", "leak", "rotate_no_grace", "allow_list", "orm_expiry", "core_bulk",
           "text_sql", "delete", "deactivate_user"]  # fmt: skip
CHANGED = ["orm_scopes", "role_change", "policy_change", "tenant_rename"]


@pytest.mark.parametrize("how", REFUSED + CHANGED)
def test_every_write_path_reaches_another_instance(make_pg_app, how):
    """Instance A caches the key; instance B (another app: its own feed connection, its own
    cache) makes the change. A must see it within 2 s, through the feed alone."""
    a = make_pg_app()
    create_user(a)
    key = issue_key(a, scopes=("api:read",))
    client = a.test_client()
    _warm(a, client, key)
    before = client.get("/api/v1/me", headers=bearer(key)).get_json()
    b = make_pg_app()
    local_evict = auth_feed.evict_locally
    try:
        # In one test process both apps' caches sit side by side: switch off the in-process
        # shortcut, so only the PostgreSQL notification can reach A's cache.
        auth_feed.evict_locally = lambda targets: None
        with b.app_context():
            _change_key(b, key, how)
        wait_for(lambda: not _cached(a, key), timeout=2, what="A's cache entry to go")
    finally:
        auth_feed.evict_locally = local_evict
    response = client.get(
        "/api/v1/me", headers=bearer(key), environ_base={"REMOTE_ADDR": "192.0.2.9"}
    )
    if how in REFUSED:
        assert response.status_code in (401, 403), response.get_json()
    else:
        assert response.status_code == 200
        if how != "policy_change":  # the policy is not part of /me; the eviction is the point
            assert response.get_json() != before  # the new role, scopes or tenant name shows


def test_usage_writes_and_new_keys_do_not_evict(make_pg_app):
    a = make_pg_app()
    create_user(a)
    key = issue_key(a)
    client = a.test_client()
    _warm(a, client, key)
    cache = a.extensions["keydesk.authenticator"].cache
    evictions = cache.evictions
    with a.app_context():
        db.session.execute(
            update(ApiKey).where(ApiKey.key_id == _key_id(key)).values(last_used_at=utcnow())
        )
        db.session.commit()
    issue_key(a, name="another")
    time.sleep(0.3)  # a notification, had one been sent, arrives in milliseconds
    assert cache.evictions == evictions and _cached(a, key)


def test_the_worker_that_revokes_refuses_at_once(make_pg_app):
    """No waiting for the feed: the change evicts in-process at the statement and commit."""
    app = make_pg_app()
    create_user(app)
    key = issue_key(app)
    client = app.test_client()
    _warm(app, client, key)
    feed = app.extensions["keydesk.authenticator"].feed
    feed.on_block = None
    with app.app_context():
        _change_key(app, key, "revoke")
    assert not _cached(app, key)
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401


# --- the one place: nothing writes keys, users or tenants around SQLAlchemy ------------


@pytest.mark.parametrize("fault", ["emitter unhooked", "emitter says nothing changed"])
def test_the_run_wide_check_catches_a_write_that_does_not_emit(
    make_pg_app, emitter_check, monkeypatch, fault
):
    """tests/emitter_check.py watches every statement of the run; show that it fails when
    a revocation does not emit (then forget what this test caused on purpose)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    app = make_pg_app()
    create_user(app)
    key = issue_key(app)
    seen = len(emitter_check)
    if fault == "emitter unhooked":
        event.remove(Engine, "before_cursor_execute", auth_feed._before)
    else:
        monkeypatch.setattr(auth_feed, "classify", lambda *args: None)
    try:
        with app.app_context():
            _change_key(app, key, "revoke")
    finally:
        if fault == "emitter unhooked":
            event.listen(Engine, "before_cursor_execute", auth_feed._before)
    caught = emitter_check[seen:]
    del emitter_check[seen:]
    assert caught, "the check missed a revocation that sent no invalidation"
    assert all("UPDATE api_keys" in c for c in caught), caught


RAW_ACCESS = re.compile(
    r"raw_connection\(|\.dbapi_connection|driver_connection|psycopg\.connect\(|sqlite3\.connect\("
)
ALLOWED_RAW = {
    "app/keys/authn.py": "the hot path's lookups: SELECT only",
    "app/keys/feed.py": "the listener's own connection; pg_notify inside a transaction",
    "app/keys/commits.py": "SQLite's commit counter: PRAGMA data_version, a read",
    "app/database.py": "SQLite pragmas on connect",
    "app/backup.py": "SQLite's online backup API reads the database; it writes only the copy",
}


def test_no_code_reaches_the_database_around_sqlalchemy():
    """Every statement through SQLAlchemy passes the emitter (it hooks the Engine class).
    A raw DBAPI connection would not: the app may open one only where listed."""
    found = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        hits = [
            n for n, line in enumerate(path.read_text().splitlines(), 1) if RAW_ACCESS.search(line)
        ]
        if hits and rel not in ALLOWED_RAW:
            found[rel] = hits
    assert found == {}, f"raw DBAPI access outside {sorted(ALLOWED_RAW)}: {found}"
    authn = (ROOT / "app/keys/authn.py").read_text()
    assert not re.search(r"\b(UPDATE|INSERT|DELETE)\b", authn.split("_LOOKUP")[1].split(")")[0])


def test_feed_status_for_metrics(make_pg_app):
    app = make_pg_app()
    create_user(app)
    key = issue_key(app)
    feed = app.extensions["keydesk.authenticator"].feed
    assert auth_feed.status(feed)["state"] == "down"  # not started before the first call
    _warm(app, app.test_client(), key)
    # Live in steady state; for an instant after a notification it reads "lagging" (unread
    # on the socket), so wait for the steady state and judge the status that showed it.
    seen: list[dict] = []
    wait_for(
        lambda: seen.append(auth_feed.status(feed)) or seen[-1]["state"] == "live",
        timeout=10,
        what="the feed to be live",
    )
    status = seen[-1]
    assert 0 <= status["lag_seconds"] < feed.max_silence
    assert status["cached_keys"] == 1 and status["reconnects"] == 1
    assert auth_feed.status(None)["state"] == "off"


def _row(pk: int, user: int = 1, tenant: int = 1) -> tuple:
    row = [None] * 18
    row[0], row[11], row[14] = pk, tenant, user
    return tuple(row)


def test_the_cache_refuses_a_row_read_across_an_eviction_and_stays_bounded():
    cache = auth_feed.KeyCache(ttl=60, max_entries=3)
    epoch = cache.epoch  # a lookup starts...
    cache.evict(["k:99"])  # ...an eviction for any key runs meanwhile...
    cache.put("a", _row(1), epoch, now=0.0)  # ...so what it read may be stale: not kept
    assert cache.get("a", now=0.0) is None
    for n, key_id in enumerate("abcd"):
        cache.put(key_id, _row(n + 1, user=n + 1), cache.epoch, now=0.0)
    assert len(cache) == 3 and cache.get("a", 0.0) is None  # the oldest went first
    assert cache.get("b", now=61.0) is None  # past its lifetime
    cache.evict(["u:3"])  # user 3's keys ("c")
    assert cache.get("c", 0.0) is None and cache.get("d", 0.0) is not None
    cache.evict(["t:1"])  # the tenant's keys: all of them
    assert len(cache) == 0
