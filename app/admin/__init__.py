"""/admin/*: tenant admins review keys, policy, members and the audit log."""

from flask import Blueprint, abort
from flask_login import current_user, login_required

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
@login_required
def _admins_only() -> None:
    if not current_user.is_admin:
        abort(403)


from app.admin import routes, sso  # noqa: E402,F401
