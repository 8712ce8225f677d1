"""Second factors: TOTP (RFC 6238, 6 digits, 30 s) with single-use recovery codes, and the
questions every page asks ("has this user a second factor?", "is this code right?").
Passkeys live in app/accounts/passkeys.py. The caller commits.

- The TOTP seed is sealed with app/secretbox.py (AES-GCM, key from KEYDESK_SECRET_KEY): the
  server must read it back to compute codes, so a digest cannot do.
- Each code is accepted once: the factor keeps the last accepted time step, and only a later
  step passes (one conditional UPDATE, so two concurrent requests cannot both use it).
- Recovery codes are only ever compared: a keyed HMAC-SHA256 of each is stored (key derived
  from KEYDESK_KEY_PEPPER), bound to its user, and "used" is one conditional UPDATE as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

import pyotp
import segno
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import delete, func, or_, select, update

from app import audit, secretbox
from app.accounts import sessions
from app.audit import Actor
from app.clock import to_unix
from app.errors import Conflict, InvalidInput
from app.extensions import db
from app.models import Passkey, RecoveryCode, TotpFactor, User

ISSUER = "Keydesk"
STEP_SECONDS = 30
DIGITS = 6
# Codes of the step before and after the current one pass too: clocks drift, people type slowly.
DRIFT_STEPS = 1
SEAL_PURPOSE = "totp"
RECOVERY_CODE_COUNT = 10
# 32 symbols (5 bits each) without the look-alikes l, o, 0 and 1; 10 symbols = 50 bits.
RECOVERY_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
RECOVERY_LENGTH = 10
MAX_CODE_INPUT = 64

WRONG_CODE = "That code is not right. Enter the current 6-digit code from your app."
MALFORMED_CODE = (
    "Enter the 6-digit code from your authenticator app, or one of your recovery codes."
)
REUSED_CODE = "That code was already used. Wait for the next one in your app."
UNREADABLE = (
    "Your authenticator app cannot be checked since the server's secret key changed. "
    "Use a recovery code or a passkey, then set up the app again."
)
USED_RECOVERY_CODE = "That recovery code was already used. Each one works once."


# --- questions -----------------------------------------------------------------------


def totp_factor(user: User) -> TotpFactor | None:
    return db.session.get(TotpFactor, user.id)


def has_totp(user: User) -> bool:
    return totp_factor(user) is not None


def has_second_factor(user: User) -> bool:
    """TOTP or at least one passkey."""
    if has_totp(user):
        return True
    found = db.session.execute(select(Passkey.id).where(Passkey.user_id == user.id).limit(1))
    return found.first() is not None


def users_with_second_factor(*, tenant_id: int) -> set[int]:
    """Ids of the tenant's users who have a second factor (the members page)."""
    totp = select(TotpFactor.user_id).join(User, User.id == TotpFactor.user_id)
    keys = select(Passkey.user_id).join(User, User.id == Passkey.user_id)
    rows = db.session.execute(
        totp.where(User.tenant_id == tenant_id).union(keys.where(User.tenant_id == tenant_id))
    ).scalars()
    return set(rows)


def must_enroll(user: User) -> bool:
    """Tenant policy `require_2fa`: a member without a second factor must set one up first.
    Admins are not held back (SPEC: "a member"), so the policy can never lock a tenant out of
    its own settings; the admin page tells them to set theirs up."""
    return bool(user.tenant.require_2fa) and user.role == "member" and not has_second_factor(user)


def recovery_codes_left(user: User) -> int:
    return db.session.execute(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
    ).scalar_one()


# --- TOTP ----------------------------------------------------------------------------


def new_secret() -> str:
    """160 random bits in base32 (RFC 4226's recommended length), as apps expect them."""
    return pyotp.random_base32(32)


def provisioning_uri(*, secret: str, email: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=email, issuer_name=ISSUER
    )


def qr_svg(uri: str) -> str:
    """The otpauth:// URI as an inline SVG QR code (dark on white, so it scans in dark mode)."""
    return segno.make(uri, error="m").svg_inline(
        scale=5, dark="#000", light="#fff", title="QR code for your authenticator app"
    )


