"""Admin pages: the tenant's keys, policy, members and audit log."""

import logging
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

from app import once
from app.accounts import members as members_service
from app.accounts import policy, twofactor
from app.admin import auditlog, bp, inventory
from app.admin.forms import InviteForm, PolicyForm, RoleForm
from app.auth.sudo import sudo_required
from app.clock import utcnow
from app.errors import Conflict, InvalidInput, NotFound
from app.extensions import db
from app.key_actions import ConfirmForm, revoke_and_flash
from app.keys import service as keys
from app.keys.history import key_events, recent_ips
from app.keys.usage import usage_by_day
from app.mail import MailError, mail_configured, send_configured, sender_address
from app.web import NO_STORE, csrf_failed, public_url
from app.web_actor import request_actor

log = logging.getLogger(__name__)
bp.add_app_template_filter(auditlog.readable_details, "readable_details")


def _tenant_key(key_id: str):
    try:
        return keys.get_tenant_key(tenant_id=current_user.tenant_id, key_id=key_id)
    except NotFound:
        abort(404)


# --- keys ---------------------------------------------------------------------------


@bp.get("/keys", endpoint="keys")
def keys_inventory():
    now = utcnow()
    labels = inventory.PAGE_LABELS
    try:
        filters = inventory.parse_filter(request.args, labels)
        page_number = inventory.parse_page(request.args.get("page"), labels["page"])
    except InvalidInput as exc:
        filters, error, page_number = inventory.KeyFilter(), str(exc), 1
    else:
        error = None
    page = inventory.key_page(
        tenant_id=current_user.tenant_id, filters=filters, now=now, page=page_number
    )
    html = render_template(
        "admin/keys.html", page=page, filters=filters, error=error, now=now, form=ConfirmForm()
    )
    return html, 400 if error else 200


@bp.route("/keys/revoke", methods=["GET", "POST"], endpoint="revoke_matching")
@sudo_required
def revoke_matching():
    """Incident revoke: every working key matching the filter, after a confirmation page."""
    now = utcnow()
    try:
        filters = inventory.parse_filter(request.args, inventory.PAGE_LABELS)
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
    # No control characters or whitespace (CRLF would break the Location header, tabs and
    # newlines are dropped by browsers) and no backslash (read as "/" by browsers).
    if any(ch <= " " or ch in "\\\x7f" for ch in back):
        return default
    if back.startswith("/admin/") and not back.startswith("//"):
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
@sudo_required
def policy_page():
    tenant = current_user.tenant
    form = PolicyForm()
    if request.method == "GET":
        form.max_key_lifetime_days.data = tenant.max_key_lifetime_days or 0
        form.require_expiry.data = bool(tenant.require_expiry)
        form.member_scopes.data = policy.member_scope_list(tenant)
        form.require_2fa.data = bool(tenant.require_2fa)
    elif (
        form.validate_on_submit()
        and not form.member_scopes.data
        and form.confirm_no_member_scopes.data != "yes"
    ):
        # No scope for members means no key for members: ask before saving that.
        html = render_template("admin/policy.html", form=form, tenant=tenant, confirm_empty=True)
        return html, 200
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
            if not form.member_scopes.data:
                flash("Members may grant no scope now, so they cannot create keys.", "warning")
            return redirect(url_for("admin.policy"))
    status = 400 if form.errors else 200
    return render_template("admin/policy.html", form=form, tenant=tenant), status


# --- members ------------------------------------------------------------------------


def _members_page(invite_form=None, *, issued=None, mailed=False, status=200, already_invited=None):
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
        # The link is shown only when it could not be mailed to the invited address.
        invite_link=None if issued is None or mailed else _invite_link(issued.token),
        invite=issued.invite if issued else None,
        resent=bool(issued and issued.resent),
        mailed=mailed,
        mail_configured=mail_configured(),
        already_invited=already_invited,
        now=now,
    )
    # The invite link is a credential shown once: never cache this page anywhere.
    return html, status, NO_STORE


def _invite_link(token: str) -> str:
    return public_url("invites.accept", token=token)


@bp.get("/members")
def members():
    return _members_page()


