"""App-wide HTTP concerns: security headers, health check, error pages, template helpers."""

from __future__ import annotations

import json
import logging
import sys
from inspect import CO_COROUTINE
from types import FunctionType

from flask import (
    Flask,
    abort,
    has_request_context,
    jsonify,
    make_response,
    render_template,
    request,
)
from flask import Response as FlaskResponse
from flask.json.provider import DefaultJSONProvider
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
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

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


class Response(FlaskResponse):
    """Flask's response, whose buffered body goes to the server as it is: one bytes chunk
    in a list, rather than wrapped in a generator and a ClosingIterator (what werkzeug does
    for every body, streamed or not). A list cannot fail half-way, so LastResort need not
    guard it either. Streamed bodies, HEAD, 1xx/204/304 and close callbacks: werkzeug's way.
    """

    def get_app_iter(self, environ):
        body = self.response
        if (
            type(body) is list
            and len(body) == 1
            and type(body[0]) is bytes
            and not self._on_close
            and not self.direct_passthrough
            and environ["REQUEST_METHOD"] != "HEAD"
            and self.status_code >= 200
            and self.status_code not in (204, 304)
        ):
            return body
        return super().get_app_iter(environ)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with its compact encoder built once: Flask's builds a new
    json.JSONEncoder on every jsonify() (every API response). Same output: sorted keys,
    ASCII, no spaces, Flask's `default` for dates and the like; debug mode indents, as
    Flask does."""

    def __init__(self, app: Flask) -> None:
        super().__init__(app)
        self._encode = json.JSONEncoder(
            default=self.default, ensure_ascii=True, sort_keys=True, separators=(",", ":")
        ).encode

    def response(self, *args, **kwargs):
        if self.compact is False or (self.compact is None and self._app.debug):
            return super().response(*args, **kwargs)  # indented for reading
        body = self._encode(self._prepare_response_obj(args, kwargs)) + "\n"
        return self._app.response_class(body, mimetype=self.mimetype)


class Keydesk(Flask):
    """Flask, answering automatic OPTIONS requests under /api/ with JSON like every other
    API response (here rather than in an after_request hook that every call would run)."""

    response_class = Response
    json_provider_class = JSONProvider

    def ensure_sync(self, func):
        # Flask asks inspect.iscoroutinefunction about every hook and view on every request
        # (~1 µs each); a plain def without the coroutine flag or marker is answered here.
        if (
            type(func) is FunctionType
            and not func.__code__.co_flags & CO_COROUTINE
            and not hasattr(func, "_is_coroutine_marker")  # inspect.markcoroutinefunction
        ):
            return func
        return super().ensure_sync(func)

    def make_default_options_response(self):
        response = super().make_default_options_response()
        if request.path.startswith("/api/"):
            response.set_data(json.dumps({"allow": list(response.allow)}))
            response.mimetype = "application/json"
        return response


def init_app(app: Flask) -> None:
    from app.params import DbIdConverter

    app.url_map.converters["dbid"] = DbIdConverter  # before the blueprints' rules
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
    # Read from the WSGI environ once (each `request.` is a context-local lookup): the path
    # as the server decoded it, the query string raw, where decoding can only produce NUL
    # from a raw NUL or from %00.
    environ = request.environ
    path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
    if "\x00" in path or (query and ("%00" in query or "\x00" in query)):
        abort(400)
    # report-leak answers 202 to anything (it must be no oracle) and cleans what it keeps.
    if environ.get("REQUEST_METHOD") in ("POST", "PUT", "PATCH") and (
        request.path != LEAK_REPORT_PATH  # as routing sees it ("//api/…" included)
    ):
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
_HSTS_LOWER = _HSTS[0].lower()


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
            # One pass over the response's own headers (two or three for an API answer).
            present = {name.lower(): value for name, value in headers}
            headers = list(headers)
            for name, lowered, value in _ALWAYS:
                if lowered not in present:
                    headers.append((name, value))
            # ProxyFix (if configured) has already set the scheme the client used.
            if environ.get("wsgi.url_scheme") in ("https", "wss") and _HSTS_LOWER not in present:
                headers.append(_HSTS)
            if "cache-control" not in present and present.get("content-type", "").startswith(
                "text/html"
            ):
                # Portal pages carry per-user data: never store them in shared caches.
                headers.append(("Cache-Control", "no-store"))
            headers.extend(environ.get(HEADERS_ENVIRON_KEY, ()))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


_PLAIN_500_HTML = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>500 Internal Server Error</title></head>
<body><h1>Something went wrong on our side</h1>
<p>Try again in a moment.</p></body></html>
"""
_PLAIN_500_JSON = b'{"error": "server_error", "error_description": "Internal server error"}'


