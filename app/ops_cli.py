"""Operator commands: `flask --app app backup PATH` and `flask --app app doctor`."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.extensions import db


@click.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@with_appcontext
def backup(path: str) -> None:
    """Copy the SQLite database to PATH while Keydesk keeps serving (PostgreSQL: pg_dump)."""
    from app.backup import BackupError, backup_sqlite, sqlite_path

    try:
        result = backup_sqlite(sqlite_path(db.engine.url), path)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    megabytes = result.size / 1_000_000
    click.echo(f"Backed up to {result.path} ({megabytes:.1f} MB, {result.keys} keys, integrity ok)")


@click.command("doctor")
@with_appcontext
def doctor() -> None:
    """Check the configuration; one line per check; exit 1 when one fails."""
    from app import doctor as checks

    results = checks.run(current_app._get_current_object())
    for check in results:
        click.echo(check.line())
    if any(check.status == checks.FAIL for check in results):
        raise SystemExit(1)


def register(app: Flask) -> None:
    app.cli.add_command(backup)
    app.cli.add_command(doctor)
