"""The hot path's promises about database work (counted, never timed).

The API authenticates on raw DBAPI cursors, so SQLAlchemy's before_cursor_execute
alone would miss its queries: every statement SQLite runs is also counted with
sqlite3's set_trace_callback on each new connection.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select

from app.api import auth as api_auth
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import ApiKey, KeyUsageDaily
from tests.conftest import (
    PG_ADMIN_URL,
    all_engines,
    bearer,
    create_user,
    issue_key,
    make_app,
    service_missing,
    sqlite_only,
)


class StatementLog:
    """Every statement run on the app's database, by SQLAlchemy or on a raw cursor."""

    def __init__(self, app):
        self.sqlalchemy: list[str] = []
        self.sqlite: list[str] = []
        with app.app_context():
            engine = db.engine

            @event.listens_for(engine, "before_cursor_execute")
            def _orm(_conn, _cursor, statement, *_args):
                self.sqlalchemy.append(statement)

            def _connect(dbapi_connection, _record):
                dbapi_connection.set_trace_callback(self.sqlite.append)

            for each in all_engines(app):  # the hot path looks keys up on its own engine
                event.listen(each, "connect", _connect)

            # Close what is open now, so every connection used from here on is a new one.
            engine.dispose()

    def clear(self) -> None:
        self.sqlalchemy.clear()
        self.sqlite.clear()

    def writes(self) -> list[str]:
        verbs = ("INSERT", "UPDATE", "DELETE")
        return [s for s in self.sqlite if s.lstrip().upper().startswith(verbs)]

    def commits(self) -> int:
        return sum(1 for s in self.sqlite if s.strip().upper() == "COMMIT")


@pytest.fixture
def statements(app) -> StatementLog:  # use with @sqlite_only: the trace is sqlite3's
    return StatementLog(app)


def _key_row(full_key: str) -> ApiKey:
    """The key's row (call inside an app context)."""
    key_id = keyformat.parse(full_key).key_id
    return db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()


def _warm_up(client) -> None:
    """One refused call, so the hot path's connection exists (opening it pings once)."""
    unknown = keyformat.assemble("kd", keyformat.new_key_id(), keyformat.new_secret())
    assert client.get("/api/v1/me", headers=bearer(unknown)).status_code == 401


COUNTER = "PRAGMA data_version"  # SQLite's commit counter, read before the cache serves


def _lookups(statements: StatementLog) -> list[str]:
    return [s for s in statements.sqlite if "FROM api_keys k" in s]


@sqlite_only
def test_valid_key_is_served_with_one_statement(app, client, user, statements):
    key = issue_key(app)
    client.get("/api/v1/me", headers=bearer(key))  # first use: records last-used once
    client.get("/api/v1/me", headers=bearer(key))  # that commit cleared the cache: a lookup
    statements.clear()
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 200
    assert response.get_json()["user"]["email"] == user
    assert statements.sqlite == [COUNTER]  # nothing committed since: served from the cache
    assert statements.sqlalchemy == []


@pytest.mark.parametrize("app_config", [{"KEYDESK_AUTH_CACHE_TTL": 0}], indirect=True)
@sqlite_only
def test_without_the_cache_a_valid_key_is_served_with_one_lookup(app, client, user, statements):
    key = issue_key(app)
    client.get("/api/v1/me", headers=bearer(key))  # first use: records last-used once
    statements.clear()
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 200
    assert len(statements.sqlite) == 1
    assert statements.sqlite[0].lstrip().upper().startswith("SELECT")
    assert statements.sqlalchemy == []


@sqlite_only
def test_bad_checksum_makes_zero_queries(app, client, user, statements):
    key = issue_key(app)
    broken = key[:-1] + ("A" if key[-1] != "A" else "B")
    random_looking = keyformat.assemble("kd", "A" * 12, "B" * 32)[:-6] + "000000"
    statements.clear()
    for token in (broken, random_looking, "kd_short", "x" * 200):
        response = client.get("/api/v1/me", headers=bearer(token))
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_token"
    assert statements.sqlite == []
    assert statements.sqlalchemy == []


@pytest.mark.parametrize("case", ["revoked", "expired", "unknown"])
@sqlite_only
def test_refused_key_makes_exactly_one_lookup(app, client, user, statements, case):
    key = issue_key(app)
    if case == "unknown":
        key = keyformat.assemble("kd", keyformat.new_key_id(), keyformat.new_secret())
    else:
        with app.app_context():
            row = _key_row(key)
            if case == "revoked":
                keys.revoke_key(key=row, now=utcnow(), actor=Actor.cli())
            else:
                row.expires_at = utcnow() - timedelta(seconds=1)
            db.session.commit()
    _warm_up(client)
    statements.clear()
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 401
    assert len(_lookups(statements)) == 1  # first seen: one lookup, and no write at all
    assert sorted(statements.sqlite) == sorted([COUNTER, *_lookups(statements)])
    assert statements.sqlalchemy == []


