"""The signed-in pages: your keys, a new key (shown once), details, revoke, rotate."""

from datetime import UTC, datetime, timedelta

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from wtforms.fields.choices import SelectChoice

from app import once
from app.accounts import policy
from app.auth.sudo import sudo_required
from app.clock import utcnow
from app.errors import Conflict, InvalidInput, NotFound, PolicyViolation
from app.extensions import db
from app.key_actions import ConfirmForm, revoke_and_flash
from app.keys import scopes as scope_rules
from app.keys import service as keys
from app.keys.authn import validate_allowed_ips
from app.keys.history import key_events, recent_ips
from app.keys.status import WORKING, is_working
from app.keys.usage import usage_by_day
from app.portal import bp
from app.portal.forms import CUSTOM, KEEP, AllowedIpsForm, EditKeyForm, NewKeyForm, RotateForm
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


def _form_error(form, exc: InvalidInput | PolicyViolation, rename: dict | None = None) -> None:
    """Put a refusal beside the field it names (exc.field, never the message text); one
    that names no field of this form goes above the form."""
    name = (rename or {}).get(exc.field, exc.field)
    target = form._fields.get(name) if name else None
    if target is None or name in ("csrf_token", once.FIELD):
        form.form_errors.append(str(exc))
    else:
        target.errors = [*target.errors, str(exc)]


def _reveal(row, full_key: str, *, rotated_from=None):
    """The one response that holds a secret: rendered, never redirected, never cached."""
    response = render_template(
        "portal/reveal.html", key=row, full_key=full_key, rotated_from=rotated_from
    )
    return response, 200, NO_STORE


def _already_created(done, *, rotated_from=None):
    """The same form again (a reload, Back then Forward): what it created, not the secret."""
    key = _own_key(done.result)
    html = render_template(
        "portal/already_created.html", key=key, done=done, rotated_from=rotated_from
    )
    return html, 200, NO_STORE


def _offered_scopes(tenant) -> list[str]:
    """Scopes the New key form offers: what the policy lets this user grant, less the admin
    scopes on a member's key, where they allow nothing (policy and CLI still accept them)."""
    grantable = policy.grantable_scopes(tenant, current_user)
    if current_user.is_admin:
        return grantable
    return [s for s in grantable if s not in scope_rules.ADMIN_ONLY]


@bp.get("/keys", endpoint="keys")
def keys_list():
    now = utcnow()
    rows = keys.list_user_keys(user=current_user)
    # The keys status_of calls `expiring`: the same set the reminder email lists.
    expiring = [k for k in rows if keys.status_of(k, now) == "expiring"]
    return render_template(
        "portal/keys.html",
        keys=rows,
        now=now,
        status_of=keys.status_of,
        expiring=expiring,
        tenant=current_user.tenant,
    )


@bp.route("/keys/new", methods=["GET", "POST"])
@sudo_required
def new_key():
    tenant = current_user.tenant
    form = NewKeyForm()
    form.set_policy(_offered_scopes(tenant), policy.expiry_choices(tenant))
    if form.is_submitted():
        try:
            done = once.already_done(
                token=form.submission.data, user_id=current_user.id, purpose="key.new"
            )
        except InvalidInput as exc:
            return render_template("error.html", status=400, message=str(exc)), 400
        if done is not None:
            return _already_created(done)
    if form.validate_on_submit():
        custom = form.expires_in_days.data == CUSTOM
        try:
            allowed_ips = validate_allowed_ips(form.allowed_ips.data or "")
        except ValueError as exc:
            form.allowed_ips.errors.append(str(exc))
        else:
            now = utcnow()
            try:
                days = (
                    keys.days_until(form.expires_on.data, now=now)
                    if custom
                    else form.expires_in_days.data
                )
                row, full_key = keys.issue_key(
                    user=current_user,
                    name=form.name.data,
                    scopes=form.scopes.data,
                    expires_in_days=days,
                    allowed_ips=allowed_ips,
                    now=now,
                    actor=request_actor(),
                )
                once.remember(
                    token=form.submission.data, user_id=current_user.id, purpose="key.new",
                    result=row.key_id, now=now,
                )  # fmt: skip
            except (InvalidInput, PolicyViolation) as exc:
                db.session.rollback()
                _form_error(form, exc, {"expires_in_days": "expires_on"} if custom else None)
            except once.AlreadySubmitted:
                db.session.rollback()
                return _already_created(
                    once.already_done(
                        token=form.submission.data, user_id=current_user.id, purpose="key.new"
                    )
                )
            else:
                db.session.commit()
                return _reveal(row, full_key)
    status = 400 if form.errors or form.form_errors else 200
    hidden = [] if current_user.is_admin else list(scope_rules.ADMIN_ONLY)
    return render_template(
        "portal/new_key.html", form=form, tenant=tenant, hidden_scopes=hidden
    ), status


@bp.get("/keys/<key_id>")
def key_detail(key_id: str):
    key = _own_key(key_id)
    return _detail_page(key, _rotate_form(key))