def time_step(now: datetime) -> int:
    return to_unix(now) // STEP_SECONDS


def _digits(code: object) -> str | None:
    """A 6-digit code as typed ("123 456", " 123456 "), or None."""
    if not isinstance(code, str):
        return None
    compact = code.replace(" ", "").replace("\u00a0", "").strip()
    if len(compact) == DIGITS and compact.isascii() and compact.isdigit():
        return compact
    return None


def matching_step(secret: str, code: str, *, now: datetime) -> int | None:
    """The time step (within the drift window) whose code equals `code`, else None.
    Every candidate is compared in constant time."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = time_step(now)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def check_enrollment_code(secret: str, code: object, *, now: datetime) -> int:
    """The step of a right code for a secret being set up; InvalidInput(field="code") else."""
    digits = _digits(code)
    if digits is None:
        raise InvalidInput(
            "Enter the 6-digit code your authenticator app shows for Keydesk.", field="code"
        )
    step = matching_step(secret, digits, now=now)
    if step is None:
        raise InvalidInput(
            "That code does not match the key on this page. If you reloaded the page, scan "
            "the new QR code; check that your phone's clock is right.",
            field="code",
        )
    return step


def enable_totp(*, user: User, secret: str, code: object, now: datetime, actor: Actor) -> list[str]:
    """Turn TOTP on after the user proved their app has `secret`; returns the ten recovery
    codes, to be shown once. The confirming code is no sign-in, so it is not spent: the
    first sign-in may use the code the app still shows (what people do right after set-up);
    from then on each code is accepted once."""
    if has_totp(user):
        raise Conflict("Two-factor authentication is already on for this account.")
    check_enrollment_code(secret, code, now=now)
    db.session.add(
        TotpFactor(
            user_id=user.id,
            secret_sealed=secretbox.seal(secret, purpose=SEAL_PURPOSE),
            enabled_at=now,
            last_used_step=None,
        )
    )
    codes = _replace_recovery_codes(user=user, now=now)
    audit.record_for_user(
        "2fa.totp_enabled", user=user, actor=actor, now=now, recovery_codes=len(codes)
    )
    return codes


def disable_totp(*, user: User, now: datetime, actor: Actor) -> bool:
    """Turn TOTP off; its recovery codes go with it. False if it was not on."""
    removed = db.session.execute(delete(TotpFactor).where(TotpFactor.user_id == user.id))
    if not removed.rowcount:
        return False
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    audit.record_for_user("2fa.totp_disabled", user=user, actor=actor, now=now)
    return True


def _accept_totp(user: User, factor: TotpFactor, digits: str, *, now: datetime) -> None:
    try:
        secret = secretbox.unseal(factor.secret_sealed, purpose=SEAL_PURPOSE)
    except secretbox.SecretUnreadable:
        # Sealed under an earlier KEYDESK_SECRET_KEY: no code can match any more.
        raise InvalidInput(UNREADABLE, field="code") from None
    step = matching_step(secret, digits, now=now)
    if step is None:
        raise InvalidInput(WRONG_CODE, field="code")
    # Only a step later than the last accepted one: a replayed code (or an older code of
    # the window, once a newer one was used) is refused. Conditional, so of two requests
    # racing with the same code exactly one wins.
    won = db.session.execute(
        update(TotpFactor)
        .where(
            TotpFactor.user_id == user.id,
            or_(TotpFactor.last_used_step.is_(None), TotpFactor.last_used_step < step),
        )
        .values(last_used_step=step)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:
        raise InvalidInput(REUSED_CODE, field="code")
    db.session.expire(factor)


# --- recovery codes ------------------------------------------------------------------


def _digest_key() -> bytes:
    # From the pepper, not KEYDESK_SECRET_KEY: rotating the session key (which makes sealed
    # TOTP seeds unreadable) must leave the recovery codes working, as the way back in.
    secret = current_app.config["KEYDESK_KEY_PEPPER"]
    material = secret.encode() if isinstance(secret, str) else bytes(secret)
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"keydesk:recovery-code"
    ).derive(material)


def _recovery_digest(user_id: int, normalized: str) -> str:
    # Keyed and bound to the user: a copy of the database alone cannot test guesses offline,
    # and one user's code is worth nothing for another account.
    message = f"{user_id}:{normalized}".encode()
    return hmac.new(_digest_key(), message, hashlib.sha256).hexdigest()


def _normalize_recovery(code: object) -> str | None:
    if not isinstance(code, str) or len(code) > MAX_CODE_INPUT:
        return None
    compact = code.strip().lower().replace("-", "").replace(" ", "")
    if len(compact) == RECOVERY_LENGTH and all(c in RECOVERY_ALPHABET for c in compact):
        return compact
    return None


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def _replace_recovery_codes(*, user: User, now: datetime) -> list[str]:
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    db.session.add_all(
        RecoveryCode(
            user_id=user.id,
            digest=_recovery_digest(user.id, _normalize_recovery(code)),
            created_at=now,
        )
        for code in codes
    )
    db.session.flush()
    return codes


def regenerate_recovery_codes(*, user: User, now: datetime, actor: Actor) -> list[str]:
    """Ten new codes (shown once); the old ones stop working."""
    if not has_totp(user):
        raise Conflict("Turn on two-factor authentication first.")
    codes = _replace_recovery_codes(user=user, now=now)
    audit.record_for_user(
        "2fa.recovery_codes_generated", user=user, actor=actor, now=now, count=len(codes)
    )
    return codes


def _accept_recovery_code(user: User, normalized: str, *, now: datetime) -> None:
    digest = _recovery_digest(user.id, normalized)
    used = db.session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.digest == digest,
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if used.rowcount == 1:
        return
    spent = db.session.execute(
        select(RecoveryCode.id).where(
            RecoveryCode.user_id == user.id, RecoveryCode.digest == digest
        )
    ).first()
    raise InvalidInput(USED_RECOVERY_CODE if spent else WRONG_CODE, field="code")


# --- one entry point for sign-in and sudo ----------------------------------------------


def verify_code(user: User, code: object, *, now: datetime) -> str:
    """Accept a current TOTP code or an unused recovery code of `user`, and spend it.
    Returns the method ("totp" or "recovery_code"); raises InvalidInput(field="code") for a
    wrong, reused or malformed code. Used by /login/2fa and /sudo alike."""
    if not isinstance(code, str) or not code.strip() or len(code) > MAX_CODE_INPUT:
        raise InvalidInput(MALFORMED_CODE, field="code")
    factor = totp_factor(user)
    if factor is None:
        raise InvalidInput("This account has no authenticator app set up.", field="code")
    digits = _digits(code)
    if digits is not None:
        _accept_totp(user, factor, digits, now=now)
        return "totp"
    normalized = _normalize_recovery(code)
    if normalized is None:
        raise InvalidInput(MALFORMED_CODE, field="code")
    _accept_recovery_code(user, normalized, now=now)
    return "recovery_code"


# --- operators -------------------------------------------------------------------------


def reset_second_factors(*, user: User, now: datetime, actor: Actor) -> dict[str, int]:
    """Remove TOTP, recovery codes and passkeys (`users reset-2fa`), and end the user's
    sessions. Returns what was removed, by kind."""
    removed = {
        "totp": db.session.execute(
            delete(TotpFactor).where(TotpFactor.user_id == user.id)
        ).rowcount,
        "recovery_codes": db.session.execute(
            delete(RecoveryCode).where(RecoveryCode.user_id == user.id)
        ).rowcount,
        "passkeys": db.session.execute(delete(Passkey).where(Passkey.user_id == user.id)).rowcount,
    }
    sessions.end_user_sessions(user=user, reason="2fa_reset", now=now)
    audit.record_for_user("2fa.reset", user=user, actor=actor, now=now, **removed)
    return removed
