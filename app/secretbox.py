"""Secrets Keydesk must read back (TOTP seeds, an identity provider's client secret):
AES-256-GCM with a key derived from KEYDESK_SECRET_KEY by HKDF, one subkey per purpose,
so a database copy alone reveals none of them. Digests, not this, protect what is only
ever compared (API keys, recovery codes, reset tokens)."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

_VERSION = b"\x01"


class SecretUnreadable(Exception):
    """The stored value was sealed under another key (KEYDESK_SECRET_KEY changed) or altered."""


def _key(purpose: str) -> bytes:
    secret = current_app.config["SECRET_KEY"]
    material = secret.encode() if isinstance(secret, str) else bytes(secret)
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"keydesk:" + purpose.encode()
    )
    return hkdf.derive(material)


def seal(plaintext: str, *, purpose: str) -> bytes:
    """Encrypt `plaintext`; `purpose` (e.g. "totp") binds it to one use."""
    nonce = os.urandom(12)
    sealed = AESGCM(_key(purpose)).encrypt(nonce, plaintext.encode(), purpose.encode())
    return _VERSION + nonce + sealed


def unseal(blob: bytes, *, purpose: str) -> str:
    if not blob or blob[:1] != _VERSION:
        raise SecretUnreadable("unknown format")
    try:
        plain = AESGCM(_key(purpose)).decrypt(blob[1:13], blob[13:], purpose.encode())
    except InvalidTag:
        raise SecretUnreadable("sealed under another key, or altered") from None
    return plain.decode()
