"""/scim/v2: SCIM 2.0 for identity providers. JSON only, bearer token only.

Not a browser blueprint (app/__init__.py BROWSER_BLUEPRINTS): no cookie session is read
here (app/web.py gives /scim/ the null session, as /api/), so there is no ambient
credential a cross-site form could ride on and CSRF tokens do not apply; the bearer token
is the only credential. Every answer, errors included, is SCIM JSON."""

from __future__ import annotations

import json

from flask import Blueprint, Response, request, url_for

from app.clock import utcnow
from app.extensions import csrf, db
from app.net import client_ip
from app.sso import scim
from app.sso.scim import ScimError

bp = Blueprint("scim", __name__, url_prefix="/scim/v2")
csrf.exempt(bp)

CONTENT_TYPE = "application/scim+json"


def scim_response(body: dict | None, status: int = 200, **headers: str) -> Response:
    response = Response(
        json.dumps(body) if body is not None else "",
        status=status,
        content_type=CONTENT_TYPE if body is not None else None,
    )
    response.headers["Cache-Control"] = "no-store"
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def error_response(error: ScimError) -> Response:
    headers = {"WWW_Authenticate": 'Bearer realm="keydesk-scim"'} if error.status == 401 else {}
    return scim_response(error.body(), error.status, **headers)


@bp.errorhandler(ScimError)
def _scim_error(error: ScimError):
    db.session.rollback()
    return error_response(error)


def _base_url() -> str:
    return url_for("scim.users", _external=True).rsplit("/Users", 1)[0]


def _auth():
    now = utcnow()
    tenant, token = scim.authenticate(request.headers.get("Authorization"), now=now)
    ua = (request.user_agent.string or "")[:300] or None
    return tenant, scim.scim_actor(token, client_ip(), ua), now


def _json_body():
    if not request.is_json:
        raise ScimError(400, "Send application/scim+json", "invalidSyntax")
    try:
        return json.loads(request.get_data(cache=True).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ScimError(400, "The body is not valid JSON", "invalidSyntax") from None


def _user_response(identity, status: int = 200) -> Response:
    body = scim.resource(identity, base_url=_base_url())
    return scim_response(body, status, Location=body["meta"]["location"])


@bp.get("/Users", endpoint="users")
def list_users():
    tenant, _, now = _auth()
    page = scim.list_users(
        tenant=tenant,
        filter_text=request.args.get("filter"),
        start_index=request.args.get("startIndex"),
        count=request.args.get("count"),
        now=now,
    )
    base = _base_url()
    body = {
        "schemas": [scim.LIST_SCHEMA],
        "totalResults": page.total,
        "startIndex": page.start_index,
        "itemsPerPage": len(page.identities),
        "Resources": [scim.resource(i, base_url=base) for i in page.identities],
    }
    db.session.commit()  # SCIM ids handed out for the first time, the token's last use
    return scim_response(body)


@bp.post("/Users")
def create_user():
    tenant, actor, now = _auth()
    identity = scim.create_user(tenant=tenant, body=_json_body(), actor=actor, now=now)
    db.session.commit()
    return _user_response(identity, 201)


@bp.get("/Users/<scim_id>")
def get_user(scim_id: str):
    tenant, _, _ = _auth()
    identity = scim.get_identity(tenant=tenant, scim_id=scim_id)
    db.session.commit()
    return _user_response(identity)


@bp.put("/Users/<scim_id>")
def replace_user(scim_id: str):
    tenant, actor, now = _auth()
    identity = scim.get_identity(tenant=tenant, scim_id=scim_id)
    identity = scim.replace_user(identity=identity, body=_json_body(), actor=actor, now=now)
    db.session.commit()
    return _user_response(identity)


@bp.patch("/Users/<scim_id>")
def patch_user(scim_id: str):
    tenant, actor, now = _auth()
    identity = scim.get_identity(tenant=tenant, scim_id=scim_id)
    identity = scim.patch_user(identity=identity, body=_json_body(), actor=actor, now=now)
    db.session.commit()
    return _user_response(identity)


@bp.delete("/Users/<scim_id>")
def delete_user(scim_id: str):
    tenant, actor, now = _auth()
    identity = scim.get_identity(tenant=tenant, scim_id=scim_id)
    scim.delete_user(identity=identity, actor=actor, now=now)
    db.session.commit()
    return scim_response(None, 204)


@bp.get("/ServiceProviderConfig")
def service_provider_config():
    """What this server supports (RFC 7643 §5): providers read it when a connection is set up."""
    unsupported = {"supported": False}
    return scim_response(
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": {"supported": True},
            "bulk": {**unsupported, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": True, "maxResults": scim.MAX_COUNT},
            "changePassword": unsupported,
            "sort": unsupported,
            "etag": unsupported,
            "authenticationSchemes": [
                {
                    "type": "oauthbearertoken",
                    "name": "Bearer token",
                    "description": "The tenant's SCIM token from /admin/sso",
                    "primary": True,
                }
            ],
        }
    )
