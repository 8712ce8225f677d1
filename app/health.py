"""GET /livez and /readyz, and the checks they share with `flask doctor`.

/livez answers 200 while the process serves and touches nothing (a liveness probe that
failed whenever the database did would have the orchestrator restart healthy workers).
/readyz answers 200 only when the database answers, its schema is at the newest
migration and every configured Redis answers; else 503 naming each check.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, current_app, jsonify
from sqlalchemy import inspect, text

from app.extensions import db

log = logging.getLogger(__name__)
OK = "ok"
# Settings that may name a Redis server; the first that is set to redis* is checked.
REDIS_SETTINGS = ("RATELIMIT_STORAGE_URI",)
REDIS_TIMEOUT = 2.0


def check_database(*, quiet: bool = False) -> str:
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", said in one line
        if not quiet:
            log.warning("readiness: database check failed: %s", type(exc).__name__)
        return "unreachable"
    return OK


def migration_heads(app: Flask) -> set[str]:
    """The newest revision(s) in migrations/, read once per app (the files do not change
    while it runs)."""
    heads = app.extensions.get("keydesk.migration_heads")
    if heads is None:
        from alembic.script import ScriptDirectory

        directory = app.extensions["migrate"].directory
        heads = set(ScriptDirectory(str(Path(directory))).get_heads())
        app.extensions["keydesk.migration_heads"] = heads
    return heads


def current_revisions() -> set[str]:
    """The revisions recorded in alembic_version (none before the first upgrade). Read
    directly: Alembic's MigrationContext logs two lines each time, every probe."""
    with db.engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return set()
        return set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def check_schema(app: Flask) -> str:
    try:
        current = current_revisions()
    except Exception:  # noqa: BLE001
        return "unknown: the database does not answer"
    newest = migration_heads(app)
    if current == newest:
        return OK
    have = ", ".join(sorted(current)) or "none"
    return f"at {have}, newest is {', '.join(sorted(newest))}: run flask --app app db upgrade"


def redis_urls(app: Flask) -> list[tuple[str, str]]:
    """(setting, URL) for every configured Redis."""
    found = []
    for name in REDIS_SETTINGS:
        url = app.config.get(name) or ""
        if url.startswith(("redis://", "rediss://", "redis+", "unix://")):
            found.append((name, url))
    return found


def check_redis(app: Flask, url: str) -> str:
    from limits.storage import storage_from_string

    storages = app.extensions.setdefault("keydesk.health.redis", {})
    try:
        storage = storages.get(url)
        if storage is None:
            storage = storages[url] = storage_from_string(
                url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
        ok = storage.check()
    except Exception:  # noqa: BLE001
        ok = False
    return OK if ok else "unreachable"


def readiness(app: Flask) -> dict[str, str]:
    checks = {"database": check_database()}
    checks["schema"] = (
        check_schema(app) if checks["database"] == OK else "unknown: the database does not answer"
    )
    for index, (_name, url) in enumerate(redis_urls(app)):
        checks["redis" if index == 0 else f"redis{index + 1}"] = check_redis(app, url)
    return checks


def livez():
    return _no_store(jsonify(status="ok"))


def readyz():
    checks = readiness(current_app._get_current_object())
    ready = all(value == OK for value in checks.values())
    response = jsonify(status="ok" if ready else "unavailable", checks=checks)
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    return _no_store(response)


def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    app.add_url_rule("/livez", "livez", livez, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", readyz, methods=["GET"])