def _members_form_page(**_view_args) -> str:
    """Where the invitation and role forms live (sudo mode returns there)."""
    return url_for("admin.members")


def _already_invited(form):
    """The same invitation form again (a reload, Back then Forward): show what it created."""
    try:
        done = once.already_done(
            token=form.submission.data, user_id=current_user.id, purpose="invite"
        )
    except InvalidInput as exc:
        abort(400, str(exc))
    if done is None:
        return None
    return _members_page(already_invited=done)  # done.result: the invited address


@bp.post("/members/invite")
@sudo_required(form_page=_members_form_page)
def invite():
    """Invite an address, or renew its open invitation (one per address). With mail
    configured the link goes to that address only and the admin never sees it: an admin
    could otherwise claim any address, or learn from the link whether it has an account."""
    form = InviteForm()
    if (shown := _already_invited(form)) is not None:
        return shown
    if not form.validate_on_submit():
        if csrf_failed(form):
            abort(400)
        return _members_page(form, status=400)
    now = utcnow()
    try:
        issued = members_service.create_invite(
            tenant=current_user.tenant,
            email=form.email.data,
            invited_by=current_user,
            actor=request_actor(),
            now=now,
        )
    except InvalidInput as exc:
        db.session.rollback()
        form.email.errors.append(str(exc))
        return _members_page(form, status=400)
    try:
        once.remember(
            token=form.submission.data, user_id=current_user.id, purpose="invite",
            result=issued.invite.email, now=now,
        )  # fmt: skip
    except once.AlreadySubmitted:
        db.session.rollback()
        return _already_invited(form)
    db.session.commit()  # before the mail: no transaction (SQLite's write lock) held over SMTP
    if not mail_configured():
        return _members_page(issued=issued)
    message = members_service.invitation_message(
        invite=issued.invite,
        link=_invite_link(issued.token),
        invited_by=current_user,
        sender=sender_address(),
    )
    try:
        send_configured([message])
    except MailError as exc:
        log.warning("invitation mail to %s failed: %s", issued.invite.email, exc)
        # The link went nowhere: withdraw it, so that a new invitation starts clean.
        members_service.revoke_invite(
            tenant=current_user.tenant,
            invite_id=issued.invite.id,
            actor=request_actor(),
            now=utcnow(),
        )
        db.session.commit()
        form = InviteForm(formdata=None, email=issued.invite.email)
        form.email.errors = ["The invitation could not be sent (the mail server refused it). "
                             "Try again in a moment."]  # fmt: skip
        return _members_page(form, status=503)
    return _members_page(issued=issued, mailed=True)


def _member(user_id: int):
    try:
        return members_service.get_member(tenant=current_user.tenant, user_id=user_id)
    except NotFound:
        abort(404)


@bp.post("/members/<dbid:user_id>/role")
@sudo_required(form_page=_members_form_page)
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


@bp.get("/members/<dbid:user_id>/deactivate")
@sudo_required
def confirm_deactivate(user_id: int):
    """Deactivation revokes every key of the member: confirm on a page that needs no script."""
    user = _member(user_id)
    return render_template(
        "admin/confirm_deactivate.html",
        member=user,
        key_count=members_service.count_working_keys(user=user, now=utcnow()),
        form=ConfirmForm(),
    )


@bp.post("/members/<dbid:user_id>/deactivate")
@sudo_required(form_page=lambda user_id: url_for("admin.confirm_deactivate", user_id=user_id))
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


@bp.post("/invites/<dbid:invite_id>/revoke")
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
    labels = auditlog.PAGE_LABELS
    error = None
    export = request.args.get("format")
    try:
        filters = auditlog.parse_filter(request.args, tenant_id=tenant_id, labels=labels)
        if export not in (None, "", "html", *auditlog.EXPORT_FORMATS):
            raise InvalidInput(f"{labels['format']} must be csv or json", "format")
        before = auditlog.parse_cursor(request.args.get("before"), labels["before"], "before")
    except InvalidInput as exc:
        filters, error, before = auditlog.EventFilter(), str(exc), None
    if export in auditlog.EXPORT_FORMATS and error is None:
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