def test_revocation_is_seen_on_the_next_request(app, client, user):
    key = issue_key(app)
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    with app.app_context():
        keys.revoke_key(key=_key_row(key), now=utcnow(), actor=Actor.cli())
        db.session.commit()
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 401
    assert "revoked" in response.get_json()["error_description"]


@sqlite_only
def test_at_most_one_write_per_key_per_minute(app, client, user, statements, monkeypatch):
    key = issue_key(app)
    _warm_up(client)
    statements.clear()
    for _ in range(200):
        assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    updates = [s for s in statements.writes() if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1
    assert statements.commits() == 1

    later = time.time() + 61
    monkeypatch.setattr(api_auth, "time", SimpleNamespace(time=lambda: later))
    for _ in range(200):
        assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    updates = [s for s in statements.writes() if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 2
    assert statements.commits() == 2

    with app.app_context():
        pk = _key_row(key).id
        counted = db.session.execute(
            select(KeyUsageDaily.count).where(KeyUsageDaily.api_key_id == pk)
        ).scalars()
        # The first write carried request 1; the second, requests 2-201. The last 199
        # wait in the worker's buffer for the next minute.
        assert sum(counted) == 201
        assert _key_row(key).last_used_at is not None


# --- PostgreSQL: a connection that dies is replaced; a database that is down gives 503.


@pytest.fixture
def pg_app(tmp_path):
    import psycopg

    url = PG_ADMIN_URL
    from sqlalchemy.engine import make_url

    server = make_url(url)
    admin_url = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"keydesk_test_perf_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        service_missing(f"PostgreSQL unreachable: {exc}")
    app = make_app(
        tmp_path,
        SQLALCHEMY_DATABASE_URI=server.set(database=name).render_as_string(hide_password=False),
    )
    try:
        yield app, admin_url, name
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _terminate_backends(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def test_postgresql_reconnects_and_answers_503_while_down(pg_app):
    import psycopg

    app, admin_url, name = pg_app
    create_user(app)
    key = issue_key(app)
    client = app.test_client()
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200

    # The server restarted under us: the next call reconnects and still succeeds.
    _terminate_backends(admin_url, name)
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200

    # The database refuses connections: 503 at once, not a hang and not a 500.
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    _terminate_backends(admin_url, name)
    started = time.monotonic()
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 503
    assert response.get_json()["error"] == "temporarily_unavailable"
    assert time.monotonic() - started < 10

    # Back up: served again without a restart.
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200

    # And a revocation committed elsewhere is seen by the very next request.
    with app.app_context():
        keys.revoke_key(key=_key_row(key), now=utcnow(), actor=Actor.cli())
        db.session.commit()
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401


def _closed(conn) -> bool:
    try:
        conn.cursor().execute("SELECT 1")
    except Exception:  # sqlite3.ProgrammingError, psycopg.OperationalError: closed
        return True
    return False


def test_disposing_the_engine_closes_the_lookup_connections(app, client, user):
    """They live outside SQLAlchemy's pool (app/keys/authn.py): dispose() must still reach
    them, or a database could not be dropped or failed over while a worker holds them."""
    key = issue_key(app)
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    authenticator = app.extensions["keydesk.authenticator"]
    [(_, conn)] = authenticator._idle
    with app.app_context():
        db.engine.dispose()
    assert _closed(conn) and authenticator._idle == []
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200  # a new one


def test_concurrent_lookups_share_few_connections_through_a_dispose(app, user):
    """Sixteen threads look the key up while one of them closes the idle connections
    (as engine.dispose() does) mid-flight. Afterwards at most MAX_IDLE connections are
    kept, none of them closed, and at least one: the lookups made after the close put
    theirs back. Every thread makes one lookup after the close is known to be done (an
    event, not a sleep), so that last point holds on every run: before, the close could
    land after every other lookup had finished and leave nothing idle (a CI flake)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from app.keys.authn import MAX_IDLE

    key = issue_key(app)
    authenticator = app.extensions["keydesk.authenticator"]
    key_id = keyformat.parse(key).key_id
    threads, closed = 16, threading.Event()

    def lookups(n: int) -> int:
        found = 0
        for i in range(50):
            found += authenticator.lookup(key_id) is not None
            if n == 5 and i == 25:
                authenticator.close_connections()  # while the other threads look up
                closed.set()
        assert closed.wait(timeout=30), "the closing thread never got there"
        return found + (authenticator.lookup(key_id) is not None)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        assert list(pool.map(lookups, range(threads))) == [51] * threads
    assert 1 <= len(authenticator._idle) <= MAX_IDLE
    assert not any(_closed(conn) for _, conn in authenticator._idle)
