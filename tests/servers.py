"""Real servers for the production tests: gunicorn on a free port, a TCP proxy to cut
the database link, and small HTTP helpers. Everything binds 127.0.0.1 and is stopped."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "a long test passphrase 42"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KEYDESK_DATABASE_URL=database_url,
        KEYDESK_SECRET_KEY="test-secret-key",
        KEYDESK_KEY_PEPPER="test-pepper",
        KEYDESK_RATELIMIT_STORAGE_URI="memory://",
        KEYDESK_LOGIN_RATE_LIMIT="10000 per minute",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def flask_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "flask"), "--app", "app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Gunicorn:
    """gunicorn with N sync workers; the access log names the worker pid of each request."""

    def __init__(self, env: dict[str, str], workers: int, log_path: Path) -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "--workers",
                str(workers),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--timeout",
                "60",
                "--graceful-timeout",
                "2",
                "--access-logfile",
                "-",
                "--access-logformat",
                "ACCESS pid=%(p)s status=%(s)s path=%(U)s",
                "app:create_app()",
            ],  # fmt: skip
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        """Until every worker has loaded the app and answered /healthz (a slow machine boots
        workers one by one; tests that count workers must not start before that)."""
        deadline = time.monotonic() + timeout

        def probe(_: int) -> None:
            with suppress(requests.RequestException):
                requests.get(self.url + "/healthz", timeout=5)

        with ThreadPoolExecutor(2 * self.workers) as pool:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gunicorn exited:\n{self.log()}")
                list(pool.map(probe, range(2 * self.workers)))
                ready = {pid for pid, status, path in self.access() if status == 200}
                if len(ready) >= self.workers:
                    return
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn workers did not all answer /healthz:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def access(self, settle: float = 0.0) -> list[tuple[int, int, str]]:
        """(worker pid, status, path) for each request served so far. A worker writes the
        line just after sending the response: `settle` waits for the stragglers."""
        time.sleep(settle)
        pattern = re.compile(r"ACCESS pid=<?(\d+)>? status=(\d+) path=(\S+)")
        return [
            (int(m.group(1)), int(m.group(2)), m.group(3))
            for m in map(pattern.search, self.log().splitlines())
            if m
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


@contextmanager
def gunicorn(env: dict[str, str], workers: int, log_path: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(env, workers, log_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', html
    )
    assert match, "no csrf_token on the page"
    return match.group(1)


def web_login(base: str, email: str, password: str = PASSWORD) -> requests.Session:
    session = requests.Session()
    token = csrf_token(session.get(base + "/login", timeout=30).text)
    response = session.post(
        base + "/login",
        data={"email": email, "password": password, "csrf_token": token},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 302, response.text[:500]
    return session


class TcpProxy:
    """A TCP relay in the test process; `close()` refuses new connections and cuts
    open ones (the database "goes down"), `open()` brings it back on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            a.setblocking(False)
            b.setblocking(False)
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.setblocking(True)
                    key.data.sendall(data)
                    key.data.setblocking(False)
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                s.close()
            with self._lock:
                self._conns.difference_update((a, b))

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
