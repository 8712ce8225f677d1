"""Passkeys (WebAuthn, through py_webauthn): register several, name and remove them, and use
one as a second factor or as a whole sign-in. The caller commits, and keeps the challenge
between the two halves of each ceremony (the portal keeps it in the session, single use).

Only the credential's public key, its id and its signature counter are stored: a copy of
the database cannot sign in. The relying party id is the site's host name (no port), which
WebAuthn requires to be a registrable domain or "localhost", never an IP address.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import func, select, update
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from app import audit
from app.audit import Actor
from app.errors import InvalidInput, NotFound
from app.extensions import db
from app.models import Passkey, User

MAX_PASSKEYS = 20
MAX_NAME = 100
TIMEOUT_MS = 120_000
# What malformed client JSON can raise inside py_webauthn besides its own exceptions
# (base64 and CBOR decoding, enum lookups on unexpected values).
_BAD_INPUT = (WebAuthnException, ValueError, TypeError, KeyError, IndexError, OverflowError)

UNKNOWN_PASSKEY = "This passkey is not registered for this account. Try another one."
REFUSED = "The passkey's answer could not be verified. Try again."


@dataclass(frozen=True)
class RelyingParty:
    id: str  # host name, e.g. "keydesk.example.com" or "localhost"
    origin: str  # scheme://host[:port] the browser reports, e.g. "http://localhost:5000"
    name: str = "Keydesk"


# --- names -----------------------------------------------------------------------------

_INVISIBLE = set("\u200b\u200c\u200d\u2060\ufeff\u200e\u200f") | {
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def clean_name(name: object) -> str:
    """1-100 visible characters: no control, bidirectional or zero-width characters."""
    if not isinstance(name, str):
        raise InvalidInput("Give the passkey a name (1 to 100 characters).", field="name")
    # Only spaces are trimmed: str.strip() would quietly drop controls such as U+0085.
    name = name.strip(" ")
    if not 1 <= len(name) <= MAX_NAME:
        raise InvalidInput("Give the passkey a name of 1 to 100 characters.", field="name")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in _INVISIBLE or 0x7F <= ord(ch) <= 0x9F:
            raise InvalidInput(
                "A passkey name may not hold control, invisible or direction characters.",
                field="name",
            )
    return name


# --- lookups ---------------------------------------------------------------------------


def list_passkeys(user: User) -> list[Passkey]:
    return list(
        db.session.execute(
            select(Passkey).where(Passkey.user_id == user.id).order_by(Passkey.created_at)
        ).scalars()
    )


def get_passkey(*, user: User, passkey_id: int) -> Passkey:
    """The user's own passkey; another user's (or none) is NotFound, alike."""
    if not 0 < passkey_id < 2**31:
        raise NotFound("No such passkey")
    row = db.session.get(Passkey, passkey_id)
    if row is None or row.user_id != user.id:
        raise NotFound("No such passkey")
    return row


def _user_handle(user: User) -> str:
    """One handle per user (what a discoverable passkey hands back): the one their passkeys
    already carry, else derived from the user id with a server key, so the options and the
    stored row agree without keeping it anywhere in between. Not the email nor the bare
    database id, as WebAuthn advises."""
    existing = db.session.execute(
        select(Passkey.user_handle).where(Passkey.user_id == user.id).limit(1)
    ).scalar()
    if existing:
        return existing
    secret = current_app.config["SECRET_KEY"]
    key = hashlib.sha256(b"keydesk:webauthn-user-handle:" + _as_bytes(secret)).digest()
    return bytes_to_base64url(hmac.new(key, str(user.id).encode(), hashlib.sha256).digest())


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


# --- registration ----------------------------------------------------------------------


def registration_options(*, user: User, rp: RelyingParty) -> tuple[str, bytes]:
    """The PublicKeyCredentialCreationOptions as JSON, and the challenge to keep."""
    existing = list_passkeys(user)
    if len(existing) >= MAX_PASSKEYS:
        raise InvalidInput(
            f"You have {MAX_PASSKEYS} passkeys already; remove one first.", field="passkey"
        )
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_name=user.email,
        user_display_name=user.email,
        user_id=base64url_to_bytes(_user_handle(user)),
        timeout=TIMEOUT_MS,
        # Resident (discoverable) so the same passkey also signs in without an email.
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[_descriptor(p) for p in existing],
    )
    return options_to_json(options), options.challenge


def finish_registration(
    *,
    user: User,
    rp: RelyingParty,
    credential: object,
    challenge: bytes,
    name: object,
    now: datetime,
    actor: Actor,
) -> Passkey:
    name = clean_name(name)
    payload = _as_json(credential)
    try:
        parsed = parse_registration_credential_json(payload)
        verified = verify_registration_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            require_user_verification=True,
        )
    except _BAD_INPUT:
        raise InvalidInput(
            "The passkey could not be registered: its answer did not check out.",
            field="passkey",
        ) from None
    credential_id = bytes_to_base64url(verified.credential_id)
    taken = db.session.execute(
        select(Passkey.id).where(Passkey.credential_id == credential_id)
    ).first()
    if taken:
        raise InvalidInput("This passkey is registered already.", field="passkey")
    transports = " ".join(
        t.value for t in (parsed.response.transports or []) if isinstance(t, AuthenticatorTransport)
    )
    row = Passkey(
        user_id=user.id,
        credential_id=credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        user_handle=_user_handle(user),
        transports=transports or None,
        name=name,
        created_at=now,
    )
    db.session.add(row)
    db.session.flush()
    audit.record_for_user("2fa.passkey_added", user=user, actor=actor, now=now, passkey=name)
    return row


# --- authentication --------------------------------------------------------------------


def authentication_options(
    *, rp: RelyingParty, user: User | None = None, verify_user: bool | None = None
) -> tuple[str, bytes]:
    """Options for navigator.credentials.get: for `user`'s passkeys (second factor, sudo) or,
    without a user, for any discoverable passkey of this site (passwordless sign-in).
    `verify_user` asks for user verification (PIN or biometrics); by default only without a
    user, where the passkey stands for both factors."""
    allow = [_descriptor(p) for p in list_passkeys(user)] if user is not None else None
    if verify_user is None:
        verify_user = user is None
    options = generate_authentication_options(
        rp_id=rp.id,
        timeout=TIMEOUT_MS,
        allow_credentials=allow,
        user_verification=UserVerificationRequirement.REQUIRED
        if verify_user
        else UserVerificationRequirement.PREFERRED,
    )
    return options_to_json(options), options.challenge


def finish_authentication(
    *,
    rp: RelyingParty,
    credential: object,
    challenge: bytes,
    now: datetime,
    user: User | None = None,
    verify_user: bool | None = None,
) -> tuple[User, Passkey]:
    """Check an assertion against `challenge`; returns the passkey's owner and the passkey.
    With `user`, the passkey must be theirs. A passwordless sign-in (no `user`) requires user
    verification (PIN or biometrics): the passkey is then both factors at once; so does
    `verify_user=True` (sudo mode by passkey alone)."""
    if verify_user is None:
        verify_user = user is None
    payload = _as_json(credential)
    try:
        parsed = parse_authentication_credential_json(payload)
        credential_id = bytes_to_base64url(parsed.raw_id)
    except _BAD_INPUT:
        raise InvalidInput(REFUSED, field="passkey") from None
    row = db.session.execute(
        select(Passkey).where(Passkey.credential_id == credential_id[:1400])
    ).scalar_one_or_none()
    if row is None or (user is not None and row.user_id != user.id):
        raise InvalidInput(UNKNOWN_PASSKEY, field="passkey")
    owner = db.session.get(User, row.user_id)
    if owner is None or not owner.is_active:
        raise InvalidInput(UNKNOWN_PASSKEY, field="passkey")
    handle = parsed.response.user_handle
    if handle is not None and bytes_to_base64url(handle) != row.user_handle:
        raise InvalidInput(UNKNOWN_PASSKEY, field="passkey")
    try:
        verified = verify_authentication_response(
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=row.public_key,
            credential_current_sign_count=row.sign_count,
            require_user_verification=verify_user,
        )
    except _BAD_INPUT:
        raise InvalidInput(REFUSED, field="passkey") from None
    # Conditional on the counter read above: of two requests racing with one assertion,
    # one moves the counter and the other is refused.
    moved = db.session.execute(
        update(Passkey)
        .where(Passkey.id == row.id, Passkey.sign_count == row.sign_count)
        .values(sign_count=verified.new_sign_count, last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:
        raise InvalidInput(REFUSED, field="passkey")
    db.session.expire(row)
    return owner, row


# --- management ------------------------------------------------------------------------


def rename_passkey(
    *, user: User, passkey_id: int, name: object, now: datetime, actor: Actor
) -> Passkey:
    row = get_passkey(user=user, passkey_id=passkey_id)
    new = clean_name(name)
    if new != row.name:
        old, row.name = row.name, new
        audit.record_for_user(
            "2fa.passkey_renamed", user=user, actor=actor, now=now, before=old, after=new
        )
    return row


def remove_passkey(*, user: User, passkey_id: int, now: datetime, actor: Actor) -> str:
    row = get_passkey(user=user, passkey_id=passkey_id)
    name = row.name
    db.session.delete(row)
    db.session.flush()
    audit.record_for_user("2fa.passkey_removed", user=user, actor=actor, now=now, passkey=name)
    return name


def passkey_count(user: User) -> int:
    return db.session.execute(
        select(func.count()).select_from(Passkey).where(Passkey.user_id == user.id)
    ).scalar_one()


# --- helpers ---------------------------------------------------------------------------


def _descriptor(row: Passkey) -> PublicKeyCredentialDescriptor:
    transports = []
    for value in (row.transports or "").split():
        try:
            transports.append(AuthenticatorTransport(value))
        except ValueError:
            continue
    return PublicKeyCredentialDescriptor(
        id=base64url_to_bytes(row.credential_id), transports=transports or None
    )


def _as_json(credential: object) -> dict:
    """The browser's credential as a dict; anything else is a clear refusal."""
    if isinstance(credential, str):
        try:
            credential = json.loads(credential)
        except ValueError:
            credential = None
    if not isinstance(credential, dict):
        raise InvalidInput("The passkey's answer was not understood.", field="passkey")
    return credential
