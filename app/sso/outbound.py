"""Requests Keydesk makes to identity providers, guarded against SSRF.

A tenant admin types the issuer URL, so without a guard an admin could make the server
fetch http://127.0.0.1:6379/ or a cloud metadata address and read the answer back from
the error message. Unless the operator sets KEYDESK_SSO_ALLOW_PRIVATE_ISSUERS=true:

- only https:// URLs are fetched;
- every connection resolves the host itself, refuses it when any address it resolves
  to is not a public (global unicast) address, and connects to the checked address:
  no second DNS lookup between check and connect (DNS rebinding), and redirects get
  no way around it because each connection is checked, not the first URL;
- no redirect is followed at all, environment proxies are ignored (a proxy would make
  the connection, not us), every answer is size- and time-limited.

TLS still verifies the certificate against the host name: urllib3 wraps the socket with
the original host as the server name, whatever address it connected to.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

TIMEOUT = 5  # seconds, connect and read
MAX_BODY = 512 * 1024  # a discovery document or a JWKS is a few kB
MAX_URL_LENGTH = 500


class ProviderError(Exception):
    """The provider could not be reached or answered nonsense; the message says which, in
    words a tenant admin can act on (never an internal address)."""


class AddressNotAllowed(NewConnectionError):
    """The host resolves to an address that is not public."""


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Public unicast only: no loopback, private, link-local (cloud metadata), CGNAT,
    reserved, multicast or unspecified address, nor one hidden in an IPv4-mapped IPv6."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _checked_addresses(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    addresses = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not address_allowed(ip):
            raise ValueError(f"{host} resolves to a private or reserved address")
        addresses.append(str(ip))
    return list(dict.fromkeys(addresses))


class _GuardedConnectionMixin:
    def _new_conn(self) -> socket.socket:
        try:
            addresses = _checked_addresses(self._dns_host, self.port)
        except ValueError as exc:
            raise AddressNotAllowed(self, str(exc)) from None
        except socket.gaierror as exc:
            # Never fall back to urllib3's own lookup: it would connect unchecked.
            raise NameResolutionError(self.host, self, exc) from exc
        error: Exception | None = None
        for address in addresses:
            try:
                # An IP literal: create_connection's own getaddrinfo does no DNS lookup.
                return urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:
                error = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose every connection goes through the address check."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }

    def send(self, request, *args, **kwargs):
        if not (request.url or "").lower().startswith("https://"):
            raise requests.exceptions.InvalidURL("only https:// is allowed")
        return super().send(request, *args, **kwargs)


def session(*, allow_private: bool, cls: type[requests.Session] = requests.Session, **kwargs):
    """A requests session (or a subclass such as Authlib's OAuth2Session) for talking to
    identity providers: guarded unless the operator allows private issuers."""
    http = cls(**kwargs)
    http.trust_env = False  # no environment proxies, no .netrc credentials
    http.max_redirects = 0  # a redirect is an error, never followed
    if not allow_private:
        adapter = GuardedAdapter(max_retries=0)
        http.mount("https://", adapter)
        http.mount("http://", adapter)
    return http


def check_url(url: Any, *, allow_private: bool, what: str) -> str:
    """A URL we may fetch (or send a browser to): absolute, https:// unless private issuers
    are allowed, no credentials, no fragment. Returns it; raises ProviderError."""
    if not isinstance(url, str) or not url:
        raise ProviderError(f"{what} is missing")
    if len(url) > MAX_URL_LENGTH or any(ch <= " " or ch == "\x7f" for ch in url):
        raise ProviderError(f"{what} is not a usable URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ProviderError(f"{what} is not a usable URL") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise ProviderError(f"{what} must start with https://")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ProviderError(f"{what} must name a host, without a user name or password")
    if parts.fragment:
        raise ProviderError(f"{what} must not have a #fragment")
    if port == 0:
        raise ProviderError(f"{what} has no usable port")
    if not allow_private:
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            literal = None
        if literal is not None and not address_allowed(literal):
            raise ProviderError(f"{what} points to a private or reserved address")
    return url


def describe(exc: requests.RequestException, what: str) -> str:
    """What went wrong, for a tenant admin: no stack, no internal address."""
    reason = exc
    while reason is not None:
        if isinstance(reason, AddressNotAllowed):
            return f"{what}: the host resolves to a private or reserved address"
        reason = getattr(reason, "reason", None) or (reason.args[0] if reason.args else None)
        if not isinstance(reason, BaseException):
            break
    if isinstance(exc, requests.exceptions.SSLError):
        return f"{what}: its TLS certificate could not be verified"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"{what}: no answer within {TIMEOUT} seconds"
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return f"{what}: answered with a redirect; enter the final URL"
    if isinstance(exc, requests.exceptions.InvalidURL):
        return f"{what}: only https:// URLs are allowed"
    return f"{what}: could not connect"


@contextmanager
def _get(url: str, *, allow_private: bool, what: str) -> Iterator[requests.Response]:
    with session(allow_private=allow_private) as http:
        try:
            response = http.get(
                url,
                timeout=TIMEOUT,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json"},
            )
        except requests.RequestException as exc:
            raise ProviderError(describe(exc, what)) from None
        with response:
            yield response


def fetch_json(url: str, *, allow_private: bool, what: str) -> dict:
    """GET a JSON object (a discovery document, a JWKS) from a provider."""
    check_url(url, allow_private=allow_private, what=what)
    with _get(url, allow_private=allow_private, what=what) as response:
        if response.is_redirect:
            raise ProviderError(f"{what}: answered with a redirect; enter the final URL")
        if response.status_code != 200:
            raise ProviderError(f"{what}: answered HTTP {response.status_code}")
        try:
            body = response.raw.read(MAX_BODY + 1, decode_content=True)
        except (requests.RequestException, OSError, ValueError):
            raise ProviderError(f"{what}: the answer could not be read") from None
    if len(body) > MAX_BODY:
        raise ProviderError(f"{what}: the answer is larger than {MAX_BODY // 1024} kB")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProviderError(f"{what}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise ProviderError(f"{what}: the answer is not a JSON object")
    return data
