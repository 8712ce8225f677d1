"""`Keydesk(url, token)`: typed calls to a Keydesk's JSON API (/api/v1), with a user access
token (from `keydesk login`) or an API key holding keys:read / keys:write."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "CLIENT_ID",
    "DeviceCode",
    "Key",
    "Keydesk",
    "KeydeskError",
    "Me",
    "NewKey",
    "TokenGrant",
    "poll_for_token",
    "revoke_token",
    "start_device_flow",
]

CLIENT_ID = "keydesk-cli"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "keydesk-client/0.1"


class KeydeskError(Exception):
    """Any refusal or failure: `error` is Keydesk's (or OAuth's) code, `error_description`
    the sentence to show; `status` the HTTP status (None when Keydesk was not reached)."""

    def __init__(self, error: str, error_description: str, status: int | None = None) -> None:
        self.error = error
        self.error_description = error_description
        self.status = status
        super().__init__(f"{error_description} ({error})")


@dataclass(frozen=True)
class Key:
    id: str
    name: str
    scopes: list[str]
    created_at: int
    expires_at: int | None
    last_used: int | None
    revoked: bool
    status: str | None = None
    description: str | None = None
    allowed_ips: list[str] | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict) -> Key:
        return cls(
            id=data["id"],
            name=data["name"],
            scopes=list(data.get("scopes") or []),
            created_at=data.get("created_at"),
            expires_at=data.get("expires_at"),
            last_used=data.get("last_used"),
            revoked=bool(data.get("revoked")),
            status=data.get("status"),
            description=data.get("description"),
            allowed_ips=data.get("allowed_ips"),
            raw={k: v for k, v in data.items() if k != "api_key"},
        )


@dataclass(frozen=True)
class NewKey:
    """A created or rotated key: `api_key` is the full secret, shown this once."""

    key: Key
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class Me:
    key_id: str
    kind: str | None  # "user" | "client" | "user_token"
    scopes: list[str]
    expires_at: int | None
    email: str | None
    role: str | None
    tenant_slug: str | None
    tenant_name: str | None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict) -> Me:
        key, user, tenant = data.get("key") or {}, data.get("user") or {}, data.get("tenant") or {}
        return cls(
            key_id=key.get("id"),
            kind=key.get("kind"),
            scopes=list(key.get("scopes") or []),
            expires_at=key.get("expires_at"),
            email=user.get("email"),
            role=user.get("role"),
            tenant_slug=tenant.get("slug"),
            tenant_name=tenant.get("name"),
            raw=data,
        )


def _answer(response: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; KeydeskError with Keydesk's own words otherwise."""
    try:
        data = response.json() if response.content else None
    except ValueError:
        data = None
    if response.is_success:
        return data
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        raise KeydeskError(
            data["error"], str(data.get("error_description") or data["error"]), response.status_code
        )
    raise KeydeskError(
        "http_error", f"Keydesk answered HTTP {response.status_code}", response.status_code
    )


def _request(client: httpx.Client, method: str, url: str, **kwargs) -> Any:
    try:
        response = client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise KeydeskError("unreachable", f"Cannot reach Keydesk: {exc}") from None
    return _answer(response)


