"""last_used is recorded at most once per key per minute, never a write per request."""

from __future__ import annotations

import re
import time
import weakref

from sqlalchemy import event, select

from app.extensions import db
from app.models import ApiKey, KeyUsageDaily
from tests.conftest import all_engines, bearer, issue_key

UPDATE_KEYS = re.compile(r"^\s*UPDATE\s+api_keys\b", re.IGNORECASE)


def _key_row(app, key: str) -> ApiKey:
    with app.app_context():
        return db.session.execute(
            select(ApiKey).where(ApiKey.key_id == key.split("_")[1])
        ).scalar_one()


def test_last_used_is_set_by_the_first_call(app, client, user):
    key = issue_key(app)
    assert _key_row(app, key).last_used_at is None
    response = client.get(
        "/api/v1/me", headers=bearer(key), environ_base={"REMOTE_ADDR": "192.0.2.1"}
    )
    assert response.status_code == 200
    row = _key_row(app, key)
    assert row.last_used_at is not None and row.last_used_ip == "192.0.2.1"
    again = client.get("/api/v1/me", headers=bearer(key)).json
    assert again["key"]["last_used"] == int(row.last_used_at.timestamp())


def test_hundred_calls_in_a_minute_write_api_keys_once(app, client, user):
    key = issue_key(app)
    orm_updates: list[str] = []
    raw_statements: list[str] = []
    with app.app_context():
        engine = db.engine

        def before_cursor_execute(conn, cursor, statement, *_):
            if UPDATE_KEYS.match(statement):
                orm_updates.append(statement)

        def on_connect(dbapi_connection, _record):
            # The hot path uses raw DBAPI cursors, which SQLAlchemy events do not see:
            # sqlite3 reports every statement run on its connections.
            if hasattr(dbapi_connection, "set_trace_callback"):
                dbapi_connection.set_trace_callback(raw_statements.append)

        event.listen(engine, "before_cursor_execute", before_cursor_execute)
        for each in all_engines(app):  # the hot path looks keys up on its own engine
            event.listen(each, "connect", on_connect)
        engine.dispose()  # new connections, so every one gets the trace callback
    try:
        for _ in range(100):
            assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    finally:
        with app.app_context():
            event.remove(engine, "before_cursor_execute", before_cursor_execute)
            for each in all_engines(app):
                event.remove(each, "connect", on_connect)
    assert len(orm_updates) == 1, orm_updates
    if engine.dialect.name == "sqlite":  # the statement trace exists on sqlite3 only
        raw_updates = [s for s in raw_statements if UPDATE_KEYS.match(s)]
        assert len(raw_updates) == 1, raw_updates
        # The trace saw the hot path's statements (a lookup, or the look at SQLite's commit
        # counter that lets the cache serve: app/keys/commits.py) on every call, so it
        # would have seen a raw UPDATE too.
        hot = ("FROM api_keys k", "PRAGMA data_version")
        assert sum(any(h in s for h in hot) for s in raw_statements) >= 100
    with app.app_context():
        counts = db.session.execute(select(KeyUsageDaily.count)).scalars().all()
    assert counts == [1]  # the first request; the other 99 wait in memory for the next minute


def test_next_minute_writes_again_with_the_buffered_count(app, client, user, monkeypatch):
    import time as real_time

    key = issue_key(app)
    for _ in range(10):
        client.get("/api/v1/me", headers=bearer(key))
    first = _key_row(app, key).last_used_at
    later = real_time.time() + 61
    monkeypatch.setattr("app.api.auth.time.time", lambda: later)
    client.get("/api/v1/me", headers=bearer(key))
    assert _key_row(app, key).last_used_at.timestamp() >= first.timestamp() + 60
    with app.app_context():
        assert sum(db.session.execute(select(KeyUsageDaily.count)).scalars()) == 11


def _count(app, key: str) -> int:
    from app.keys import format as keyformat
    from app.models import ApiKey, KeyUsageDaily

    with app.app_context():
        key_pk = db.session.execute(
            select(ApiKey.id).where(ApiKey.key_id == keyformat.parse(key).key_id)
        ).scalar_one()
        counts = db.session.execute(
            select(KeyUsageDaily.count).where(KeyUsageDaily.api_key_id == key_pk)
        ).scalars()
        return sum(counts)


def _at(monkeypatch, when: float) -> None:
    from types import SimpleNamespace

    from app.api import auth as api_auth

    monkeypatch.setattr(api_auth, "time", SimpleNamespace(time=lambda: when))


def test_a_quiet_keys_buffer_is_written_with_the_next_write(app, client, user, monkeypatch):
    quiet, busy = issue_key(app, name="quiet"), issue_key(app, name="busy")
    start = time.time()
    _at(monkeypatch, start)
    client.get("/api/v1/me", headers=bearer(quiet))  # recorded at once (first use)
    _at(monkeypatch, start + 10)
    client.get("/api/v1/me", headers=bearer(quiet))  # buffered: recorded 10 s ago
    assert _count(app, quiet) == 1
    _at(monkeypatch, start + 75)
    client.get("/api/v1/me", headers=bearer(busy))  # this write also takes the quiet buffer
    assert _count(app, busy) == 1 and _count(app, quiet) == 2


def test_buffered_counts_are_written_at_exit(app, client, user):
    from app.api.auth import _flush_at_exit

    key = issue_key(app)
    for _ in range(5):
        client.get("/api/v1/me", headers=bearer(key))
    assert _count(app, key) == 1  # the first use only; four are buffered
    _flush_at_exit(weakref.ref(app))
    assert _count(app, key) == 5
