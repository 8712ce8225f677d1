"""Helpers for tests of server-side sessions and sudo mode."""

from __future__ import annotations

from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import select, update

from app.accounts import service as accounts
from app.clock import utcnow
from app.extensions import db
from app.models import AuditEvent, UserSession
from tests.conftest import PASSWORD, login


def copy_client(app, client: FlaskClient) -> FlaskClient:
    """A second browser holding a copy of `client`'s session cookie."""
    other = app.test_client()
    other.set_cookie("session", client.get_cookie("session").value)
    return other


def signed_in_client(app, email: str, password: str = PASSWORD, **headers) -> FlaskClient:
    client = app.test_client()
    client.environ_base.update(headers)
    response = login(client, email, password)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def user_sessions(app, email: str) -> list[UserSession]:
    with app.app_context():
        user = accounts.get_user_by_email(email)
        rows = list(
            db.session.execute(
                select(UserSession).where(UserSession.user_id == user.id).order_by(UserSession.id)
            ).scalars()
        )
        db.session.expunge_all()
        return rows


def age_sessions(app, email: str, **deltas: timedelta) -> None:
    """Move a user's session times into the past: age_sessions(app, e, sudo_at=3 hours)."""
    now = utcnow()
    with app.app_context():
        user = accounts.get_user_by_email(email)
        db.session.execute(
            update(UserSession)
            .where(UserSession.user_id == user.id)
            .values({name: now - delta for name, delta in deltas.items()})
        )
        db.session.commit()


def leave_sudo_mode(app, email: str) -> None:
    age_sessions(app, email, sudo_at=timedelta(minutes=app.config["KEYDESK_SUDO_MINUTES"] + 1))


def actions(app) -> list[str]:
    with app.app_context():
        return list(db.session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())


def events(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        rows = list(
            db.session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()
        )
        db.session.expunge_all()
        return rows
