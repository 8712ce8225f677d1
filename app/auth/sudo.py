"""Sudo mode: actions that mint or widen access need a recent sign-in or re-authentication
(SPEC "Account security"). `sudo_required` marks those views."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def sudo_required(view: F) -> F:
    """Mark a view as needing sudo mode. The check itself arrives with server-side sessions
    (issue 14); until then a signed-in user passes, as before."""
    return view
