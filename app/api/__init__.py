"""The JSON API under /api/v1."""

from flask import Blueprint, Flask

from app.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def init_app(app: Flask) -> None:
    from app.api import admin, auth, errors, routes  # noqa: F401  (registers views and handlers)

    csrf.exempt(bp)  # bearer tokens, not cookies: CSRF does not apply
    app.register_blueprint(bp)
    errors.init_app(app)
    auth.init_app(app)
