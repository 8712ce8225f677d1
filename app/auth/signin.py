"""Completing a sign-in and ending one: the single place every way in goes through
(password, invitation, and later a second factor, a passkey or single sign-on)."""

from __future__ import annotations

from flask import session
from flask_login import login_user, logout_user

from app.models import User


def complete_sign_in(user: User, *, method: str = "password") -> None:
    """Start a fresh session for `user`, who has just proved who they are by `method`
    ("password", "invite", ...). A fresh session: no fixation, no stale flashes."""
    session.clear()
    login_user(user)


def sign_out() -> None:
    logout_user()
    session.clear()
