"""End-to-end fixtures: a real gunicorn serving a freshly migrated SQLite database, and
Debian's Chromium driven by Playwright (never `playwright install`).

Without /usr/bin/chromium or node_modules/axe-core the browser tests skip on a
developer machine and fail under CI=true: `make test` installs both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery staple 42"


def _missing(what: str) -> None:
    message = f"{what} is missing; `make test` installs it"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    db_path: Path
    env: dict[str, str]

    def flask(self, *args: str) -> subprocess.CompletedProcess:
        """Run `flask --app app ARGS` against the server's database."""
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("e2e-server")
    db_path = tmp / "keydesk.sqlite3"
    env = {
        **os.environ,
        "KEYDESK_DATABASE_URL": f"sqlite:///{db_path}",
        "KEYDESK_SECRET_KEY": "e2e-secret-key-not-for-production",
        "KEYDESK_KEY_PEPPER": "e2e-pepper-not-for-production",
        # The suite signs in many times from one address.
        "KEYDESK_LOGIN_RATE_LIMIT": "1000 per minute",
        "KEYDESK_AUTH_FAILURE_LIMIT": "1000 per minute",
        "KEYDESK_ALLOW_REGISTRATION": "true",
        # tests/e2e/test_sso.py signs in through an OpenID provider on loopback (http://).
        "KEYDESK_SSO_ALLOW_PRIVATE_ISSUERS": "true",
    }
    env.pop("FLASK_APP", None)
    live = LiveServer(url="", db_path=db_path, env=env)
    migrated = live.flask("db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr

    port = _free_port()
    log = (tmp / "gunicorn.log").open("w")
    # One worker: usage counters live in process memory, and the charts should see them.
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4",
         "--bind", f"127.0.0.1:{port}", "--chdir", str(ROOT), "app:create_app()"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    # localhost, not 127.0.0.1: WebAuthn (passkeys) accepts a host name as relying party id,
    # never an IP address.
    live.url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {(tmp / 'gunicorn.log').read_text()}")
            try:
                if requests.get(live.url + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still importing
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not answer /healthz within 30 s")
            time.sleep(0.1)
        yield live
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        _missing(str(CHROMIUM))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_context(browser, server):
    """Factory for extra browser contexts (a second person); all closed after the test."""
    contexts = []

    def make(**options):
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(base_url=server.url, **options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def context(new_context):
    return new_context()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture(scope="session")
def axe_path() -> Path:
    if not AXE.exists():
        _missing(str(AXE.relative_to(ROOT)))
    return AXE


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """docs/screenshots/ with KEYDESK_SCREENSHOTS=1 (`make screenshots`); otherwise a
    temporary folder, so that `make test` leaves the tree clean (the pictures hold
    random key ids and dates, and would differ on every run)."""
    if not os.environ.get("KEYDESK_SCREENSHOTS"):
        return tmp_path_factory.mktemp("screenshots")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
