"""Jinja filters and globals shared by every page."""

from __future__ import annotations

from datetime import datetime

from flask import Flask

from app import once
from app.clock import utcnow
from app.keys.scopes import ALL_SCOPES, DESCRIPTIONS
from app.keys.status import end_of, is_working, status_of


def exact_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def relative_time(value: datetime | None, now: datetime | None = None) -> str:
    """'3 hours ago' / 'in 7 days' / 'never' — the exact time goes in a title attribute.

    Rounded to the nearest unit, as a person counts: a 7-day key created a second ago
    reads "in 7 days" (flooring said 6), a 24-hour grace "in 24 hours". Hours up to 36,
    then days; minutes up to 59, then hours."""
    if value is None:
        return "never"
    now = now or utcnow()
    seconds = (value - now).total_seconds()
    future, seconds = seconds > 0, abs(seconds)
    if seconds < 45:
        return "in a moment" if future else "just now"
    minutes = int(seconds / 60 + 0.5)
    hours = int(seconds / 3600 + 0.5)
    if minutes < 60:
        n, unit = max(1, minutes), "minute"
    elif hours <= 36:
        n, unit = hours, "hour"
    else:
        n, unit = int(seconds / 86400 + 0.5), "day"
    text = f"{n} {unit}{'' if n == 1 else 's'}"
    return f"in {text}" if future else f"{text} ago"


def plural(count: int, word: str, words: str | None = None) -> str:
    """'1 request', '2 requests'."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def init_app(app: Flask) -> None:
    app.jinja_env.add_extension("jinja2.ext.do")
    app.jinja_env.filters["exact_time"] = exact_time
    app.jinja_env.filters["relative_time"] = relative_time
    app.jinja_env.globals["ALL_SCOPES"] = ALL_SCOPES
    app.jinja_env.globals["SCOPE_DESCRIPTIONS"] = DESCRIPTIONS
    app.jinja_env.globals["utcnow"] = utcnow
    app.jinja_env.globals["has_endpoint"] = lambda name: name in app.view_functions
    app.jinja_env.filters["plural"] = plural
    # A key's "Expires" on every page is its effective end of life (app/keys/status.py).
    app.jinja_env.globals["end_of"] = end_of
    app.jinja_env.globals["is_working"] = is_working
    app.jinja_env.globals["status_of"] = status_of
    app.jinja_env.globals["new_submission_token"] = once.new_token
