"""One malformed request must never take a gunicorn worker down (issue 12, point 1).

A real gunicorn, started with the repository's gunicorn.conf.py and one sync worker, gets
raw-socket requests whose framing gunicorn itself refuses; afterwards the same worker (the
same pid) still answers /healthz, and no invitation token reached the access log.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import pytest
import requests
from flask import Flask

from tests.servers import BIN, ROOT, flask_cli, free_port, server_env

BAD_FRAMING = [
    b"POST /api/v1/ping HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/v1/ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /api/v1/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /api/v1/ping HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /api/v1/ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /api/v1/ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /login HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"POST /invite/SECRETINVITETOKEN123 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
]


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        with suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def one_worker(tmp_path):
    env = server_env(f"sqlite:///{tmp_path / 'k.sqlite3'}")
    upgrade = flask_cli(env, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "-w", "1",
             "-b", f"127.0.0.1:{port}", "app:create_app()"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok:
                    break
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        yield proc, port, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bad_framing_never_ends_the_worker(one_worker):
    proc, port, log_path = one_worker
    [worker] = _children(proc.pid)
    for request in BAD_FRAMING:
        answer = _raw(port, request)
        # gunicorn refuses each one itself, with a 4xx or 501, instead of dying silently.
        assert answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.1 501"), (
            request,
            answer[:200],
        )
        assert _children(proc.pid) == {worker}, (request, log_path.read_text()[-3000:])
    # A burst of them, then a plain request: served at once by that same worker.
    for _ in range(50):
        _raw(port, BAD_FRAMING[0])
    response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert _children(proc.pid) == {worker}
    log = log_path.read_text()
    assert "Exception in worker process" not in log and "Worker exiting" not in log
    assert "SECRETINVITETOKEN123" not in log


def _failing_app(app: Flask) -> Flask:
    """An app whose 500 handler itself fails: the exception escapes Flask's own handling."""

    def boom():
        raise RuntimeError("a bug in a view")

    def broken_handler(_exc):
        raise RuntimeError("a bug in the error page")

    app.add_url_rule("/boom", "boom", boom)
    app.add_url_rule("/api/v1/boom", "api_boom", boom)
    app.register_error_handler(500, broken_handler)
    app.register_error_handler(RuntimeError, broken_handler)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production (TESTING turns it on)
    return app


def test_an_exception_that_escapes_flask_is_a_plain_500(app, caplog):
    client = _failing_app(app).test_client()
    with caplog.at_level(logging.ERROR, logger="app.web"):
        page = client.get("/boom")
        api = client.get("/api/v1/boom")
    assert page.status_code == 500 and page.mimetype == "text/html"
    assert b"Something went wrong" in page.data
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert api.status_code == 500 and api.json == {
        "error": "server_error",
        "error_description": "Internal server error",
    }
    assert [r.getMessage() for r in caplog.records].count("unhandled error on GET /boom") == 1
    assert any("RuntimeError" in (r.exc_text or "") for r in caplog.records)
    # The next request is served as usual.
    assert client.get("/healthz").status_code == 200


def test_a_body_that_fails_before_its_first_byte_is_a_plain_500(app):
    def failing_body():
        raise RuntimeError("failed while producing the first chunk")
        yield b""  # pragma: no cover - makes this a generator

    app.add_url_rule(
        "/api/v1/stream", "stream", lambda: app.response_class(failing_body(), mimetype="text/csv")
    )
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().get("/api/v1/stream")
    assert response.status_code == 500 and response.json["error"] == "server_error"


def test_static_files_still_reach_the_server_as_files(one_worker):
    _, port, _ = one_worker
    response = requests.get(f"http://127.0.0.1:{port}/static/style.css", timeout=10)
    assert response.status_code == 200 and "color" in response.text


def test_a_body_that_fails_after_its_first_bytes_is_not_passed_off_as_complete(app):
    """Too late for a 500: the error goes on to the server, which cuts the connection, so a
    download that stopped half-way cannot look whole (a clean end would, with chunking)."""

    def half_body():
        yield b"["
        raise RuntimeError("the database went away mid-export")

    app.add_url_rule(
        "/api/v1/half", "half", lambda: app.response_class(half_body(), mimetype="text/csv")
    )
    app.config["PROPAGATE_EXCEPTIONS"] = False
    with pytest.raises(RuntimeError, match="mid-export"):
        app.test_client().get("/api/v1/half").get_data()
