"""Faults: the database link is cut (a TCP proxy between the app and PostgreSQL is closed,
then reopened) and Redis is unreachable (a URL to a closed port)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.engine import make_url

from app.extensions import db
from tests.conftest import (
    PG_ADMIN_URL,
    bearer,
    create_user,
    issue_key,
    login,
    pg_app,
    service_missing,
)
from tests.servers import TcpProxy, free_port


@pytest.fixture
def proxied_app(pg_database):
    """An app whose PostgreSQL connections all go through a TCP proxy we control."""
    pg_database.create()
    if pg_database.error:
        service_missing(pg_database.error)
    target = make_url(PG_ADMIN_URL)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    proxy.open()
    url = make_url(pg_database.url).set(host="127.0.0.1", port=proxy.port)
    app = pg_app(pg_database, {"SQLALCHEMY_DATABASE_URI": url.render_as_string(False)})
    yield app, proxy
    proxy.close()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def _everything_works(client, key):
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    assert client.get("/keys").status_code == 200


def test_database_down_503_everywhere_then_recovers_by_itself(proxied_app, caplog):
    app, proxy = proxied_app
    create_user(app)
    key = issue_key(app)
    client = app.test_client()
    assert login(client).status_code == 302
    _everything_works(client, key)  # the pool now holds connections through the proxy

    proxy.close()  # the database "goes away": open connections cut, new ones refused
    with caplog.at_level(logging.ERROR):
        for _ in range(2):  # the first request meets a dead pooled connection, the next a refusal
            api = client.get("/api/v1/me", headers=bearer(key))
            assert api.status_code == 503
            assert api.json["error"] == "temporarily_unavailable"
            assert int(api.headers["Retry-After"]) > 0

            health = client.get("/healthz")
            assert health.status_code == 503
            assert health.json["status"] == "unavailable"

            page = client.get("/keys")
            assert page.status_code == 503
            assert page.mimetype == "text/html"
            assert "temporarily unavailable" in page.get_data(as_text=True)
            assert "Traceback" not in page.get_data(as_text=True)

            assert login(client).status_code == 503
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no 500-style logs"

    proxy.open()  # back: pool_pre_ping replaces the dead connections, nobody restarts anything
    _everything_works(client, key)


@pytest.fixture
def app_config():
    # Nothing listens on this port: every Redis call fails at once.
    return {
        "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{free_port()}",
        "KEYDESK_LOGIN_RATE_LIMIT": "3 per minute",
    }


def test_redis_down_falls_back_to_memory_limits_with_one_warning(app, client, user, caplog):
    with caplog.at_level(logging.WARNING):
        statuses = [login(client, password="not the password!").status_code for _ in range(6)]
        assert client.get("/healthz").status_code == 200
    assert 500 not in statuses
    assert statuses == [401, 401, 401, 429, 429, 429]
    warnings = [r for r in caplog.records if "falling back to in-memory" in r.getMessage()]
    assert len(warnings) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_database_down_under_gunicorn_workers_then_recovers(pg_database, tmp_path):
    """The same outage seen by three real workers, each with its own connection pool."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from tests.servers import gunicorn, server_env, web_login

    pg_database.create()
    if pg_database.error:
        service_missing(pg_database.error)
    setup = pg_app(pg_database, {"SQLALCHEMY_DATABASE_URI": pg_database.url})
    create_user(setup)
    key = issue_key(setup)
    with setup.app_context():
        db.engine.dispose()

    target = make_url(PG_ADMIN_URL)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    proxy.open()
    url = make_url(pg_database.url).set(host="127.0.0.1", port=proxy.port)
    env = server_env(url.render_as_string(False))
    try:
        with gunicorn(env, 3, tmp_path / "gunicorn.log") as server, ThreadPoolExecutor(6) as pool:
            portal = web_login(server.url, "alice@example.com")

            def api(_: int):
                return requests.get(server.url + "/api/v1/me", headers=bearer(key), timeout=30)

            assert {r.status_code for r in pool.map(api, range(12))} == {200}

            proxy.close()
            down = list(pool.map(api, range(12)))
            assert {r.status_code for r in down} == {503}
            assert {r.json()["error"] for r in down} == {"temporarily_unavailable"}
            assert all(int(r.headers["Retry-After"]) > 0 for r in down)
            assert requests.get(server.url + "/healthz", timeout=30).status_code == 503
            page = portal.get(server.url + "/keys", timeout=30)
            assert page.status_code == 503 and "temporarily unavailable" in page.text

            proxy.open()
            assert {r.status_code for r in pool.map(api, range(12))} == {200}
            assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
            assert portal.get(server.url + "/keys", timeout=30).status_code == 200
            log = server.log()
        assert "Traceback" not in log and "Internal Server Error" not in log
    finally:
        proxy.close()


@pytest.mark.parametrize("error", ["psycopg", "sqlite3", "sqlalchemy"])
def test_raw_dbapi_errors_on_the_api_hot_path_are_503(app, client, user, monkeypatch, error):
    """app/keys/authn.py reads through engine.raw_connection(): its errors are unwrapped."""
    import sqlite3

    import psycopg
    from sqlalchemy.exc import OperationalError

    from app.keys.authn import Authenticator

    raised = {
        "psycopg": psycopg.OperationalError("server closed the connection unexpectedly"),
        "sqlite3": sqlite3.OperationalError("database is locked"),
        "sqlalchemy": OperationalError("SELECT", {}, Exception("connection refused")),
    }[error]

    def lookup(self, key_id):
        raise raised

    key = issue_key(app)
    monkeypatch.setattr(Authenticator, "lookup", lookup)
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 503
    assert response.json["error"] == "temporarily_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert "closed" not in response.get_data(as_text=True)  # no driver detail leaks
