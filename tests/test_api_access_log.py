"""A key sent in the query string is refused and never reaches gunicorn's access log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_query_string_key_is_refused_and_not_logged(tmp_path):
    port = _free_port()
    log_path = tmp_path / "access.log"
    env = {
        **os.environ,
        "KEYDESK_DATABASE_URL": f"sqlite:///{tmp_path / 'k.sqlite3'}",
        "KEYDESK_SECRET_KEY": "s",
        "KEYDESK_KEY_PEPPER": "p",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen(
        [str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py"), "-b", f"127.0.0.1:{port}",
         "-w", "1", "--access-logfile", str(log_path), "app:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    secret = "kd_7Gk2mQ9xLp0a_X80SD9vlIWbELj5K9qJdIn3yQQEix7ya24Xsmz"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/api/v1/ping", timeout=5)
                break
            except requests.RequestException:  # not up yet, or slow on a busy machine
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        for name in ("access_token", "api_key", "key"):
            response = requests.get(
                f"http://127.0.0.1:{port}/api/v1/me?{name}={secret}",
                headers={"Referer": f"https://example.com/?token={secret}"},
                timeout=30,
            )
            assert response.status_code == 400
            assert response.json()["error"] == "invalid_request"
        # An invitation token travels in the path; whatever the answer, the log hides it.
        requests.get(f"http://127.0.0.1:{port}/invite/{secret}", timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()
    log = log_path.read_text()
    assert '"GET /api/v1/me HTTP/1.1" 400' in log
    assert secret not in log and "access_token" not in log
    assert '"GET /invite/[token] HTTP/1.1"' in log
