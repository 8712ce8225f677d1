"""Bearer authentication for /api/v1 views: `@require_scopes(...)` and `g.key`.

The per-request work is Authenticator.authenticate (app/keys/authn.py) plus a
few set operations; see DESIGN.md "The hot path".
"""

from __future__ import annotations

import atexit
import time
import weakref
from collections.abc import Callable
from functools import wraps

from flask import current_app, g, request

from app.api.limits import ApiLimits
from app.errors import IpNotAllowed, ScopeMissing
from app.keys import scopes as scope_rules
from app.keys.authn import Authenticator, KeyContext, ip_allowed
from app.keys.usage import UsageRecorder
from app.metrics import count_outcome
from app.net import client_ip
from app.observe import KEY_ID_KEY


class MissingToken(Exception):
    """No Authorization header at all: 401 with a bare challenge (RFC 6750 section 3.1)."""


class BadRequestToken(Exception):
    """A malformed Authorization header, another scheme, or a key in the query string."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def authenticator() -> Authenticator:
    return current_app.extensions["keydesk.authenticator"]


def init_app(app) -> None:
    from app.extensions import db

    with app.app_context():
        app.extensions["keydesk.authenticator"] = Authenticator(
            db.engine,
            app.config["KEYDESK_KEY_PEPPER"].encode(),
            app.config["KEYDESK_KEY_PREFIX"],
            cache_ttl=float(app.config.get("KEYDESK_AUTH_CACHE_TTL", 60) or 0),
        )
        authn = app.extensions["keydesk.authenticator"]
        app.extensions["keydesk.limits"].attach_feed(authn.feed, db.engine)
    app.extensions["keydesk.usage"] = UsageRecorder(
        app, background=bool(app.config.get("KEYDESK_USAGE_BACKGROUND", True))
    )
    atexit.register(_flush_at_exit, weakref.ref(app))  # weak: an app may go away first


def _flush_at_exit(app_ref) -> None:
    """Write the counts still buffered in this process (gunicorn worker shutdown, Ctrl-C)."""
    app = app_ref()
    if app is not None and app.extensions["keydesk.usage"].pending_count():
        app.extensions["keydesk.usage"].drain(timeout=5)
        with app.app_context():
            app.extensions["keydesk.usage"].flush_all(int(time.time()))


def bearer_token(environ: dict) -> str:
    # request.args parses the query string into a MultiDict; most API calls have none.
    if environ.get("QUERY_STRING") and (
        "access_token" in request.args or "api_key" in request.args or "key" in request.args
    ):
        raise BadRequestToken("Send the API key in the Authorization header, not the URL")
    header = environ.get("HTTP_AUTHORIZATION")  # what request.headers reads, minus a layer
    if header is None:
        raise MissingToken()
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise BadRequestToken("Use the Bearer authorization scheme")
    token = token.strip()
    if not token or " " in token:
        raise BadRequestToken("Malformed Authorization header")
    return token


def authenticate_request() -> KeyContext:
    """Authenticate once per request (cached on g); raise the domain error otherwise.

    Runs on every authenticated API call: the request's environ, the clock and the app's
    extensions are read once and passed down (each Flask proxy access costs about as
    much as a dict lookup chain, and they add up here)."""
    ctx = g.get("key")
    if ctx is not None:
        return ctx
    extensions = current_app.extensions
    environ = request.environ
    now = time.time()
    ip = client_ip(environ)
    limits: ApiLimits = extensions["keydesk.limits"]
    authn: Authenticator = extensions["keydesk.authenticator"]
    live = authn.feed_live()  # once per request
    limits.check_auth_failures(ip, now, live)  # over its failure budget: 429 before any key
    ctx = authn.authenticate(bearer_token(environ), now=int(now), live=live)
    if ctx.allowed_ips and not ip_allowed(ctx.allowed_ips, ip):
        raise IpNotAllowed()
    g.key = ctx
    environ[KEY_ID_KEY] = ctx.key_id  # ops: gunicorn's access line names the key
    limits.charge(limits.per_key, ctx.key_id, "this API key", environ, now)
    recorder: UsageRecorder = extensions["keydesk.usage"]
    if recorder.note(ctx, ip, int(now)):
        recorder.submit(ctx, int(now))
    return ctx


def require_scopes(*needed: str) -> Callable:
    """Decorator: a valid key holding every scope in `needed` (admin:all satisfies any).

    A client key is unscoped: it passes every scope check.
    """

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            ctx = authenticate_request()
            if needed and not ctx.is_client and not scope_rules.satisfies(ctx.scopes, needed):
                raise ScopeMissing(needed)
            count_outcome("valid")  # ops: the one place the "valid" outcome is counted
            return view(*args, **kwargs)

        wrapper.required_scopes = needed  # read by the OpenAPI generator
        return wrapper

    return decorator
