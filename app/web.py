"""App-wide HTTP concerns: security headers, health check, error pages, template helpers."""

from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException

from app.extensions import db

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    app.after_request(security_headers)
    app.add_url_rule("/healthz", "healthz", healthz)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(OperationalError, database_down)

    from app import templating

    templating.init_app(app)


def security_headers(response):
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    if response.mimetype == "text/html":
        # Portal pages carry per-user data: never store them in shared caches.
        headers.setdefault("Cache-Control", "no-store")
    return response


def healthz():
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        db.session.rollback()
        return jsonify(status="unavailable", error="database unavailable"), 503
    return jsonify(status="ok")  # exactly SPEC's body: monitors compare it verbatim


MESSAGES = {
    400: "The request could not be understood. Go back, reload the page and try again.",
    403: "You may not see this page.",
    404: "There is nothing here.",
    405: "That action is not available here.",
    413: "That request is too large.",
    429: "Too many attempts. Wait a minute and try again.",
    500: "Something went wrong on our side. Try again in a moment.",
}


def http_error(exc: HTTPException):
    if request.path.startswith("/api/"):
        from app.api.errors import http_error_json

        return http_error_json(exc)
    status = exc.code or 500
    response = app_response(_error_page(status, MESSAGES.get(status, exc.name)))
    for name, value in exc.get_headers():
        if name in ("Retry-After", "Allow"):
            response.headers[name] = value
    return response


def _error_page(status: int, message: str):
    return render_template("error.html", status=status, message=message), status


def database_down(error):
    db.session.rollback()
    if request.path.startswith("/api/"):
        from app.api.errors import error_response

        response = error_response(
            503, "temporarily_unavailable", "The service is temporarily unavailable"
        )
    else:
        response = _error_page(503, "Keydesk is temporarily unavailable; try again shortly.")
        response = app_response(response)
    response.headers["Retry-After"] = "5"
    return response


def app_response(rv):
    from flask import make_response

    return make_response(rv)