def _rotate_form(key) -> RotateForm:
    """The rotate form for this key: the lifetimes the policy allows, the old one first
    where it still does (a tightened policy must leave a way to rotate)."""
    tenant = key.user.tenant
    current = keys.lifetime_days_of(key)
    form = RotateForm()
    form.set_lifetimes(
        current_days=current,
        allowed=policy.expiry_choices(tenant),
        keep_allowed=policy.allows_lifetime(tenant, current),
    )
    return form


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
        working=is_working(key, now),
        editable=keys.status_of(key, now) in WORKING,
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
    form = _rotate_form(key)
    try:
        done = once.already_done(
            token=form.submission.data, user_id=current_user.id, purpose="key.rotate"
        )
    except InvalidInput as exc:
        return render_template("error.html", status=400, message=str(exc)), 400
    if done is not None:
        return _already_created(done, rotated_from=key)
    if not form.validate_on_submit():
        if csrf_failed(form):
            abort(400)
        # The key's page again, with the message beside the field.
        return _detail_page(key, form, 400)
    chosen = form.expires_in_days.data
    now = utcnow()
    try:
        new_row, full_key = keys.rotate_key(
            key=key,
            grace_hours=form.grace_hours.data,
            now=now,
            actor=request_actor(),
            expires_in_days=None if chosen in (None, KEEP) else chosen,
        )
        once.remember(
            token=form.submission.data, user_id=current_user.id, purpose="key.rotate",
            result=new_row.key_id, now=now,
        )  # fmt: skip
    except (PolicyViolation, InvalidInput) as exc:
        db.session.rollback()
        if exc.field not in ("grace_hours", "expires_in_days"):
            flash(str(exc), "error")
            return redirect(url_for("portal.key_detail", key_id=key.key_id))
        # e.g. a tightened policy: the form offers the lifetimes it allows.
        form = _rotate_form(key)  # the same request's answers, without the earlier errors
        _form_error(form, exc)
        return _detail_page(key, form, 400)
    except Conflict as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return redirect(url_for("portal.key_detail", key_id=key.key_id))
    except once.AlreadySubmitted:
        db.session.rollback()
        done = once.already_done(
            token=form.submission.data, user_id=current_user.id, purpose="key.rotate"
        )
        return _already_created(done, rotated_from=key)
    db.session.commit()
    return _reveal(new_row, full_key, rotated_from=key)


@bp.route("/keys/<key_id>/edit", methods=["GET", "POST"])
@sudo_required
def edit_key(key_id: str):
    """Name, description, scopes, expiry date and allow-list of a working key, under the
    rules a new key meets (SPEC "Keys after creation")."""
    key = _own_key(key_id)
    now = utcnow()
    if keys.status_of(key, now) not in WORKING:
        flash("Only an active key can be changed.", "error")
        return redirect(url_for("portal.key_detail", key_id=key.key_id))
    tenant = current_user.tenant
    if request.method == "GET":
        form = EditKeyForm(
            name=key.name,
            description=key.description or "",
            scopes=key.scope_list,
            expires_on=key.expires_at.date() if key.expires_at else None,
            allowed_ips="\n".join((key.allowed_ips or "").split()),
        )
    else:
        form = EditKeyForm()
    # What this user may grant, plus what the key holds already (a policy tightened since
    # must not hide a scope the key still has: unchecking it is allowed).
    offered = set(_offered_scopes(tenant)) | set(key.scope_list)
    form.scopes.choices = [SelectChoice(s, s) for s in scope_rules.ALL_SCOPES if s in offered]
    if form.validate_on_submit():
        try:
            allowed_ips = validate_allowed_ips(form.allowed_ips.data or "")
        except ValueError as exc:
            form.allowed_ips.errors.append(str(exc))
        else:
            try:
                changes = keys.update_key(
                    key=key,
                    now=now,
                    actor=request_actor(),
                    name=form.name.data,
                    description=form.description.data,
                    scopes=form.scopes.data,
                    expires_at=_chosen_expiry(key, form.expires_on.data),
                    allowed_ips=allowed_ips,
                    expiry_field="expires_on",
                )
            except (InvalidInput, PolicyViolation) as exc:
                db.session.rollback()
                _form_error(form, exc)
            except Conflict as exc:
                db.session.rollback()
                flash(str(exc), "error")
                return redirect(url_for("portal.key_detail", key_id=key.key_id))
            else:
                db.session.commit()
                flash("Key saved." if changes else "Nothing changed.", "success")
                return redirect(url_for("portal.key_detail", key_id=key.key_id))
    elif csrf_failed(form):
        abort(400)
    status = 400 if form.errors or form.form_errors else 200
    html = render_template("portal/edit_key.html", form=form, key=key, tenant=tenant)
    return html, status


def _chosen_expiry(key, day):
    """The edit form's date as an expiry: unchanged date, unchanged expiry; another date,
    that day at the time of day the key was created (as a preset of N days would be)."""
    if day is None:
        return None
    if key.expires_at is not None and key.expires_at.date() == day:
        return key.expires_at
    return datetime.combine(day, key.created_at.astimezone(UTC).time(), UTC)


@bp.post("/keys/<key_id>/allowed-ips")
@sudo_required(form_page=_key_page)
def allowed_ips(key_id: str):
    """Replace a key's IP allow-list (empty: any address); audited."""
    key = _own_key(key_id)
    form = AllowedIpsForm()
    if not form.validate_on_submit():
        if csrf_failed(form):
            abort(400)
        return _detail_page(key, _rotate_form(key), 400, ip_form=form)
    try:
        value = validate_allowed_ips(form.allowed_ips.data or "")
    except ValueError as exc:
        form.allowed_ips.errors = [*form.allowed_ips.errors, str(exc)]
        return _detail_page(key, _rotate_form(key), 400, ip_form=form)
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
