"""Password reset requests, handled off the request thread.

Why a thread: /forgot-password must answer the same, in content and in time, whether
the address has an account or not. Looking the address up, writing a token and talking
to an SMTP server take very different times for the two cases (no mail at all is sent
for an unknown address), so the request does only what is the same for every address:
put (address, client, link base) on a queue and render the page. A worker thread in the
same process does the lookup, the token, the audit event and the mail.

A job still queued when the process stops is lost; the person asks again. One worker
per process keeps mail going out one message at a time.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from email.message import EmailMessage

from flask import Flask

from app import mail
from app.accounts import credentials
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db

log = logging.getLogger(__name__)
EXTENSION = "keydesk.reset_mailer"


@dataclass(frozen=True)
class ResetJob:
    email: str
    actor: Actor
    # The link without its token, e.g. https://keys.example.com/reset-password/ — built in the
    # request by app.web.public_url, as every mailed link is (the worker has no request).
    link_prefix: str


def reset_message(*, to: str, link: str, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Keydesk: reset your password"
    message.set_content(
        "Someone (hopefully you) asked to reset the password of your Keydesk account.\n\n"
        f"Choose a new password here within {int(credentials.RESET_VALID_FOR.seconds / 60)} "
        "minutes:\n\n"
        f"{link}\n\n"
        "The link works once. Setting a new password signs you out everywhere.\n"
        "If you did not ask for this, ignore this message: your password stays as it is.\n"
    )
    return message


class ResetMailer:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.jobs: queue.Queue[ResetJob] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, job: ResetJob) -> None:
        self._ensure_worker()
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            # Only a flood fills it (the sign-in rate limits come first): drop, say so.
            log.warning("password reset queue full; a request was dropped")

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued job is done (tests, and a clean shutdown)."""
        done = threading.Event()

        def wait() -> None:
            self.jobs.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def _ensure_worker(self) -> None:
        # Started lazily and again after a fork: gunicorn forks workers after the app is
        # built, and a thread does not survive a fork.
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="keydesk-reset-mail", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                with self.app.app_context():
                    try:
                        self.handle(job)
                    finally:
                        db.session.remove()
            except Exception:  # noqa: BLE001 - one bad job must not stop the worker
                log.exception("password reset request failed")
            finally:
                self.jobs.task_done()

    def handle(self, job: ResetJob) -> None:
        found = credentials.request_reset(email=job.email, actor=job.actor, now=utcnow())
        db.session.commit()
        if found is None:
            return
        user, token = found
        link = job.link_prefix + token
        message = reset_message(to=user.email, link=link, sender=mail.sender_address())
        try:
            mail.send_configured([message])
        except (*mail.MailError, ValueError) as exc:
            # Never the link: it is a credential for the account.
            log.warning("could not mail a password reset link: %s", type(exc).__name__)


def mailer(app: Flask) -> ResetMailer:
    if EXTENSION not in app.extensions:
        app.extensions[EXTENSION] = ResetMailer(app)
    return app.extensions[EXTENSION]
