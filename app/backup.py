"""`flask --app app backup PATH`: a consistent copy of a SQLite database while it is served.

SQLite's online backup API (sqlite3.Connection.backup) copies every page in one step,
inside one read transaction on the source: the copy is the database as of one instant.
In WAL mode (app/database.py turns it on) readers never block writers, so the gunicorn
workers keep writing while the copy is made. The copy is written to a private temporary
file next to PATH, checked with PRAGMA integrity_check, and only then linked into place:
PATH appears complete or not at all, and an existing file is never overwritten.

PostgreSQL has its own tool for this (pg_dump, consistent by MVCC snapshot); Keydesk
does not wrap it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL


class BackupError(Exception):
    """A one-line reason the backup was not made (the database was not touched)."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    keys: int


def sqlite_path(url: URL) -> Path:
    if url.get_backend_name() != "sqlite":
        raise BackupError(
            f"backup copies SQLite databases; this one is {url.get_backend_name()}: use "
            "pg_dump (e.g. pg_dump --format=custom --file=keydesk.dump DBNAME), see README "
            '"Backup and restore"'
        )
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise BackupError("backup needs a SQLite database file, not an in-memory database")
    return Path(url.database)


def backup_sqlite(source: Path, target: Path) -> BackupResult:
    target = Path(target)
    if target.exists() or target.is_symlink():
        raise BackupError(f"{target} already exists; choose a new file name")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise BackupError(f"{parent} is not a directory")
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}; nothing to back up")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=parent)
    except OSError as exc:
        raise BackupError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    os.close(fd)  # mode 0600: the copy holds key digests and password hashes
    tmp = Path(tmp_name)
    try:
        _copy(source, tmp)
        _check(tmp)
        try:
            os.link(tmp, target)  # fails instead of replacing a file created meanwhile
        except FileExistsError:
            raise BackupError(f"{target} already exists; choose a new file name") from None
        except OSError as exc:
            raise BackupError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return BackupResult(target, target.stat().st_size, _count_keys(target))


def _copy(source: Path, tmp: Path) -> None:
    # Read-only: a backup must never change (or create) the database it copies.
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # pages=-1: all pages in one step, one consistent snapshot
            # The copy is a standalone file: no -wal or -shm next to it to forget.
            dst.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:
            raise BackupError(f"backup failed: {exc}") from None
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read {source}: {exc}") from None
    finally:
        src.close()


def _check(path: Path) -> None:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    if result != [("ok",)]:
        raise BackupError(f"the copy failed its integrity check: {result[0][0]}")


def _count_keys(path: Path) -> int:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM api_keys").fetchone()[0]
    except sqlite3.Error:
        return 0  # not migrated yet: still a faithful copy
    finally:
        conn.close()
