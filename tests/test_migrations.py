"""`flask db upgrade` from an empty database, on SQLite and on the real PostgreSQL server, and
no drift between the models and the migrated schema (`flask db check`)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
TABLES = {
    "tenants",
    "users",
    "api_keys",
    "key_usage_daily",
    "key_ips_seen",
    "audit_events",
    "resources",
    "invites",
    "user_sessions",
    "password_resets",
    "form_submissions",
    "totp_factors",
    "recovery_codes",
    "passkeys",
    "device_authorizations",
    "sso_configs",
    "sso_domains",
    "sso_logins",
    "scim_tokens",
    "scim_users",
    "alembic_version",
}
PG_ADMIN_URL = os.environ.get(
    "KEYDESK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def flask(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "KEYDESK_DATABASE_URL": database_url,
        # explicit secrets: the run must not create files in the checkout's instance/
        "KEYDESK_SECRET_KEY": "migration-test",
        "KEYDESK_KEY_PEPPER": "migration-test-pepper",
    }
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def check_schema(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) >= TABLES
        columns = {c["name"]: c for c in inspector.get_columns("api_keys")}
        assert isinstance(columns["created_at"]["type"], sa.BigInteger)  # UnixTime as BIGINT
        assert {"key_id", "digest", "scopes", "revoked_at", "expires_at"} <= set(columns)
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("api_keys")}
        indexes = {
            tuple(i["column_names"]) for i in inspector.get_indexes("api_keys") if i["unique"]
        }
        assert ("key_id",) in uniques | indexes
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def upgrade_check_downgrade(url: str) -> None:
    assert_ok(flask(url, "db", "upgrade"))
    check_schema(url)
    check = flask(url, "db", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    # the migrated schema is usable by the app: a user, a key, a seed
    assert_ok(
        flask(url, "users", "create", "m@example.com", "--password", "x" * 16, "--tenant", "m")
    )
    issued = flask(url, "keys", "issue", "--email", "m@example.com", "--name", "k")
    assert_ok(issued)
    assert issued.stdout.startswith("kd_")
    assert_ok(flask(url, "seed", "--keys", "50"))
    # upgrading again is a no-op, and the whole chain downgrades to nothing
    assert_ok(flask(url, "db", "upgrade"))
    assert_ok(flask(url, "db", "downgrade", "base"))
    engine = sa.create_engine(url)
    try:
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_on_sqlite(tmp_path):
    upgrade_check_downgrade(f"sqlite:///{tmp_path / 'migrated.sqlite3'}")


@pytest.fixture
def pg_database():
    """A uniquely named PostgreSQL database, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    admin = sa.make_url(PG_ADMIN_URL)
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"keydesk_test_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def test_upgrade_from_empty_on_postgresql(pg_database):
    upgrade_check_downgrade(pg_database)
