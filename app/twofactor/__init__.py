"""/account/2fa, passkeys and /login/2fa: second factors in the portal."""

from flask import Blueprint

bp = Blueprint("twofactor", __name__)

from app.twofactor import routes  # noqa: E402,F401
