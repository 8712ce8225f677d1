"""Small helpers shared by the /api/v1 views: JSON bodies, the audit actor,
and resolving the tenant a request names."""

from __future__ import annotations

import json

from flask import g, request
from werkzeug.exceptions import UnsupportedMediaType

from app.accounts import service as accounts
from app.audit import Actor
from app.errors import Forbidden, InvalidInput, NotFound
from app.extensions import db
from app.keys.authn import KeyContext
from app.models import Tenant, User
from app.web_actor import request_actor


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def json_body(*, required: bool = True) -> dict:
    """The request body as a JSON object.

    Empty body: {} when optional, else 400. A body with another content type: 415.
    Malformed JSON or not an object: 400. Too large: 413 (MAX_CONTENT_LENGTH, raised by
    Werkzeug when the body is read).
    """
    raw = request.get_data(cache=True)
    if not raw:
        if required:
            raise InvalidInput("Send a JSON object as the request body")
        return {}
    if not request.is_json:
        raise UnsupportedMediaType("Send the request body as application/json")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise InvalidInput("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object")
    _refuse_lone_surrogates(data)
    return data


def _refuse_lone_surrogates(data: dict) -> None:
    """400 naming the field when a string holds a lone surrogate ("\\ud800"): JSON escapes
    allow it, but it is not Unicode, and the database driver fails to encode it (a 500)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return
    for name, value in data.items():
        if not _encodable(name):
            raise InvalidInput("A field name in the request body is not valid Unicode")
        if not _encodable(json.dumps(value, ensure_ascii=False)):
            raise InvalidInput(f"Field {name} is not valid Unicode (a lone surrogate)", field=name)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_actor(ctx: KeyContext | None = None) -> Actor:
    """The audit actor for a request made with an API key."""
    return request_actor((ctx or g.key).key_id, "key")


def anonymous_actor(label: str = "anonymous") -> Actor:
    return request_actor(label, "anonymous")


def tenant_for(slug: str | None, ctx: KeyContext) -> Tenant:
    """The tenant a request names. A user key reaches only its own tenant (another slug is
    404, indistinguishable from a missing one); a client key reaches any existing tenant."""
    if ctx.is_client:
        tenant = accounts.get_tenant_by_slug(slug) if slug else None
        if tenant is None:
            raise NotFound("No such tenant")
        return tenant
    if slug is not None and slug != ctx.tenant_slug:
        raise NotFound("No such tenant")
    tenant = db.session.get(Tenant, ctx.tenant_id)
    if tenant is None:  # deleted under us
        raise NotFound("No such tenant")
    return tenant


def key_owner(slug: str, ctx: KeyContext) -> User:
    """The user whose own keys a key-management route acts on: the caller's owner.

    Client keys own no keys: they get 404 for an unknown tenant and 403 otherwise.
    """
    tenant_for(slug, ctx)
    if ctx.is_client or ctx.user_id is None:
        raise Forbidden(
            "Client keys own no user keys; key management needs a user key of this tenant"
        )
    user = db.session.get(User, ctx.user_id)
    if user is None:
        raise NotFound("No such tenant")
    return user
