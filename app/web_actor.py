"""Builds the audit Actor for the current HTTP request."""

from flask import request
from flask_login import current_user

from app.audit import Actor
from app.net import client_ip


def request_actor(label: str | None = None, type_: str = "user") -> Actor:
    if label is None:
        if current_user.is_authenticated:
            label = current_user.email
        else:
            label, type_ = "anonymous", "anonymous"
    return Actor(type_, label, client_ip(), (request.user_agent.string or "")[:300] or None)
