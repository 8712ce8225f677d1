"""Keydesk: a self-hosted API key service. `create_app()` is the WSGI factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import load_config
from app.extensions import csrf, db, limiter, login_manager, migrate

log = logging.getLogger(__name__)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    from app.web import Keydesk

    app = Keydesk(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    app.config.update(load_config(app.instance_path))
    if config:
        app.config.update(config)

    hops = app.config["KEYDESK_TRUSTED_PROXIES"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(app.root_path + "/../migrations"))
    browser_hooks = _hooks_added_by(app, lambda: csrf.init_app(app))
    # Flask-Limiter's app-wide before/after-request hooks cost about 46 µs on every request
    # (a quarter of a bare Flask request), although every limit here is explicit: the
    # decorated sign-in views check their own, and /api/v1 checks in app/api/limits.py.
    # Flask-Limiter installs those hooks only for an app it has not seen, so mark it seen.
    app.extensions.setdefault("limiter", set()).add(limiter)
    limiter.init_app(app)
    browser_hooks += _hooks_added_by(app, lambda: login_manager.init_app(app))
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to continue."

    from app.database import configure_engine

    with app.app_context():
        configure_engine(db.engine)

    from app import web

    web.init_app(app)
    from app import observe

    observe.init_app(app)  # request ids, metrics, JSON logs, /livez, /readyz: outermost

    from app.admin import bp as admin_bp
    from app.admin.invites import bp as invites_bp
    from app.api import init_app as init_api
    from app.auth import bp as auth_bp
    from app.device import bp as device_bp
    from app.portal import bp as portal_bp
    from app.sso.scim_views import bp as scim_bp
    from app.sso.views import bp as sso_bp
    from app.twofactor import bp as twofactor_bp
    from app.twofactor import gate as twofactor_gate

    app.register_blueprint(auth_bp)
    app.register_blueprint(portal_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(invites_bp)
    app.register_blueprint(twofactor_bp)
    app.register_blueprint(device_bp)
    app.register_blueprint(sso_bp)
    app.register_blueprint(scim_bp)
    init_api(app)
    _browser_only(app, browser_hooks)
    twofactor_gate.init_app(app)

    from app.auth import signin
    from app.auth.reset_mail import mailer

    signin.init_app(app, BROWSER_BLUEPRINTS)  # who is signed in: server-side sessions
    mailer(app)

    from app.cli import register_cli

    register_cli(app)
    # Outermost, after every other WSGI middleware: nothing the app raises reaches the server.
    app.wsgi_app = web.LastResort(app.wsgi_app, app)
    return app


# The blueprints of the browser portal: CSRF-checked forms and session cookies. Every
# route that changes state outside /api/ and /scim/ must live in one of them (a test
# checks). /scim/v2 (app/sso/scim_views.py) is, like /api/, for machines: a bearer token,
# no cookie session (app/web.py), so no CSRF check applies there.
BROWSER_BLUEPRINTS = ("auth", "portal", "admin", "invites", "twofactor", "device", "sso")
# Path prefixes served without a cookie session, to bearer tokens only.
BEARER_ONLY_PREFIXES = ("/api/", "/scim/")


def _hooks_added_by(app: Flask, init) -> list[tuple[str, object]]:
    """Run init(); return the app-wide (kind, hook) pairs it registered."""
    kinds = ("before_request_funcs", "after_request_funcs")
    seen = {kind: list(getattr(app, kind).get(None, ())) for kind in kinds}
    init()
    return [
        (kind, hook)
        for kind in kinds
        for hook in getattr(app, kind).get(None, ())
        if hook not in seen[kind]
    ]


def _browser_only(app: Flask, hooks: list[tuple[str, object]]) -> None:
    """Move Flask-WTF's CSRF check and Flask-Login's remember-cookie refresh from every
    request onto the portal's blueprints. The JSON API takes bearer keys (its blueprint
    is CSRF-exempt and gets a null session), and the two app-wide hooks cost it ~5% of
    /api/v1/ping's throughput (measured with wrk). The app's own routes outside the
    blueprints (/healthz, /static) are GET only: no CSRF check applies to them, and they
    never sign anyone in or out."""
    for kind, hook in hooks:
        getattr(app, kind)[None].remove(hook)
        for name in BROWSER_BLUEPRINTS:
            # First in the list: Flask runs before_request hooks in order and after_request
            # hooks in reverse, so they run where they ran app-wide (before the blueprint's
            # own before_request hooks, after its after_request hooks).
            getattr(app, kind).setdefault(name, []).insert(0, hook)
