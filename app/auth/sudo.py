"""Sudo mode: actions that mint or widen access need a recent sign-in or re-authentication
(SPEC "Account security"), within KEYDESK_SUDO_MINUTES. `sudo_required` marks those views.

Outside sudo mode such a view does nothing: a GET is sent to /sudo?next=<this page>; a
POST is sent to /sudo?next=<the page whose form it came from>, and after re-authenticating
the person lands on that form again and submits it themselves. Nothing is replayed: a
POST body is never kept, so a forged or stale submission cannot ride a later password.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar, overload

from flask import current_app, redirect, request, url_for
from flask_login import current_user

from app.accounts import sessions
from app.clock import utcnow

F = TypeVar("F", bound=Callable)


def sudo_window() -> timedelta:
    return timedelta(minutes=current_app.config["KEYDESK_SUDO_MINUTES"])


def in_sudo_mode() -> bool:
    from app.auth.signin import current_session

    return sessions.in_sudo_mode(current_session(), now=utcnow(), window=sudo_window())


@overload
def sudo_required(view: F) -> F: ...
@overload
def sudo_required(*, form_page: Callable[..., str]) -> Callable[[F], F]: ...


def sudo_required(view=None, *, form_page=None):
    """Put below `login_required` (or on a blueprint whose before_request signs in).

    `form_page(**view_args)` names the page holding the form of a POST-only route (e.g. a
    key's page for /keys/<id>/rotate); a route that also answers GET returns to itself."""

    def decorate(view_function):
        @functools.wraps(view_function)
        def wrapper(*args, **kwargs):
            if current_user.is_authenticated and not in_sudo_mode():
                return redirect(url_for("auth.sudo", next=_back_to(form_page, kwargs)))
            return view_function(*args, **kwargs)

        wrapper.sudo_required = True  # tests list the routes that carry it
        return wrapper

    return decorate(view) if view is not None else decorate


def _back_to(form_page: Callable[..., str] | None, view_args: dict) -> str:
    if request.method == "GET":
        return request.full_path.rstrip("?")
    rule = request.url_rule
    if rule is not None and "GET" in (rule.methods or ()):
        return request.full_path.rstrip("?")  # the same URL shows the form again
    if form_page is not None:
        return form_page(**view_args)
    return url_for("portal.keys")
