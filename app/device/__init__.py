"""Browser side of signing in from a terminal: /device (approve a user code) and the
list of signed-in terminals (user access tokens)."""

from flask import Blueprint

bp = Blueprint("device", __name__)

from app.device import routes  # noqa: E402,F401
