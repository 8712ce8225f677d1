"""Completing a sign-in and ending one: the single place every way in goes through
(password, invitation, and later a second factor, a passkey or single sign-on), and the
loader that decides, on every portal request, who is signed in.

Why our own sessions over a table rather than Flask-Session: /account/sessions lists a
user's sessions, ends one or all others, and every page needs idle and absolute timeouts
and the sudo timestamp; Flask-Session stores opaque blobs under a key, with none of that
per user. So the truth lives in `user_sessions` (app/accounts/sessions.py) and Flask's
signed cookie only carries the session's random token (plus what a visitor has before
signing in: the CSRF token, flash messages). Consequences:

- an ended row signs nobody in, whatever cookie comes with it (copied, replayed, old);
- anonymous visitors cost no database write (a bot on /login cannot fill a table);
- the JSON API keeps Flask's null session (app/web.py): no session work on the hot path;
- no Redis involved: an unreachable Redis never fails a sign-in.
The cookie is signed, not encrypted: never put anything in `session` that must stay
secret from its holder or that by itself signs someone in.
"""

from __future__ import annotations

from flask import Flask, current_app, g, request, session
from flask_login import login_user, logout_user

from app.accounts import sessions
from app.clock import utcnow
from app.extensions import db
from app.models import User, UserSession
from app.net import client_ip

SESSION_KEY = "keydesk_session"  # the cookie's field holding the session token
# What Flask-Login would keep in the cookie; the server row is the only truth here.
_FLASK_LOGIN_KEYS = ("_user_id", "_fresh", "_id", "_remember", "_remember_seconds")


def timeouts() -> sessions.Timeouts:
    return sessions.Timeouts.from_config(current_app.config)


def complete_sign_in(user: User, *, method: str = "password") -> None:
    """Start a fresh server session for `user`, who has just proved who they are by
    `method` ("password", "register", "invite", ...), in sudo mode. A fresh cookie too: no
    fixation, no stale flashes; a session this browser had before ends. Commits."""
    now = utcnow()
    previous = current_session()
    if previous is not None:
        sessions.end_session(row=previous, reason="replaced", now=now)
    session.clear()
    row, token = sessions.start_session(
        user=user,
        method=method,
        ip=client_ip(),
        user_agent=request.user_agent.string,
        now=now,
    )
    db.session.commit()
    session[SESSION_KEY] = token
    g.keydesk_session = row
    login_user(user)
    _forget_flask_login_keys()


def sign_out(*, reason: str = "signed_out") -> None:
    """End the current session on the server (a copy of the cookie dies with it). Commits."""
    row = current_session()
    if row is not None:
        sessions.end_session(row=row, reason=reason, now=utcnow())
        db.session.commit()
    g.keydesk_session = None
    logout_user()
    session.clear()


def renew_session(*, sudo: bool) -> None:
    """A new token for the current session, e.g. after re-authenticating (sudo=True starts
    sudo mode). The caller commits; the old cookie stops working with that commit."""
    row = current_session()
    if row is None:
        return
    session[SESSION_KEY] = sessions.renew(row=row, now=utcnow(), sudo=sudo)


def current_session() -> UserSession | None:
    """The live server session of this request, or None (signed out, or outside a portal
    request). Looked up once per request."""
    if "keydesk_session" not in g:
        g.keydesk_session = _lookup()
    return g.keydesk_session


def _lookup() -> UserSession | None:
    token = session.get(SESSION_KEY)
    if not token or not isinstance(token, str):
        return None
    now = utcnow()
    row = sessions.find_live(token=token, now=now, timeouts=timeouts())
    if row is None:
        session.pop(SESSION_KEY, None)  # a dead handle: the next cookie drops it
        return None
    if sessions.needs_touch(row, now):
        g.keydesk_touch = (row.id, client_ip(), now)
    return row


def load_from_request(_request) -> User | None:
    """Flask-Login's request loader: the user of the live server session, if any."""
    row = current_session()
    return row.user if row is not None else None


def _ignore_user_id(_user_id: str) -> None:
    """Flask-Login's user loader, for an `_user_id` left in a cookie from before server-side
    sessions (or a remember-me cookie, which Keydesk never sets): signs nobody in."""
    return None


def _forget_flask_login_keys() -> None:
    for key in _FLASK_LOGIN_KEYS:
        session.pop(key, None)


def _record_last_seen(exc: BaseException | None) -> None:
    """After the response: write last-seen (at most once a minute per session) in a
    transaction of its own, so neither a view's rollback nor its commit decides it."""
    pending = g.pop("keydesk_touch", None)
    if pending is None or exc is not None:
        return
    session_id, ip, now = pending
    try:
        db.session.rollback()  # the view is done; anything it left uncommitted is dropped
        sessions.touch(session_id=session_id, ip=ip, now=now)
        db.session.commit()
    except Exception:  # noqa: BLE001 - last-seen is a nicety; the response has been made
        current_app.logger.warning("could not record a session's last use", exc_info=True)
        db.session.rollback()


def init_app(app: Flask, browser_blueprints: tuple[str, ...]) -> None:
    from app.extensions import login_manager

    login_manager.user_loader(_ignore_user_id)
    login_manager.request_loader(load_from_request)
    # Flask-Login's "session protection" (fresh/non-fresh by address and browser) is what
    # sudo mode and the server-side timeouts do here, with an audit trail.
    login_manager.session_protection = None
    for name in browser_blueprints:
        app.teardown_request_funcs.setdefault(name, []).append(_record_last_seen)
