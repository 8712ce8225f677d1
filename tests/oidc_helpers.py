"""Identity providers for the SSO tests, both on free loopback ports:

- `RealProvider`: the npm package oidc-provider (a certified OpenID provider), started from
  tests/oidc/provider.mjs with one static client and its development login form;
- `CraftedProvider`: a small provider of our own whose token endpoint answers with the ID
  token a test made (wrong nonce, wrong aud, expired, alg none, re-signed...), signed with
  a test key, since a correct provider will not misbehave on request.

Without node or node_modules/oidc-provider the tests that need the real one skip, and fail
under CI=true (`make browser` runs npm ci).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_SCRIPT = ROOT / "tests" / "oidc" / "provider.mjs"
CLIENT_ID = "keydesk-test"
CLIENT_SECRET = "test-client-secret-0123456789"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RealProvider:
    """oidc-provider in a Node process; stop() ends it."""

    def __init__(self, redirect_uris: list[str]) -> None:
        node = shutil.which("node")
        if node is None or not (ROOT / "node_modules" / "oidc-provider").exists():
            service_missing("node or node_modules/oidc-provider is missing; `make browser`")
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "OIDC_PORT": str(self.port),
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_REDIRECT_URIS": " ".join(redirect_uris),
            "NODE_NO_WARNINGS": "1",
        }
        self.proc = subprocess.Popen(
            [node, str(PROVIDER_SCRIPT)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        output = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("ready "):
                # Keep reading its output so the pipe never fills and blocks the provider.
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        self.stop()
        raise RuntimeError("oidc-provider did not start:\n" + "".join(output))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action"), "fields": {}})
        elif tag == "input" and self.forms and attrs.get("name"):
            self.forms[-1]["fields"][attrs["name"]] = attrs.get("value") or ""


def sign_in_at_provider(authorize_url: str, login: str, *, stop_at: str) -> str:
    """Walk oidc-provider's development login form as a browser would (any login and
    password sign in) and return the URL it redirects back to (starting with `stop_at`)."""
    http = requests.Session()
    url, method, data = authorize_url, "GET", None
    for _ in range(12):
        response = http.request(method, url, data=data, allow_redirects=False, timeout=10)
        if response.is_redirect:
            url, method, data = urljoin(url, response.headers["Location"]), "GET", None
            if url.startswith(stop_at):
                return url
            continue
        assert response.status_code == 200, (response.status_code, response.text[:500])
        parser = _Forms()
        parser.feed(response.text)
        assert parser.forms, response.text[:500]
        form = parser.forms[0]
        fields = dict(form["fields"])
        if "login" in fields:
            fields.update(login=login, password="any password")
        url, method, data = urljoin(url, form["action"]), "POST", fields
    raise AssertionError("the provider never redirected back")


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class CraftedProvider:
    """Discovery, JWKS and a token endpoint on a loopback port; `id_token` is what the next
    token request gets. `hits` counts requests per path."""

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})
        self.published = [self.key]
        self.id_token: str | None = None
        self.discovery_override: dict | None = None
        self.raw_discovery: tuple[int, bytes, dict] | None = None
        self.token_requests: list[dict] = []
        self.userinfo: dict | None = None
        self.hits: dict[str, int] = {}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                self.send_response(status)
                for name, value in (headers or {"Content-Type": "application/json"}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = urlsplit(self.path).path
                provider.hits[path] = provider.hits.get(path, 0) + 1
                if path == "/.well-known/openid-configuration":
                    if provider.raw_discovery:
                        status, body, headers = provider.raw_discovery
                        return self._send(status, body, headers)
                    return self._send(200, json.dumps(provider.discovery()).encode())
                if path == "/me":
                    if provider.userinfo is None:
                        return self._send(401, b"{}")
                    return self._send(200, json.dumps(provider.userinfo).encode())
                if path == "/jwks":
                    keys = KeySet(provider.published).as_dict(private=False)
                    return self._send(200, json.dumps(keys).encode())
                self._send(404, b"{}")

            def do_POST(self):
                path = urlsplit(self.path).path
                provider.hits[path] = provider.hits.get(path, 0) + 1
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                form["authorization"] = self.headers.get("Authorization", "")
                provider.token_requests.append(form)
                if path != "/token":
                    return self._send(404, b"{}")
                body = {"access_token": "opaque-access-token", "token_type": "Bearer"}
                if provider.id_token is not None:
                    body["id_token"] = provider.id_token
                self._send(200, json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def discovery(self) -> dict:
        doc = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/auth",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "userinfo_endpoint": f"{self.issuer}/me",
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }
        if self.discovery_override is not None:
            doc.update(self.discovery_override)
            doc = {k: v for k, v in doc.items() if v is not None}
        return doc

    def claims(self, nonce: str, **changes) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "subject-1",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "email": "newbie@acme.example",
            "email_verified": True,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict, *, key: RSAKey | None = None, kid: str | None = "k1") -> str:
        header = {"alg": "RS256"}
        if kid is not None:
            header["kid"] = kid
        return jwt.encode(header, claims, key or self.key)

    @staticmethod
    def unsigned(claims: dict) -> str:
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
