"""Admin commands: `flask --app app keys remind --within-days N`."""

from __future__ import annotations

import smtplib

import click
from flask import current_app
from flask.cli import with_appcontext

from app.admin import reminders
from app.clock import utcnow
from app.extensions import db
from app.mail import smtp_sender


@click.command("remind")
@click.option(
    "--within-days",
    type=click.IntRange(1, 365),
    default=7,
    show_default=True,
    help="Remind about keys expiring within this many days.",
)
@with_appcontext
def remind(within_days: int) -> None:
    """Email each owner one list of their keys that expire soon (once a day at most).

    Sends through KEYDESK_MAIL_URL when it is set; otherwise prints what it would send.
    """
    now = utcnow()
    due = reminders.due_reminders(within_days=within_days, now=now)
    url = current_app.config.get("KEYDESK_MAIL_URL") or ""
    sender = current_app.config.get("KEYDESK_MAIL_FROM") or "keydesk@localhost"
    if not due:
        click.echo("No reminders to send.")
        return
    send = None
    if url:
        try:
            send = smtp_sender(url)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    sent = 0
    for reminder in due:
        message = reminder.message(sender=sender, now=now)
        if send is None:
            click.echo(f"Would send to {reminder.owner}:\n{_readable(message)}")
        else:
            try:
                send([message])
            except (OSError, smtplib.SMTPException) as exc:
                db.session.rollback()
                raise click.ClickException(
                    f"Could not send to {reminder.owner}: {exc} ({sent} sent before)"
                ) from None
        reminders.mark_reminded(reminder, now)
        db.session.commit()
        sent += 1
    verb = "Sent" if send else "Printed"
    click.echo(f"{verb} {sent} reminder{'' if sent == 1 else 's'}.")


def _readable(message) -> str:
    """The message as a person reads it (no transfer encoding), for the dry run."""
    headers = "".join(f"{name}: {message[name]}\n" for name in ("From", "To", "Subject"))
    return headers + "\n" + message.get_content()
