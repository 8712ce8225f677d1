"""Outgoing mail through KEYDESK_MAIL_URL: expiry reminders, invitations, password resets.

smtp://user:pass@host:port (plain, port 25 by default), smtp+starttls://… (587),
smtps://… (TLS from the start, 465).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from flask import current_app

MailError = (OSError, smtplib.SMTPException)


def mail_configured() -> bool:
    return bool(current_app.config.get("KEYDESK_MAIL_URL"))


def sender_address() -> str:
    return current_app.config.get("KEYDESK_MAIL_FROM") or "keydesk@localhost"


def send_configured(messages: list[EmailMessage]) -> None:
    """Send through the configured server; raises ValueError when none is configured and
    one of MailError when the server refuses."""
    smtp_sender(current_app.config.get("KEYDESK_MAIL_URL") or "")(messages)


def smtp_sender(url: str) -> Callable[[list[EmailMessage]], None]:
    """A function that sends messages through the SMTP server named by KEYDESK_MAIL_URL.

    smtp://user:pass@host:port (plain, port 25 by default), smtp+starttls://… (587),
    smtps://… (TLS from the start, 465).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtp+starttls", "smtps") or not parts.hostname:
        raise ValueError("KEYDESK_MAIL_URL must look like smtp://user:pass@host:port")
    default_port = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}[parts.scheme]
    host, port = parts.hostname, parts.port or default_port
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None

    def send(messages: list[EmailMessage]) -> None:
        context = ssl.create_default_context()
        if parts.scheme == "smtps":
            client = smtplib.SMTP_SSL(host, port, timeout=30, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=30)
        with client:
            if parts.scheme == "smtp+starttls":
                client.starttls(context=context)
            if user:
                client.login(user, password or "")
            for message in messages:
                client.send_message(message)

    return send