class Keydesk:
    """The key-management API. `token`: a user access token (`kdu_...`) or an API key."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT},
            timeout=timeout,
            transport=transport,
        )
        self._tenant: str | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Keydesk:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        return _request(self._client, method, path, **kwargs)

    def me(self) -> Me:
        me = Me.from_json(self._call("GET", "/me"))
        self._tenant = self._tenant or me.tenant_slug
        return me

    @property
    def tenant(self) -> str:
        """The caller's tenant slug (what the key-management paths name)."""
        if self._tenant is None:
            slug = self.me().tenant_slug
            if slug is None:
                raise KeydeskError("invalid_request", "A client key owns no keys to manage")
            self._tenant = slug
        return self._tenant

    def _keys(self, suffix: str = "") -> str:
        return f"/tenant/{self.tenant}/api-keys{suffix}"

    def list_keys(self) -> list[Key]:
        return [Key.from_json(item) for item in self._call("GET", self._keys("/list"))]

    def get_key(self, key_id: str) -> Key:
        return Key.from_json(self._call("GET", self._keys(f"/{_segment(key_id)}")))

    def create_key(
        self,
        name: str,
        scopes: Iterable[str],
        *,
        expires_in_days: int = 0,
        description: str | None = None,
        allowed_ips: Iterable[str] | None = None,
    ) -> NewKey:
        body: dict[str, Any] = {
            "name": name,
            "scopes": list(scopes),
            "expires_in_days": expires_in_days,
        }
        if description is not None:
            body["description"] = description
        if allowed_ips is not None:
            body["allowed_ips"] = list(allowed_ips)
        data = self._call("POST", self._keys("/create"), json=body)
        return NewKey(Key.from_json(data), data["api_key"])

    def edit_key(
        self,
        key_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        scopes: Iterable[str] | None = None,
        expires_at: int | None | type[...] = ...,
        allowed_ips: Iterable[str] | None = None,
    ) -> Key:
        """PATCH the given fields (expires_at: Unix seconds, or None for never)."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if description is not None:
            body["description"] = description
        if scopes is not None:
            body["scopes"] = list(scopes)
        if expires_at is not ...:
            body["expires_at"] = expires_at
        if allowed_ips is not None:
            body["allowed_ips"] = list(allowed_ips)
        if not body:
            raise KeydeskError("invalid_request", "Nothing to change")
        return Key.from_json(self._call("PATCH", self._keys(f"/{_segment(key_id)}"), json=body))

    def rotate_key(self, key_id: str, *, grace_hours: int = 24) -> NewKey:
        data = self._call(
            "POST", self._keys(f"/{_segment(key_id)}/rotate"), json={"grace_hours": grace_hours}
        )
        return NewKey(Key.from_json(data), data["api_key"])

    def revoke_key(self, key_id: str) -> None:
        self._call("POST", self._keys(f"/{_segment(key_id)}/revoke"))


def _segment(value: str) -> str:
    """A key id as one path segment: ids are base62, so anything else cannot be one."""
    if not isinstance(value, str) or not value.isalnum() or not value.isascii():
        raise KeydeskError("not_found", f"No such key: {str(value)[:40]}", 404)
    return value


# --- signing in: the device authorization grant (RFC 8628) -----------------------------


@dataclass(frozen=True)
class DeviceCode:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


@dataclass(frozen=True)
class TokenGrant:
    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str


def _oauth_client(url: str, timeout: float, transport) -> httpx.Client:
    return httpx.Client(
        base_url=url.rstrip("/") + "/api/v1/oauth",
        headers={"User-Agent": USER_AGENT},
        timeout=timeout,
        transport=transport,
    )


def start_device_flow(
    url: str, *, timeout: float = DEFAULT_TIMEOUT, transport=None, scope: str | None = None
) -> DeviceCode:
    data = {"client_id": CLIENT_ID}
    if scope:
        data["scope"] = scope
    with _oauth_client(url, timeout, transport) as client:
        body = _request(client, "POST", "/device_authorization", data=data)
    return DeviceCode(**{name: body[name] for name in DeviceCode.__dataclass_fields__})


def poll_for_token(
    url: str,
    code: DeviceCode,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    transport=None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> TokenGrant:
    """Wait for the user to approve, polling no faster than `interval` (plus 5 seconds on
    each slow_down, as RFC 8628 section 3.5 asks). KeydeskError on denial or expiry."""
    interval = max(1, int(code.interval))
    deadline = clock() + code.expires_in
    with _oauth_client(url, timeout, transport) as client:
        while True:
            sleep(interval)
            if clock() > deadline:
                raise KeydeskError("expired_token", "The sign-in code expired; run login again")
            try:
                body = _request(
                    client,
                    "POST",
                    "/token",
                    data={
                        "grant_type": DEVICE_GRANT,
                        "device_code": code.device_code,
                        "client_id": CLIENT_ID,
                    },
                )
            except KeydeskError as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += 5
                    continue
                raise
            return TokenGrant(
                access_token=body["access_token"],
                token_type=body["token_type"],
                expires_in=body["expires_in"],
                scope=body.get("scope", ""),
            )


def revoke_token(url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT, transport=None) -> None:
    """End a user access token at the server (RFC 7009)."""
    with _oauth_client(url, timeout, transport) as client:
        _request(client, "POST", "/revoke", data={"client_id": CLIENT_ID, "token": token})
