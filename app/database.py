"""Engine tuning per database.

SQLite: WAL (readers never block the writer), a busy timeout, foreign keys on,
and every SQLAlchemy transaction opened with BEGIN IMMEDIATE so two workers that
both read-then-write queue up behind the write lock instead of failing with
"database is locked" at commit. Raw DBAPI connections (the API hot path) run in
autocommit, so a lookup never holds a read transaction open.
"""

from sqlalchemy import event
from sqlalchemy.engine import Engine


def configure_engine(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
