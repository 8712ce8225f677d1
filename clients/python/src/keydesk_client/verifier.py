"""`KeyVerifier`: for a service that lets Keydesk decide whether an API key is good.

    verifier = KeyVerifier("https://keys.example.com", client_key)
    result = verifier.verify(token)        # Verification(valid=..., scopes=..., ...)

    @app.get("/deploy")
    @verifier.require_key("deploy:production")
    def deploy(): ...                       # flask.g.keydesk_key is the Verification

Each `verify` first checks the key's shape and CRC32 checksum locally: a mistyped or
random string is refused without a request. Otherwise it asks Keydesk's
POST /api/v1/keys/verify, with a client key (or a key holding keys:verify).

No positive cache by default, so a revoked key is refused by this service at once. With
`cache_seconds=N`, a key found valid is trusted for up to N seconds without asking again:
fewer requests and lower latency, at the price that a revocation (or a leak report)
reaches this service up to N seconds late. Refusals are never cached.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

import httpx

from keydesk_client._format import well_formed
from keydesk_client.api import USER_AGENT, KeydeskError, _request

__all__ = ["KeyVerifier", "Verification"]

SUPERSCOPE = "admin:all"
REALM = 'Bearer realm="keydesk"'
WORDS = {"expired": "API key has expired", "revoked": "API key has been revoked"}


@dataclass(frozen=True)
class Verification:
    valid: bool
    reason: str | None = None  # "invalid" | "expired" | "revoked" when not valid
    key_id: str | None = None
    owner: str | None = None
    tenant: str | None = None
    scopes: list[str] = field(default_factory=list)
    expires_at: int | None = None

    def has_scopes(self, *needed: str) -> bool:
        """admin:all satisfies every scope, as in Keydesk."""
        held = set(self.scopes)
        return self.valid and (SUPERSCOPE in held or set(needed) <= held)


class KeyVerifier:
    def __init__(
        self,
        url: str,
        client_key: str,
        *,
        cache_seconds: float = 0,
        timeout: float = 10.0,
        prefixes: Iterable[str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.cache_seconds = cache_seconds
        # e.g. ("kd",): refuse locally what cannot be one of this Keydesk's API keys.
        self.prefixes = tuple(prefixes) if prefixes is not None else None
        self._client = httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {client_key}", "User-Agent": USER_AGENT},
            timeout=timeout,
            transport=transport,
        )
        self._cache: dict[bytes, tuple[float, Verification]] = {}
        self._lock = threading.Lock()
        self.requests = 0  # how many times Keydesk was asked (for metrics and tests)

    def close(self) -> None:
        self._client.close()

    def verify(self, token: str) -> Verification:
        """Keydesk's verdict on `token`. KeydeskError when Keydesk cannot be asked (down,
        or the client key itself refused): never mistake that for an invalid key."""
        token = token.strip() if isinstance(token, str) else ""
        if not well_formed(token, self.prefixes):
            return Verification(valid=False, reason="invalid")
        # Keyed by a digest: the cache holds no usable key.
        slot = hashlib.sha256(token.encode()).digest()
        if self.cache_seconds > 0:
            with self._lock:
                hit = self._cache.get(slot)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        self.requests += 1
        data = _request(self._client, "POST", "/keys/verify", json={"key": token})
        result = Verification(
            valid=bool(data.get("valid")),
            reason=data.get("reason"),
            key_id=data.get("key_id"),
            owner=data.get("owner"),
            tenant=data.get("tenant"),
            scopes=list(data.get("scopes") or []),
            expires_at=data.get("expires_at"),
        )
        if result.valid and self.cache_seconds > 0:
            until = time.monotonic() + self.cache_seconds
            if result.expires_at is not None:  # never trust a key past its own expiry
                until = min(until, time.monotonic() + max(0, result.expires_at - time.time()))
            with self._lock:
                self._cache[slot] = (until, result)
                if len(self._cache) > 10_000:
                    self._cache.clear()
        return result

    def require_key(self, *scopes: str) -> Callable:
        """Flask view decorator: a valid key holding every scope in `scopes`, else an
        RFC 6750 JSON error (401 invalid_token, 403 insufficient_scope; 503 when Keydesk
        cannot be asked). The verdict is in `flask.g.keydesk_key`."""
        import flask

        def decorator(view: Callable) -> Callable:
            @wraps(view)
            def wrapper(*args: Any, **kwargs: Any):
                header = flask.request.headers.get("Authorization", "")
                scheme, _, token = header.partition(" ")
                if not header:
                    return _refuse(401, "invalid_request", "Missing Authorization: Bearer header")
                if scheme.lower() != "bearer" or not token.strip():
                    return _refuse(400, "invalid_request", "Use Authorization: Bearer <key>")
                try:
                    result = self.verify(token)
                except KeydeskError:
                    return _refuse(503, "temporarily_unavailable", "Cannot check keys right now")
                if not result.valid:
                    words = WORDS.get(result.reason, "Invalid API key")
                    return _refuse(401, "invalid_token", words)
                if not result.has_scopes(*scopes):
                    return _refuse(
                        403,
                        "insufficient_scope",
                        f"This request needs the scope {' '.join(scopes)}",
                        scope=" ".join(scopes),
                    )
                flask.g.keydesk_key = result
                return view(*args, **kwargs)

            return wrapper

        return decorator


def _refuse(status: int, error: str, description: str, scope: str = ""):
    import flask

    response = flask.jsonify(error=error, error_description=description)
    response.status_code = status
    if status in (401, 403):
        challenge = f'{REALM}, error="{error}", error_description="{description}"'
        if scope:
            challenge += f', scope="{scope}"'
        response.headers["WWW-Authenticate"] = challenge
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response
