from flask import Blueprint

bp = Blueprint("portal", __name__)

from app.portal import account, routes  # noqa: E402,F401
