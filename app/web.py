"""App-wide HTTP concerns: security headers, health check, error pages, template helpers."""

from __future__ import annotations

import json
import logging

from flask import (
    Flask,
    abort,
    has_request_context,
    jsonify,
    make_response,
    render_template,
    request,
)
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import RateLimitExceeded
from sqlalchemy import text
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.api.limits import HEADERS_ENVIRON_KEY
from app.extensions import db

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions with two changes:

    - the cookie is `Secure` whenever the request came over HTTPS (directly, or via
      X-Forwarded-Proto from a trusted proxy), and always when KEYDESK_SECURE_COOKIES is on;
    - the JSON API (bearer keys, never cookies) gets Flask's null session: no cookie
      parsed, nothing saved, and no Vary: Cookie (~20 µs of every API call, measured);
    - a portal request without a session cookie gets an empty session directly: Flask
      would build a signing serializer on every request before looking for the cookie.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        if app.config["SESSION_COOKIE_SECURE"]:
            return True
        return has_request_context() and request.is_secure

    def open_session(self, app: Flask, request):
        if request.path.startswith(("/api/", "/scim/")):
            # The same prefixes as the CSRF-exempt API and SCIM blueprints (app/api,
            # app/sso/scim_views.py): a session there would be a cookie credential without
            # CSRF protection. Keep them in step (app/__init__.py BEARER_ONLY_PREFIXES).
            return self.make_null_session(app)
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


class Keydesk(Flask):
    """Flask, answering automatic OPTIONS requests under /api/ with JSON like every other
    API response (here rather than in an after_request hook that every call would run)."""

    def make_default_options_response(self):
        response = super().make_default_options_response()
        if request.path.startswith("/api/"):
            response.set_data(json.dumps({"allow": list(response.allow)}))
            response.mimetype = "application/json"
        return response


def init_app(app: Flask) -> None:
    app.session_interface = SessionInterface()
    app.before_request(refuse_nul_bytes)
    app.wsgi_app = ResponseHeaders(app.wsgi_app)
    app.add_url_rule("/healthz", "healthz", healthz)
    app.register_error_handler(HTTPException, http_error)
    for error_type in database_errors():
        app.register_error_handler(error_type, database_down)

    from app import templating

    templating.init_app(app)


LEAK_REPORT_PATH = "/api/v1/keys/report-leak"
# For responses that hold a secret (a new key, an invitation link): never cached anywhere.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def refuse_nul_bytes() -> None:
    """400 for NUL anywhere in the input: PostgreSQL text cannot hold it (psycopg raises
    DataError, a 500), SQLite would store it, and no legitimate Keydesk input contains one."""
    # Decoding the query string can only produce NUL from a raw NUL or from %00.
    query = request.query_string
    if "\x00" in request.path or (query and (b"%00" in query or b"\x00" in query)):
        abort(400)
    # report-leak answers 202 to anything (it must be no oracle) and cleans what it keeps.
    if request.method in ("POST", "PUT", "PATCH") and request.path != LEAK_REPORT_PATH:
        # Read the raw body (cached, so views and form parsing still see it) rather than
        # request.form, which would consume the stream before a JSON view reads it.
        try:
            raw = request.get_data(cache=True)  # NUL and its escapes have no letter case
        except RequestEntityTooLarge:
            return  # too large to hold anything: the view answers (413, or 202 for leaks)
        encoded = b"\\u0000" if request.is_json else b"%00"
        if b"\x00" in raw or encoded in raw:
            abort(400)


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
_HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


class ResponseHeaders:
    """WSGI middleware adding the headers every response gets (security headers, unless the
    response set its own) and those a request left in environ (rate limits, app/api/limits.py).

    At the WSGI layer they are plain tuples: werkzeug's Headers validates every value it is
    given, and this runs on every response (~10 µs less per API call than an after_request
    hook, measured with bench/profile.py)."""

    def __init__(self, wsgi_app) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            headers = list(headers)
            present = {name.lower() for name, _ in headers}
            for name, lowered, value in _ALWAYS:
                if lowered not in present:
                    headers.append((name, value))
            # ProxyFix (if configured) has already set the scheme the client used.
            secure = environ.get("wsgi.url_scheme") in ("https", "wss")
            if secure and _HSTS[0].lower() not in present:
                headers.append(_HSTS)
            if "cache-control" not in present and any(
                name.lower() == "content-type" and value.startswith("text/html")
                for name, value in headers
            ):
                # Portal pages carry per-user data: never store them in shared caches.
                headers.append(("Cache-Control", "no-store"))
            headers.extend(environ.get(HEADERS_ENVIRON_KEY, ()))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


def csrf_failed(form) -> bool:
    """True when a submitted form failed its CSRF check (never when CSRF is switched off)."""
    token = getattr(form, "csrf_token", None)
    return bool(token is not None and token.errors)


def healthz():
    try:
        db.session.execute(text("SELECT 1"))
    except (SQLAlchemyError, *database_errors()):
        db.session.close()
        response = jsonify(status="unavailable", error="database unavailable")
        response.status_code = 503
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response
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
    if request.path.startswith("/scim/"):
        from app.sso.scim import ScimError
        from app.sso.scim_views import error_response

        return error_response(ScimError(exc.code or 500, MESSAGES.get(exc.code, exc.name)))
    status = exc.code or 500
    response = app_response(_error_page(status, MESSAGES.get(status, exc.name)))
    for name, value in exc.get_headers():
        if name in ("Retry-After", "Allow"):
            response.headers[name] = value
    if isinstance(exc, RateLimitExceeded) and "Retry-After" not in response.headers:
        # The sign-in limits' window length: when the client may be sure to get through.
        response.headers["Retry-After"] = str(exc.limit.limit.get_expiry())
    return response


def _error_page(status: int, message: str):
    return render_template("error.html", status=status, message=message), status


def database_errors() -> tuple[type[Exception], ...]:
    """What "the database is unreachable" looks like: SQLAlchemy wraps it for the ORM, but the
    API hot path (app/keys/authn.py) uses raw DBAPI connections, whose errors arrive unwrapped."""
    import sqlite3

    errors: list[type[Exception]] = [
        OperationalError,
        InterfaceError,
        DisconnectionError,
        PoolTimeout,
        sqlite3.OperationalError,
    ]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    else:
        errors += [psycopg.OperationalError, psycopg.InterfaceError]
    return tuple(errors)


UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>503 Service Unavailable</title></head>
<body><h1>Keydesk is temporarily unavailable</h1>
<p>Try again in a moment.</p></body></html>
"""
RETRY_AFTER_SECONDS = "5"


def database_down(error):
    # Never let a half-done transaction or a dead connection leak into the next request.
    log.warning("database unavailable on %s %s: %s", request.method, request.path, error)
    try:
        db.session.rollback()
    except Exception:  # noqa: BLE001 - the connection is already gone; dropping it is the point
        db.session.close()
    if request.path.startswith("/api/"):
        from app.api.errors import error_response

        response = error_response(
            503, "temporarily_unavailable", "The service is temporarily unavailable"
        )
    elif request.path.startswith("/scim/"):
        from app.sso.scim import ScimError
        from app.sso.scim_views import error_response as scim_error_response

        response = scim_error_response(ScimError(503, "The service is temporarily unavailable"))
    else:
        # A standalone page: the normal layout reads the signed-in user, i.e. the database.
        response = make_response(UNAVAILABLE_PAGE, 503)
        response.mimetype = "text/html"
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def app_response(rv):
    from flask import make_response

    return make_response(rv)
