"""/admin/sso: the tenant's identity provider (OIDC) and its SCIM token."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from app.admin import bp
from app.admin.forms import SsoForm
from app.auth.sudo import sudo_required
from app.clock import utcnow
from app.errors import InvalidInput, NotFound
from app.extensions import db
from app.key_actions import ConfirmForm
from app.sso import scim
from app.sso import service as sso
from app.sso.views import redirect_uri
from app.web import NO_STORE
from app.web_actor import request_actor


def _page(form: SsoForm, *, status: int = 200, scim_token: str | None = None):
    tenant = current_user.tenant
    config = sso.get_config(tenant_id=tenant.id)
    if config is None or config.client_secret_sealed is None:
        form.client_secret.description = "Write-only: never shown again."
    html = render_template(
        "admin/sso.html",
        form=form,
        config=config,
        confirm_form=ConfirmForm(),
        callback_url=redirect_uri(tenant.slug),
        login_url=url_for("sso.login", slug=tenant.slug, _external=True),
        scim_url=url_for("scim.users", _external=True).rsplit("/Users", 1)[0],
        token=scim.current_token(tenant=tenant),
        new_token=scim_token,
    )
    # The SCIM token is a credential shown once: never cache this page anywhere.
    return html, status, NO_STORE


@bp.route("/sso", methods=["GET", "POST"], endpoint="sso")
@sudo_required
def sso_page():
    tenant = current_user.tenant
    form = SsoForm()
    config = sso.get_config(tenant_id=tenant.id)
    if request.method == "GET":
        if config is not None:
            form.issuer.data = config.issuer
            form.client_id.data = config.client_id
            form.email_domains.data = config.email_domains
            form.default_role.data = config.default_role
            form.enforce.data = bool(config.enforce)
        return _page(form)
    if form.validate_on_submit():
        try:
            sso.save_config(
                tenant=tenant,
                issuer=form.issuer.data,
                client_id=form.client_id.data,
                client_secret=form.client_secret.data,
                email_domains=form.email_domains.data or "",
                default_role=form.default_role.data,
                enforce=form.enforce.data,
                allow_private=current_app.config["KEYDESK_SSO_ALLOW_PRIVATE_ISSUERS"],
                actor=request_actor(),
                now=utcnow(),
            )
            db.session.commit()
        except InvalidInput as exc:
            db.session.rollback()
            getattr(form, exc.field or "issuer").errors.append(str(exc))
        except IntegrityError:
            # Another organization claimed one of the domains at the same moment.
            db.session.rollback()
            form.email_domains.errors.append("A domain was just claimed elsewhere; try again.")
        else:
            flash("Single sign-on saved. The provider's discovery document checks out.", "success")
            return redirect(url_for("admin.sso"))
    return _page(form, status=400)


@bp.post("/sso/remove")
@sudo_required
def sso_remove():
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        sso.remove_config(tenant=current_user.tenant, actor=request_actor(), now=utcnow())
    except NotFound:
        flash("Single sign-on was not set up.", "info")
        return redirect(url_for("admin.sso"))
    db.session.commit()
    flash("Single sign-on removed: members sign in with a password again.", "success")
    return redirect(url_for("admin.sso"))


@bp.post("/sso/scim-token")
@sudo_required
def scim_token():
    """Like a new key (DESIGN: the one POST that renders): the token is on this answer only."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    _, token = scim.create_token(tenant=current_user.tenant, actor=request_actor(), now=utcnow())
    db.session.commit()
    return _page(SsoForm(formdata=None), scim_token=token)
