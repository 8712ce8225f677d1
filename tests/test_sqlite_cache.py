"""The key cache on SQLite (app/keys/commits.py): served without a lookup while nothing was
committed, and cleared by any commit from any connection or process before the next call."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from app.accounts import service as accounts
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import ApiKey
from tests.conftest import bearer, create_user, issue_key, sqlite_only

pytestmark = sqlite_only


@pytest.fixture
def key(app):
    create_user(app)
    return issue_key(app)


@pytest.fixture
def lookups(app, monkeypatch):
    """The key lookups the app makes (each one indexed query on the database)."""
    authn = app.extensions["keydesk.authenticator"]
    made: list[str] = []
    real = authn.lookup

    def counting(key_id: str):
        made.append(key_id)
        return real(key_id)

    monkeypatch.setattr(authn, "lookup", counting)
    return made


def _me(client, key) -> int:
    return client.get("/api/v1/me", headers=bearer(key)).status_code


def test_a_key_seen_recently_costs_no_lookup(app, key, lookups):
    client = app.test_client()
    for _ in range(3):  # the first call looks up; its usage write (a commit) clears once
        assert _me(client, key) == 200
    before = len(lookups)
    for _ in range(100):
        assert _me(client, key) == 200
    # Usage counting writes at most once per key and minute: a minute that turns during
    # the loop is one commit, one lookup more. Without the cache: 100.
    assert len(lookups) - before <= 1


@pytest.mark.parametrize("how", ["revoke", "deactivate", "raw_sql"])
def test_a_commit_on_another_connection_is_seen_by_the_next_call(app, key, lookups, how):
    client = app.test_client()
    for _ in range(3):
        assert _me(client, key) == 200
    key_id = keyformat.parse(key).key_id
    if how == "raw_sql":  # no SQLAlchemy at all, so no in-process eviction either
        with app.app_context():
            path = db.engine.url.database
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (1, key_id))
        conn.close()
    else:
        with app.app_context():
            if how == "revoke":
                row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id))
                keys.revoke_key(key=row.scalar_one(), now=utcnow(), actor=Actor.cli())
            else:
                user = accounts.get_user_by_email("alice@example.com")
                user.deactivated_at = utcnow()
            db.session.commit()
    assert _me(client, key) == 401


def test_a_commit_by_another_process_is_seen_by_the_next_call(app, key):
    client = app.test_client()
    for _ in range(3):
        assert _me(client, key) == 200
    with app.app_context():
        path = db.engine.url.database
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        " c.execute('UPDATE api_keys SET revoked_at = 1 WHERE key_id = ?', (sys.argv[2],));"
        " c.commit()"
    )
    subprocess.run([sys.executable, "-c", script, path, keyformat.parse(key).key_id], check=True)
    started = time.monotonic()
    assert _me(client, key) == 401  # the very next call, no waiting
    assert time.monotonic() - started < 2


def test_an_unreadable_commit_counter_fails_closed(app, key, lookups):
    client = app.test_client()
    for _ in range(3):
        assert _me(client, key) == 200
    watch = app.extensions["keydesk.authenticator"].watch

    class Broken:
        def execute(self, *args):
            raise sqlite3.OperationalError("disk I/O error")

        def close(self):
            pass

    watch._cursor = Broken()
    before = len(lookups)
    assert _me(client, key) == 200
    assert len(lookups) == before + 1  # looked up, not served from the cache
    assert watch._conn is None  # and the next call opens a new connection
    assert _me(client, key) == 200


@pytest.mark.parametrize("app_config", [{"KEYDESK_AUTH_CACHE_TTL": 0}], indirect=True)
def test_ttl_zero_turns_the_cache_off(app, key, lookups):
    client = app.test_client()
    for _ in range(5):
        assert _me(client, key) == 200
    assert len(lookups) == 5
    assert app.extensions["keydesk.authenticator"].cache is None
