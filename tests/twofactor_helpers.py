"""Helpers for the second-factor tests: TOTP codes computed from the secret a page shows, and
a software WebAuthn authenticator (P-256, "none" attestation) that answers the options the
server sends exactly as a browser and a platform authenticator would. The real browser
ceremony is tested in tests/e2e/test_twofactor.py with Chromium's virtual authenticator."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

import cbor2
import pyotp
from bs4 import BeautifulSoup
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import PASSWORD, login


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def page_secret(html: str) -> str:
    node = BeautifulSoup(html, "html.parser").find(id="totp-secret")
    assert node is not None, "no #totp-secret on the page"
    return node.get_text(strip=True)


def recovery_codes(html: str) -> list[str]:
    soup = BeautifulSoup(html, "html.parser")
    return [n.get_text(strip=True) for n in soup.select(".recovery-code")]


def code_at(secret: str, unix: float) -> str:
    return pyotp.TOTP(secret).at(int(unix))


def enable_totp(client) -> tuple[str, list[str]]:
    """Through the pages: GET /account/2fa, then POST the current code. Returns the secret
    and the ten recovery codes shown."""
    import time

    secret = page_secret(client.get("/account/2fa").get_data(as_text=True))
    response = client.post("/account/2fa", data={"code": code_at(secret, time.time())})
    assert response.status_code == 200, response.get_data(as_text=True)
    codes = recovery_codes(response.get_data(as_text=True))
    assert len(codes) == 10
    return secret, codes


def password_step(client, email="alice@example.com", password=PASSWORD):
    response = login(client, email, password)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/login/2fa"), response.headers["Location"]
    return response


@dataclass
class SoftAuthenticator:
    """One passkey on a software authenticator: user presence and verification always on."""

    origin: str = "http://localhost"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    credential_id: bytes = field(default_factory=lambda: os.urandom(32))
    sign_count: int = 0
    user_handle: bytes | None = None

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {
                "type": kind,
                "challenge": challenge,
                "origin": origin or self.origin,
                "crossOrigin": False,
            }
        ).encode()

    def create(self, options: dict, *, origin: str | None = None) -> dict:
        """Answer PublicKeyCredentialCreationOptions (navigator.credentials.create)."""
        rp_id = options["rp"]["id"]
        self.user_handle = unb64url(options["user"]["id"])
        attested = (
            b"\x00" * 16
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose_key()
        )
        auth_data = (
            hashlib.sha256(rp_id.encode()).digest()
            + bytes([0x45])
            + struct.pack(">I", 0)
            + attested
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["internal"],
            },
        }

    def get(self, options: dict, *, origin: str | None = None, rp_id: str | None = None) -> dict:
        """Answer PublicKeyCredentialRequestOptions (navigator.credentials.get)."""
        self.sign_count += 1
        rp = rp_id or options.get("rpId") or "localhost"
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([0x05])
            + struct.pack(">I", self.sign_count)
        )
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        signature = self.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(self.user_handle) if self.user_handle else None,
            },
        }


HOST = {"base_url": "http://localhost"}


def register_passkey(client, authenticator: SoftAuthenticator, name: str = "Laptop"):
    options = client.post("/account/passkeys/options", json={}, **HOST)
    assert options.status_code == 200, options.get_data(as_text=True)
    credential = authenticator.create(options.get_json())
    return client.post("/account/passkeys", json={"credential": credential, "name": name}, **HOST)
