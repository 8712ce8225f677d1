"""The signed-in pages: your keys, a new key (shown once), details, revoke, rotate."""

from datetime import timedelta

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from app.accounts import policy
from app.auth.sudo import sudo_required
from app.clock import utcnow
from app.errors import Conflict, InvalidInput, NotFound, PolicyViolation
from app.extensions import db
from app.key_actions import ConfirmForm, revoke_and_flash
from app.keys import service as keys
from app.keys.authn import validate_allowed_ips
from app.keys.history import key_events, recent_ips
from app.keys.usage import usage_by_day
from app.portal import bp
from app.portal.forms import AllowedIpsForm, NewKeyForm, RotateForm
from app.web import NO_STORE, csrf_failed
from app.web_actor import request_actor


@bp.before_request
@login_required
def _signed_in() -> None:
    """Every page of this blueprint needs a signed-in user."""


@bp.get("/")
def index():
    return redirect(url_for("portal.keys"))


def _own_key(key_id: str):
    try:
        return keys.get_user_key(user=current_user, key_id=key_id)
    except NotFound:
        abort(404)


def _reveal(row, full_key: str, *, rotated_from=None):
    """The one response that holds a secret: rendered, never redirected, never cached."""
    response = render_template(
        "portal/reveal.html", key=row, full_key=full_key, rotated_from=rotated_from
    )
    return response, 200, NO_STORE


@bp.get("/keys", endpoint="keys")
def keys_list():
    now = utcnow()
    rows = keys.list_user_keys(user=current_user)
    expiring = [
        k
        for k in rows
        if keys.status_of(k, now) == "expiring" and k.expires_at is not None and not k.revoked_at
    ]
    return render_template(
        "portal/keys.html",
        keys=rows,
        now=now,
        status_of=keys.status_of,
        expiring=expiring,
        rotate_form=RotateForm(),
    )


@bp.route("/keys/new", methods=["GET", "POST"])
@sudo_required
def new_key():
    tenant = current_user.tenant
    form = NewKeyForm()
    form.set_policy(policy.grantable_scopes(tenant, current_user), policy.expiry_choices(tenant))
    if form.validate_on_submit():
        try:
            allowed_ips = validate_allowed_ips(form.allowed_ips.data or "")
        except ValueError as exc:
            form.allowed_ips.errors.append(str(exc))
        else:
            try:
                row, full_key = keys.issue_key(
                    user=current_user,
                    name=form.name.data,
                    scopes=form.scopes.data,
                    expires_in_days=form.expires_in_days.data,
                    allowed_ips=allowed_ips,
                    now=utcnow(),
                    actor=request_actor(),
                )
            except (InvalidInput, PolicyViolation) as exc:
                db.session.rollback()
                field = getattr(exc, "field", None) or "name"
                if isinstance(exc, PolicyViolation):
                    field = (
                        "scopes"
                        if "scope" in str(exc) or "grant" in str(exc)
                        else ("expires_in_days")
                    )
                getattr(form, field).errors.append(str(exc))
            else:
                db.session.commit()
                return _reveal(row, full_key)
    status = 400 if form.errors else 200
    return render_template("portal/new_key.html", form=form, tenant=tenant), status


@bp.get("/keys/<key_id>")
def key_detail(key_id: str):
    return _detail_page(_own_key(key_id), RotateForm())


def _detail_page(
    key, rotate_form: RotateForm, status: int = 200, ip_form: AllowedIpsForm | None = None
):
    now = utcnow()
    today = now.date()
    days = [today - timedelta(days=n) for n in range(29, -1, -1)]
    page = render_template(
        "portal/key_detail.html",
        key=key,
        now=now,
        status=keys.status_of(key, now),
        usage=usage_by_day(api_key_pk=key.id, days=days),
        events=key_events(key),
        ips=recent_ips(key),
        rotate_form=rotate_form,
        revoke_form=ConfirmForm(),
        ip_form=ip_form or AllowedIpsForm(allowed_ips="\n".join((key.allowed_ips or "").split())),
    )
    return page, status


@bp.get("/keys/<key_id>/revoke")
def confirm_revoke(key_id: str):
    """Revoking cannot be undone: confirm on a page of its own, which needs no JavaScript."""
    key = _own_key(key_id)
    return render_template(
        "portal/confirm_revoke.html",
        key=key,
        status=keys.status_of(key, utcnow()),
        form=ConfirmForm(),
    )


@bp.post("/keys/<key_id>/revoke")
def revoke(key_id: str):
    key = _own_key(key_id)
    revoke_and_flash(key)
    return redirect(
        request.form.get("back") == "detail"
        and url_for("portal.key_detail", key_id=key.key_id)
        or url_for("portal.keys")
    )


def _key_page(key_id: str) -> str:
    """Where the rotate and allowed-IPs forms live (sudo mode returns there)."""
    return url_for("portal.key_detail", key_id=key_id)


@bp.post("/keys/<key_id>/rotate")
@sudo_required(form_page=_key_page)
def rotate(key_id: str):
    key = _own_key(key_id)
    form = RotateForm()
    if not form.validate_on_submit():
        if csrf_failed(form):
            abort(400)
        # The key's page again, with the message beside the grace period field.
        return _detail_page(key, form, 400)
    try:
        new_row, full_key = keys.rotate_key(
            key=key, grace_hours=form.grace_hours.data, now=utcnow(), actor=request_actor()
        )
    except (Conflict, PolicyViolation, InvalidInput) as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("portal.key_detail", key_id=key.key_id))
    db.session.commit()
    return _reveal(new_row, full_key, rotated_from=key)


@bp.post("/keys/<key_id>/allowed-ips")
@sudo_required(form_page=_key_page)
def allowed_ips(key_id: str):
    """Replace a key's IP allow-list (empty: any address); audited."""
    key = _own_key(key_id)
    form = AllowedIpsForm()
    if not form.validate_on_submit():
        if csrf_failed(form):
            abort(400)
        return _detail_page(key, RotateForm(), 400, ip_form=form)
    try:
        value = validate_allowed_ips(form.allowed_ips.data or "")
    except ValueError as exc:
        form.allowed_ips.errors = [*form.allowed_ips.errors, str(exc)]
        return _detail_page(key, RotateForm(), 400, ip_form=form)
    try:
        keys.set_allowed_ips(key=key, allowed_ips=value, now=utcnow(), actor=request_actor())
    except Conflict as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        db.session.commit()
        flash("Allowed IP addresses saved." if value else "This key now works from any address.",
              "success")  # fmt: skip
    return redirect(url_for("portal.key_detail", key_id=key.key_id))
