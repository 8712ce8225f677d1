"""The JSON API under /api/v1."""

from flask import Blueprint, Flask

from app.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def init_app(app: Flask) -> None:
    # Importing registers the views and handlers on `bp`.
    from app.api import (  # noqa: F401
        admin,
        auth,
        errors,
        keys,
        limits,
        oauth,
        openapi,
        resources,
        routes,
        verify,
    )

    csrf.exempt(bp)  # bearer tokens, not cookies: CSRF does not apply
    app.register_blueprint(bp)
    errors.init_app(app)
    limits.init_app(app)
    auth.init_app(app)
