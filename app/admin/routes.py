"""Admin pages: the tenant's keys, policy, members and audit log."""

from datetime import timedelta

from flask import (
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user

from app.accounts import members as members_service
from app.accounts import policy, twofactor
from app.admin import auditlog, bp, inventory
from app.admin.forms import InviteForm, PolicyForm, RoleForm
from app.clock import utcnow
from app.errors import Conflict, InvalidInput, NotFound
from app.extensions import db
from app.key_actions import ConfirmForm, revoke_and_flash
from app.keys import service as keys
from app.keys.history import key_events, recent_ips
from app.keys.usage import usage_by_day
from app.params import whole_number
from app.web import NO_STORE
from app.web_actor import request_actor

bp.add_app_template_filter(auditlog.readable_details, "readable_details")


def _page_number() -> int:
    return whole_number(request.args.get("page"), low=1, high=10**6) or 1


def _tenant_key(key_id: str):
    try:
        return keys.get_tenant_key(tenant_id=current_user.tenant_id, key_id=key_id)
    except NotFound:
        abort(404)


# --- keys ---------------------------------------------------------------------------


@bp.get("/keys", endpoint="keys")
def keys_inventory():
    now = utcnow()
    try:
        filters = inventory.parse_filter(request.args)
    except InvalidInput as exc:
        filters, error = inventory.KeyFilter(), str(exc)
    else:
        error = None
    page = inventory.key_page(
        tenant_id=current_user.tenant_id, filters=filters, now=now, page=_page_number()
    )
    html = render_template(
        "admin/keys.html", page=page, filters=filters, error=error, now=now, form=ConfirmForm()
    )
    return html, 400 if error else 200


@bp.route("/keys/revoke", methods=["GET", "POST"], endpoint="revoke_matching")
def revoke_matching():
    """Incident revoke: every working key matching the filter, after a confirmation page."""
    now = utcnow()
    try:
        filters = inventory.parse_filter(request.args)
    except InvalidInput as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.keys"))
    if filters.is_empty:
        flash("Choose a filter first: incident revoke acts on the keys a filter selects.", "error")
        return redirect(url_for("admin.keys"))
    form = ConfirmForm()
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        count = inventory.revoke_matching(
            tenant_id=current_user.tenant_id, filters=filters, now=now, actor=request_actor()
        )
        db.session.commit()
        flash(f"Revoked {count} key{'' if count == 1 else 's'}. They no longer work.", "success")
        return redirect(url_for("admin.keys", **filters.query_args()))
    count = inventory.count_keys(
        tenant_id=current_user.tenant_id, filters=filters, now=now, only_working=True
    )
    return render_template("admin/revoke_confirm.html", filters=filters, count=count, form=form)


@bp.get("/keys/<key_id>")
def key_detail(key_id: str):
    key = _tenant_key(key_id)
    now = utcnow()
    days = [now.date() - timedelta(days=n) for n in range(29, -1, -1)]
    return render_template(
        "admin/key_detail.html",
        key=key,
        now=now,
        status=keys.status_of(key, now),
        usage=usage_by_day(api_key_pk=key.id, days=days),
        events=key_events(key),
        ips=recent_ips(key),
        form=ConfirmForm(),
    )


def _admin_back(default: str) -> str:
    """A same-site /admin/ path to return to (open redirects are refused)."""
    back = request.values.get("next") or ""
    if back.startswith("/admin/") and not back.startswith("//") and "\\" not in back:
        return back
    return default


@bp.get("/keys/<key_id>/revoke")
def confirm_revoke_key(key_id: str):
    """Revoking cannot be undone: confirm on a page of its own, which needs no JavaScript."""
    key = _tenant_key(key_id)
    return render_template(
        "admin/confirm_revoke_key.html",
        key=key,
        status=keys.status_of(key, utcnow()),
        back=_admin_back(url_for("admin.key_detail", key_id=key.key_id)),
        form=ConfirmForm(),
    )


@bp.post("/keys/<key_id>/revoke")
def revoke_key(key_id: str):
    key = _tenant_key(key_id)
    revoke_and_flash(key)
    return redirect(_admin_back(url_for("admin.keys")))


# --- policy -------------------------------------------------------------------------


@bp.route("/policy", methods=["GET", "POST"], endpoint="policy")
def policy_page():
    tenant = current_user.tenant
    form = PolicyForm()
    if request.method == "GET":
        form.max_key_lifetime_days.data = tenant.max_key_lifetime_days or 0
        form.require_expiry.data = bool(tenant.require_expiry)
        form.member_scopes.data = policy.member_scope_list(tenant)
        form.require_2fa.data = bool(tenant.require_2fa)
    elif form.validate_on_submit():
        try:
            policy.update_policy(
                tenant=tenant,
                max_key_lifetime_days=form.max_key_lifetime_days.data,
                require_expiry=form.require_expiry.data,
                member_scopes=form.member_scopes.data or [],
                require_2fa=form.require_2fa.data,
                actor=request_actor(),
                now=utcnow(),
            )
        except InvalidInput as exc:
            db.session.rollback()
            getattr(form, exc.field or "max_key_lifetime_days").errors.append(str(exc))
        else:
            db.session.commit()
            flash("Policy saved. It applies to new keys and rotations from now on.", "success")
            return redirect(url_for("admin.policy"))
    status = 400 if form.errors else 200
    return render_template("admin/policy.html", form=form, tenant=tenant), status


# --- members ------------------------------------------------------------------------


def _members_page(invite_form=None, *, invite_link=None, invite=None, status=200):
    now = utcnow()
    tenant = current_user.tenant
    html = render_template(
        "admin/members.html",
        members=members_service.list_members(tenant=tenant, now=now),
        invites=members_service.pending_invites(tenant=tenant, now=now),
        second_factor_ids=twofactor.users_with_second_factor(tenant_id=tenant.id),
        invite_form=invite_form or InviteForm(formdata=None),  # empty after a success
        role_form=RoleForm(),
        form=ConfirmForm(),
        invite_link=invite_link,
        invite=invite,
        now=now,
    )
    # The invite link is a credential shown once: never cache this page anywhere.
    return html, status, NO_STORE


@bp.get("/members")
def members():
    return _members_page()


@bp.post("/members/invite")
def invite():
    form = InviteForm()
    if not form.validate_on_submit():
        if form.csrf_token.errors:
            abort(400)
        return _members_page(form, status=400)
    try:
        row, token = members_service.create_invite(
            tenant=current_user.tenant,
            email=form.email.data,
            invited_by=current_user,
            actor=request_actor(),
            now=utcnow(),
        )
    except InvalidInput as exc:
        db.session.rollback()
        form.email.errors.append(str(exc))
        return _members_page(form, status=400)
    db.session.commit()
    link = url_for("invites.accept", token=token, _external=True)
    return _members_page(invite_link=link, invite=row)


def _member(user_id: int):
    try:
        return members_service.get_member(tenant=current_user.tenant, user_id=user_id)
    except NotFound:
        abort(404)


@bp.post("/members/<int:user_id>/role")
def change_role(user_id: int):
    user = _member(user_id)
    form = RoleForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        changed = members_service.change_role(
            tenant=current_user.tenant,
            user=user,
            role=form.role.data,
            actor=request_actor(),
            now=utcnow(),
        )
    except (Conflict, InvalidInput) as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        db.session.commit()
        if changed:
            flash(f"{user.email} is now {user.role}.", "success")
    return redirect(url_for("admin.members"))


@bp.get("/members/<int:user_id>/deactivate")
def confirm_deactivate(user_id: int):
    """Deactivation revokes every key of the member: confirm on a page that needs no script."""
    user = _member(user_id)
    return render_template(
        "admin/confirm_deactivate.html",
        member=user,
        key_count=members_service.count_working_keys(user=user, now=utcnow()),
        form=ConfirmForm(),
    )


@bp.post("/members/<int:user_id>/deactivate")
def deactivate(user_id: int):
    user = _member(user_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        count = members_service.deactivate(
            tenant=current_user.tenant, user=user, actor=request_actor(), now=utcnow()
        )
    except Conflict as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        db.session.commit()
        flash(
            f"{user.email} is deactivated: signed out everywhere, "
            f"{count} key{'' if count == 1 else 's'} revoked.",
            "success",
        )
    return redirect(url_for("admin.members"))


@bp.post("/invites/<int:invite_id>/revoke")
def revoke_invite(invite_id: int):
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        row = members_service.revoke_invite(
            tenant=current_user.tenant, invite_id=invite_id, actor=request_actor(), now=utcnow()
        )
    except NotFound:
        abort(404)
    except Conflict as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        db.session.commit()
        flash(f"The invitation for {row.email} was withdrawn.", "success")
    return redirect(url_for("admin.members"))


# --- audit log ----------------------------------------------------------------------


@bp.get("/audit")
def audit():
    tenant_id = current_user.tenant_id
    error = None
    try:
        filters = auditlog.parse_filter(request.args)
    except InvalidInput as exc:
        filters, error = auditlog.EventFilter(), str(exc)
    export = request.args.get("format")
    if export in ("csv", "json") and error is None:
        events = auditlog.iter_events(tenant_id=tenant_id, filters=filters)
        stamp = utcnow().strftime("%Y%m%d-%H%M%S")
        if export == "csv":
            body, mimetype = auditlog.export_csv(events), "text/csv"
        else:
            body, mimetype = auditlog.export_json(events), "application/json"
        return Response(
            stream_with_context(body),
            mimetype=mimetype,
            headers={
                "Content-Disposition": f'attachment; filename="audit-{stamp}.{export}"',
                "Cache-Control": "no-store",
            },
        )
    if export not in (None, "", "html", "csv", "json"):
        error = "format must be csv or json"
    before = whole_number(request.args.get("before"), low=1)
    events, next_cursor = auditlog.events_page(tenant_id=tenant_id, filters=filters, before=before)
    html = render_template(
        "admin/audit.html",
        events=events,
        next_cursor=next_cursor,
        filters=filters,
        actions=auditlog.known_actions(tenant_id=tenant_id),
        error=error,
        first_page=before is None,
    )
    return html, 400 if error else 200
