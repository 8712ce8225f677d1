"""App-wide HTTP concerns: security headers, health check, error pages, template helpers."""

from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException

from app.clock import utcnow
from app.extensions import db

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    app.session_interface = SessionInterface()
    app.after_request(security_headers)
    app.add_url_rule("/healthz", "healthz", healthz)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(OperationalError, database_down)

    from app import templating

    templating.init_app(app)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, minus one cost for requests without a session cookie.

    Flask builds a new signing serializer (and JSON-encodes a probe value) in
    open_session on every request, before it even looks for the cookie. A request
    without the cookie (every API call) gets an empty session either way, so hand it
    one directly; requests that carry the cookie go through Flask unchanged.
    """

    def open_session(self, app: Flask, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


# (name, lowercased name, value) for headers every response gets unless it has its own.
_ALWAYS = tuple(
    (name, name.lower(), value)
    for name, value in (
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", CSP),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    )
)


def security_headers(response):
    headers = response.headers
    # Same effect as headers.setdefault(name, value) per header, but werkzeug's
    # setdefault pays a failed lookup (an exception) for each missing name: one pass
    # over the few names a response has is cheaper. This runs on every response.
    present = {name.lower() for name, _ in headers}
    for name, lowered, value in _ALWAYS:
        if lowered not in present:
            headers.add(name, value)
    if request.is_secure and "strict-transport-security" not in present:
        headers.add("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    if "cache-control" not in present and response.mimetype == "text/html":
        # Portal pages carry per-user data: never store them in shared caches.
        headers.add("Cache-Control", "no-store")
    return response


def healthz():
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        db.session.rollback()
        return jsonify(status="unavailable", error="database unavailable"), 503
    return jsonify(status="ok", time=int(utcnow().timestamp()))


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
