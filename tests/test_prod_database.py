"""Engine settings per database, and the test harness's own service rules."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import ApiKey
from tests.conftest import make_app

ROOT = Path(__file__).resolve().parent.parent


def test_sqlite_runs_wal_with_busy_timeout_and_foreign_keys(tmp_path):
    app = make_app(tmp_path)
    with app.app_context():
        assert db.session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert db.session.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
        assert db.session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        db.session.rollback()
        # Foreign keys are enforced, not just declared.
        db.session.add(
            ApiKey(key_id="x" * 12, digest=b"0" * 32, name="orphan", kind="user", scopes="",
                   user_id=999, tenant_id=999, created_at=None, created_by="test")
        )  # fmt: skip
        with pytest.raises(IntegrityError):
            db.session.flush()
        db.session.rollback()
        db.engine.dispose()


def test_sqlite_orm_transactions_take_the_write_lock_first(tmp_path):
    """BEGIN IMMEDIATE: a second writer waits for the first instead of failing later."""
    app = make_app(tmp_path)
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        # While this transaction is open, another connection cannot start writing.
        other = sqlite3.connect(tmp_path / "test.sqlite3", timeout=0.05, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
        db.session.rollback()
        db.engine.dispose()


def _run_pg_test(env_overrides: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/test_smoke.py", "-k", "postgresql", "-W", "ignore"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [("false", "PostgreSQL unreachable"), ("true", "CI=true: services are required")],
)
def test_postgresql_unreachable_skips_locally_and_fails_in_ci(ci, outcome):
    from tests.servers import free_port

    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    result = _run_pg_test({"KEYDESK_TEST_PG_URL": closed, "CI": ci})
    assert outcome in result.stdout, result.stdout[-2000:]
    assert "passed" not in result.stdout
    assert (result.returncode != 0) == (ci == "true")
