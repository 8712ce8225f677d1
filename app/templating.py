"""Jinja filters and globals shared by every page."""

from __future__ import annotations

from datetime import datetime

from flask import Flask

from app.clock import utcnow
from app.keys.scopes import ALL_SCOPES, DESCRIPTIONS


def exact_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def relative_time(value: datetime | None, now: datetime | None = None) -> str:
    """'3 hours ago' / 'in 6 days' / 'never' — the exact time goes in a title attribute."""
    if value is None:
        return "never"
    now = now or utcnow()
    seconds = int((value - now).total_seconds())
    future, seconds = seconds > 0, abs(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            text = f"{n} {unit}{'' if n == 1 else 's'}"
            return f"in {text}" if future else f"{text} ago"
    return "in a moment" if future else "just now"


def init_app(app: Flask) -> None:
    app.jinja_env.add_extension("jinja2.ext.do")
    app.jinja_env.filters["exact_time"] = exact_time
    app.jinja_env.filters["relative_time"] = relative_time
    app.jinja_env.globals["ALL_SCOPES"] = ALL_SCOPES
    app.jinja_env.globals["SCOPE_DESCRIPTIONS"] = DESCRIPTIONS
    app.jinja_env.globals["utcnow"] = utcnow
    app.jinja_env.globals["has_endpoint"] = lambda name: name in app.view_functions
