"""/sso/<slug>/login and /sso/<slug>/callback: the browser's half of an SSO sign-in.

A browser blueprint (app/__init__.py BROWSER_BLUEPRINTS): it signs people in through
the session cookie like /login, so it gets the same session and CSRF hooks, although
both routes are GETs (the provider redirects the browser back with a GET)."""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from app.accounts import service as accounts
from app.auth.routes import safe_next
from app.auth.signin import complete_sign_in
from app.clock import utcnow
from app.extensions import db, limiter
from app.net import client_ip
from app.sso import oidc
from app.sso.service import get_config
from app.web_actor import request_actor

bp = Blueprint("sso", __name__, url_prefix="/sso")

SESSION_KEY = "sso_state"


def _limit() -> str:
    return current_app.config["KEYDESK_LOGIN_RATE_LIMIT"]


def redirect_uri(slug: str) -> str:
    """The callback URL registered at the provider: KEYDESK_BASE_URL when the operator set
    it (behind a proxy the request's host may not be the public one), else this request's."""
    base = (current_app.config.get("KEYDESK_BASE_URL") or "").rstrip("/")
    path = url_for("sso.callback", slug=slug)
    return base + path if base else url_for("sso.callback", slug=slug, _external=True)


def _refused_page(refusal: oidc.SsoRefused, tenant=None):
    html = render_template("sso/refused.html", message=str(refusal), tenant=tenant)
    return html, refusal.status


def _tenant_or_404(slug: str):
    tenant = accounts.get_tenant_by_slug(slug) if len(slug) <= 64 else None
    config = get_config(tenant_id=tenant.id) if tenant else None
    return tenant, config


@bp.get("/<slug>/login")
@limiter.limit(_limit, key_func=client_ip)
def login(slug: str):
    tenant, config = _tenant_or_404(slug)
    if config is None:
        refusal = oidc.SsoRefused(
            "Single sign-on is not set up for this organization.", reason="not_configured",
            status=404,
        )  # fmt: skip
        return _refused_page(refusal)
    next_url = request.args.get("next")
    next_url = safe_next(next_url) if next_url and len(next_url) <= 2000 else None
    if current_user.is_authenticated and current_user.tenant_id == tenant.id:
        return redirect(next_url or url_for("portal.keys"))
    hint = (request.args.get("login_hint") or "").strip()
    url, state = oidc.start(
        tenant=tenant,
        config=config,
        redirect_uri=redirect_uri(tenant.slug),
        next_url=next_url,
        login_hint=hint if 0 < len(hint) <= 254 and hint.isprintable() else None,
        now=utcnow(),
    )
    db.session.commit()
    session[SESSION_KEY] = state
    return redirect(url)


@bp.get("/<slug>/callback")
@limiter.limit(_limit, key_func=client_ip)
def callback(slug: str):
    tenant, config = _tenant_or_404(slug)
    now = utcnow()
    actor = request_actor("anonymous", "anonymous")
    # Popped whatever happens next: a state is good for one answer from the provider.
    browser_state = session.pop(SESSION_KEY, None)
    params = {k: v for k, v in request.args.items() if isinstance(v, str)}
    try:
        result = oidc.finish(
            tenant=tenant,
            config=config,
            params=params,
            browser_state=browser_state,
            redirect_uri=redirect_uri(slug),
            allow_private=current_app.config["KEYDESK_SSO_ALLOW_PRIVATE_ISSUERS"],
            actor=actor,
            now=now,
        )
        oidc.record_sign_in(result=result, tenant=tenant, config=config, actor=actor, now=now)
        db.session.commit()
    except oidc.SsoRefused as refusal:
        # Every refusal comes before any write but the one marking the attempt used: commit
        # that with the audit event, so a refused answer cannot be tried again either.
        oidc.record_refusal(refusal=refusal, tenant=tenant, actor=actor, now=now)
        db.session.commit()
        return _refused_page(refusal, tenant)
    except IntegrityError:
        # The same new person signing in twice at once: the other request created them.
        db.session.rollback()
        refusal = oidc.SsoRefused(
            "That did not go through; start again from the sign-in page.", reason="race",
            status=409,
        )  # fmt: skip
        return _refused_page(refusal, tenant)
    # A full sign-in: a fresh session, and sudo mode starts (complete_sign_in). SSO also
    # counts as the second factor for a tenant's require_2fa: method="sso".
    complete_sign_in(result.user, method="sso")
    return redirect(safe_next(result.next_url))
