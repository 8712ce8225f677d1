"""Expiry reminders: one email per owner listing their working keys that expire soon.

A key is reminded at most once per UTC day (ApiKey.reminded_at), so running the
command twice on one day sends nothing new. reminded_at is set only after the
owner's email was handed to the mail server, and committed per owner, so a mail
failure halfway leaves the rest to be sent by the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from email.message import EmailMessage
from itertools import groupby

from sqlalchemy import or_, select, update

from app.extensions import db
from app.keys.status import end_of, needs_renewal
from app.models import ApiKey, User


@dataclass
class Reminder:
    owner: str
    keys: list[ApiKey]

    def message(self, *, sender: str, now: datetime) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = self.owner
        count = len(self.keys)
        msg["Subject"] = f"Keydesk: {count} API key{'' if count == 1 else 's'} expiring soon"
        lines = [
            "These Keydesk API keys of yours stop working soon. Rotate each one in the",
            "portal (My keys > the key > Rotate) and put the new key where the old one is used.",
            "",
        ]
        for key in self.keys:
            end = end_of(key)  # the effective end of life, as every page shows it
            days = max(0, -(-int((end - now).total_seconds()) // 86400))
            when = end.strftime("%Y-%m-%d %H:%M UTC")
            plural = "" if days == 1 else "s"
            lines.append(f"- {key.name} ({key.key_id}): expires {when} (in {days} day{plural})")
        lines += ["", "You get this email once a day while a key is about to expire."]
        msg.set_content("\n".join(lines) + "\n")
        return msg


def due_reminders(*, within_days: int, now: datetime) -> list[Reminder]:
    """Owners with working, not yet rotated keys ending within `within_days` (the keys the
    portal's banner lists, and with 7 days those of status `expiring`), not yet reminded
    today."""
    start_of_day = datetime.combine(now.date(), time.min, UTC)
    rows = db.session.execute(
        select(ApiKey, User.email)
        .join(User, User.id == ApiKey.user_id)
        .where(
            needs_renewal(now, timedelta(days=within_days)),
            User.deactivated_at.is_(None),
            or_(ApiKey.reminded_at.is_(None), ApiKey.reminded_at < start_of_day),
        )
        .order_by(User.email, ApiKey.expires_at, ApiKey.id)
    ).all()
    return [
        Reminder(owner=email, keys=[key for key, _ in group])
        for email, group in groupby(rows, key=lambda row: row[1])
    ]


def mark_reminded(reminder: Reminder, now: datetime) -> None:
    db.session.execute(
        update(ApiKey)
        .where(ApiKey.id.in_([k.id for k in reminder.keys]))
        .values(reminded_at=now)
        .execution_options(synchronize_session=False)
    )