class LastResort:
    """The outermost WSGI layer: no exception of the app ever reaches the server.

    Flask turns a view's exception into a 500 page, but not one raised by an error handler,
    a middleware or a response body. Such an exception would reach gunicorn, and from
    gunicorn's error path a single bad request has ended a worker (see gunicorn.conf.py).
    Here it is logged and answered with a plain 500 built from constants (JSON under /api/,
    HTML elsewhere): no template, no database, nothing that could fail again.

    A body that fails after its first bytes went out cannot become a 500 any more; the
    exception is logged and passed on so that gunicorn cuts the connection, because a
    download that stops half-way must not look complete to the client.

    With PROPAGATE_EXCEPTIONS (tests, debug mode) exceptions pass through untouched, as
    Flask itself lets them, so a failing test shows its traceback.
    """

    def __init__(self, wsgi_app, flask_app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.flask_app = flask_app

    def _propagate(self) -> bool:
        # Flask's own rule (Flask.handle_exception), read per request as config may change.
        value = self.flask_app.config.get("PROPAGATE_EXCEPTIONS")
        if value is not None:
            return bool(value)
        return self.flask_app.testing or self.flask_app.debug

    def __call__(self, environ, start_response):
        if "wsgi.input" in environ and (
            environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING")
        ):
            environ["wsgi.input"] = _ReadableInput(environ["wsgi.input"])
        try:
            body = self.wsgi_app(environ, start_response)
        except Exception:
            if self._propagate():
                raise
            self._log(environ)
            return self._plain_500(environ, start_response, sys.exc_info())
        if type(body) is list:
            return body  # a buffered body (app.web.Response): nothing left that could fail
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            return body  # a static file: the server sends it with sendfile(), nothing to fail
        return _GuardedBody(self, body, environ, start_response)

    def _log(self, environ) -> None:
        log.exception(
            "unhandled error on %s %s",
            environ.get("REQUEST_METHOD", "-"),
            environ.get("PATH_INFO", "-"),
        )

    @staticmethod
    def _plain_500(environ, start_response, exc_info) -> list[bytes]:
        is_api = (environ.get("PATH_INFO") or "").startswith("/api/")
        body = _PLAIN_500_JSON if is_api else _PLAIN_500_HTML
        headers = [
            ("Content-Type", "application/json" if is_api else "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *((name, value) for name, _, value in _ALWAYS),
        ]
        status = "500 Internal Server Error"
        try:
            start_response(status, headers)
        except Exception:  # noqa: BLE001 - the app had called it already
            # PEP 3333's way to replace a status whose headers have not been sent yet.
            start_response(status, headers, exc_info)
        return [body]


class _ReadableInput:
    """The request body stream, whose read errors are the client's: a chunked body with a
    bad chunk size or a connection closed mid-body makes gunicorn raise from read(), which
    would be a 500. Here it is a 400 (werkzeug's BadRequest, answered by the app)."""

    __slots__ = ("stream",)

    def __init__(self, stream) -> None:
        self.stream = stream

    def _call(self, method: str, *args):
        try:
            return getattr(self.stream, method)(*args)
        except HTTPException:
            raise
        except Exception:  # gunicorn's ChunkMissingTerminator, NoMoreData, InvalidChunkSize...
            raise BadRequest("The request body could not be read") from None

    def read(self, *args):
        return self._call("read", *args)

    def readline(self, *args):
        return self._call("readline", *args)

    def readlines(self, *args):
        return self._call("readlines", *args)

    def __iter__(self):
        return iter(self.readline, b"")


class _GuardedBody:
    """The response body, iterated under LastResort's watch (and closed as WSGI requires)."""

    __slots__ = ("guard", "body", "environ", "start_response")

    def __init__(self, guard: LastResort, body, environ, start_response) -> None:
        self.guard, self.body = guard, body
        self.environ, self.start_response = environ, start_response

    def __iter__(self):
        sent = False
        try:
            for chunk in self.body:
                sent = sent or bool(chunk)
                yield chunk
        except Exception:
            if self.guard._propagate():
                raise
            self.guard._log(self.environ)
            if sent:
                raise  # too late for a 500: let the server cut the connection
            yield from self.guard._plain_500(self.environ, self.start_response, sys.exc_info())

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - teardown failed after the answer went out
                self.guard._log(self.environ)


def public_url(endpoint: str, **values) -> str:
    """An absolute URL for links that leave the site (mailed or shown to be sent on):
    KEYDESK_BASE_URL when set, so that a forged Host header cannot point an invitation or
    reset link at another site; else the request's own host (fine for development)."""
    from flask import current_app, url_for

    base = current_app.config.get("KEYDESK_BASE_URL")
    if base:
        return base.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


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
    if isinstance(exc, RateLimitExceeded):
        from app.metrics import count_rate_limited

        count_rate_limited("portal")
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
