"""Helpers for the key-cache and leased-limit tests: a Redis namespace of the test's own,
a MONITOR that counts the commands sent for it, and a psycopg cursor that counts every
statement an app's engines run (the hot path's raw DBAPI cursors included)."""

from __future__ import annotations

import secrets
import threading
import time

import psycopg
import pytest

from app.extensions import db
from tests.conftest import REDIS_URL, all_engines, service_missing


@pytest.fixture
def redis_prefix():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing(f"Redis unreachable at {REDIS_URL}: {exc}")
    prefix = f"keydesk-test-{secrets.token_hex(6)}"
    yield prefix
    for name in client.scan_iter(match=f"*{prefix}*"):
        client.delete(name)
    client.close()


class RedisMonitor:
    """Redis MONITOR in a thread: the commands (not those run inside scripts) that name
    `prefix`. Every rate-limit command names its key, and the key carries the prefix."""

    def __init__(self, prefix: str) -> None:
        import redis

        self.prefix = prefix
        self.commands: list[str] = []
        self._client = redis.Redis.from_url(REDIS_URL)
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                command = self._monitor.next_command()
            except Exception:  # the connection closed in stop()
                return
            if command.get("client_type") == "lua":
                continue
            if self.prefix in command.get("command", ""):
                self.commands.append(command["command"])

    def settle(self) -> list[str]:
        """The commands seen so far, after letting MONITOR's stream catch up."""
        import redis

        marker = f"{self.prefix}-marker-{secrets.token_hex(4)}"
        redis.Redis.from_url(REDIS_URL).get(marker)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(marker in c for c in self.commands):
            time.sleep(0.01)
        return [c for c in self.commands if marker not in c]

    def stop(self) -> None:
        self._stop.set()
        self._monitor.connection.disconnect()
        self._client.close()


class CountingCursor(psycopg.Cursor):
    statements: list[str] = []

    def execute(self, query, params=None, **kwargs):
        CountingCursor.statements.append(str(query))
        return super().execute(query, params, **kwargs)


def count_statements(app) -> list[str]:
    """From now on every psycopg connection the app's engines open counts its statements
    into the returned list (the listener thread's own connection is not from an engine)."""
    from sqlalchemy import event

    CountingCursor.statements = seen = []

    def _connect(dbapi_connection, _record):
        dbapi_connection.cursor_factory = CountingCursor

    with app.app_context():
        for engine in all_engines(app):
            event.listen(engine, "connect", _connect)
        db.engine.dispose()  # closes the hot path's connections too: new ones count
    return seen


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
