"""Shared fixtures: `app` (a fresh database per test, cheap argon2), `client`, `runner`,
and helpers to create users, sign in and issue keys.

`app` is parametrized over both databases: every test that uses it runs as
`test_x[sqlite]` and `test_x[postgresql]`. SQLite gets a new file per test;
PostgreSQL gets one fresh database per test session (per xdist worker), tables
created once and emptied with one TRUNCATE between tests so the PG run stays fast.
PostgreSQL unreachable: its params are skipped, unless CI=true, where they fail.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_settings

from app import create_app
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from tests.emitter_check import emitter_check  # noqa: F401  (autouse: checks the whole run)

PASSWORD = "a long test passphrase 42"
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


def _test_config(overrides: dict) -> dict:
    config = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "KEYDESK_KEY_PEPPER": "test-pepper",
        "KEYDESK_ARGON2": FAST_ARGON2,
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_STORAGE_URI": "memory://",
        "KEYDESK_USAGE_BACKGROUND": False,  # usage written inline: tests read it at once
    }
    config.update(overrides)
    return config


def make_app(tmp_path, **overrides) -> Flask:
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'test.sqlite3'}",
        "SECRET_KEY": "test-secret-key",
        "KEYDESK_KEY_PEPPER": "test-pepper",
        "KEYDESK_ARGON2": FAST_ARGON2,
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_STORAGE_URI": "memory://",
        "KEYDESK_USAGE_BACKGROUND": False,  # usage written inline: tests read it at once
    }
    config.update(overrides)
    app = create_app(config)
    with app.app_context():
        db.create_all()  # tests only; the app itself relies on migrations
    return app


@pytest.fixture
def app_config(request) -> dict:
    """Override in a test module, or parametrize indirectly, to change config:
    `@pytest.mark.parametrize("app_config", [{"KEY": value}], indirect=True)`."""
    return dict(getattr(request, "param", {}))


PG_ADMIN_URL = os.environ.get(
    "KEYDESK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("KEYDESK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


# Property tests (hypothesis, schemathesis): CI replays the same examples on every run, so
# a green run stays green and a red one is red again on re-run; local runs draw new
# examples, which is how new bugs get found.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if in_ci():
    hypothesis_settings.load_profile("ci")


def service_missing(message: str):
    """Skip a test whose service (PostgreSQL, Redis) is not running; fail under CI=true."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: services are required)")
    pytest.skip(message)


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def pg_connect(dbname: str | None = None):
    """An autocommit psycopg connection to the test server (admin database by default)."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(PG_ADMIN_URL)
    if dbname:
        url = url.set(database=dbname)
    plain = _libpq_url(url.render_as_string(hide_password=False))
    return psycopg.connect(plain, autocommit=True, connect_timeout=3)


class PgDatabase:
    """One throwaway database: CREATE at first use, DROP at the end of the session."""

    def __init__(self) -> None:
        from sqlalchemy.engine import make_url

        self.name = f"keydesk_test_{secrets.token_hex(6)}"
        admin = make_url(PG_ADMIN_URL)
        self.url = admin.set(database=self.name).render_as_string(hide_password=False)
        self.created = False
        self.tables_ready = False
        self.error: str | None = None

    def create(self) -> None:
        if self.created or self.error:
            return
        try:
            with pg_connect() as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
        except Exception as exc:  # psycopg.OperationalError and friends
            self.error = f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}"
            return
        self.created = True

    def drop(self) -> None:
        if not self.created:
            return
        with pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.created = False


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    database = PgDatabase()
    yield database
    database.drop()


def _truncate_all(app: Flask) -> None:
    tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
    with app.app_context(), db.engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def pg_app(pg: PgDatabase, config: dict) -> Flask:
    """An app on the session's PG database (URL in config), emptied: tables are made once."""
    app = create_app(_test_config(config))
    if not pg.tables_ready:
        with app.app_context():
            db.create_all()
        pg.tables_ready = True
    else:
        _truncate_all(app)
    return app


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The database URL for this test: a new SQLite file, or the session's PG database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"
    pg = request.getfixturevalue("pg_database")
    pg.create()
    if pg.error:
        service_missing(pg.error)
    return pg.url


@pytest.fixture
def app(tmp_path, app_config, database_url, request) -> Iterator[Flask]:
    config = {"SQLALCHEMY_DATABASE_URI": database_url, **app_config}
    if database_url.startswith("postgresql"):
        app = pg_app(request.getfixturevalue("pg_database"), config)
    else:
        app = make_app(tmp_path, **config)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def ctx(app):
    """An application context for calling services directly."""
    with app.app_context():
        yield


def create_user(app, email="alice@example.com", *, tenant="acme", role="admin", password=PASSWORD):
    """Create (or reuse) a tenant and a user directly through the services; returns the email."""
    from app.accounts import service as accounts

    with app.app_context():
        t = accounts.get_tenant_by_slug(tenant) or accounts.create_tenant(
            name=tenant.title(), slug=tenant, now=utcnow()
        )
        accounts.create_user(
            tenant=t, email=email, password=password, role=role, now=utcnow(),
            actor=Actor.cli(), check_rules=False,
        )  # fmt: skip
        db.session.commit()
    return email


def login(client, email="alice@example.com", password=PASSWORD):
    return client.post("/login", data={"email": email, "password": password})


def issue_key(app, email="alice@example.com", *, scopes=("api:read",), days=0, name="test key"):
    """Issue a key through the service; returns the full key string."""
    from app.accounts import service as accounts
    from app.keys import service as keys

    with app.app_context():
        user = accounts.get_user_by_email(email)
        _, full = keys.issue_key(
            user=user, name=name, scopes=scopes, expires_in_days=days, now=utcnow(),
            actor=Actor.cli(),
        )  # fmt: skip
        db.session.commit()
    return full


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def secret_from_page(html: str) -> str:
    from bs4 import BeautifulSoup

    field = BeautifulSoup(html, "html.parser").find(id="new-key-secret")
    assert field is not None, "no #new-key-secret on the page"
    return field.get("value") or field.get_text(strip=True)


KEY_RE = re.compile(r"\bkd_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}\b")


@pytest.fixture
def user(app) -> str:
    return create_user(app)


@pytest.fixture
def signed_in(client, user) -> FlaskClient:
    response = login(client)
    assert response.status_code == 302
    return client


# For tests that read SQLite-only facts (EXPLAIN QUERY PLAN, sqlite3's statement trace).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def all_engines(app) -> list:
    """The app's engine and the API hot path's own lookup engine (app/keys/authn.py)."""
    return [db.engine, app.extensions["keydesk.authenticator"].engine]
