"""Operations against real servers: Prometheus scraping two gunicorn workers, JSON log
lines from gunicorn and the app, and a SQLite backup taken while gunicorn writes.

Prometheus is Debian's `prometheus` package (`make prometheus`, part of `make test`);
without it these scrape tests skip, and fail under CI=true.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests

from tests.conftest import in_ci
from tests.servers import Gunicorn, flask_cli, free_port, gunicorn, server_env

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TOKEN = "scrape-token-0123456789abcdefghijklmnopqrstuvwxyz"
HIGH = "1000000 per minute"
PASSWORD = "a long test passphrase 42"


def _cli_ok(env, *args) -> str:
    result = flask_cli(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def _database(tmp_path: Path, keys: int = 3, **extra) -> tuple[dict, str]:
    """A migrated, seeded SQLite database; (server env, a valid api:read api:write key)."""
    env = server_env(
        f"sqlite:///{tmp_path / 'ops.sqlite3'}",
        KEYDESK_API_RATE_LIMIT=HIGH,
        KEYDESK_AUTH_FAILURE_LIMIT=HIGH,
        **extra,
    )
    _cli_ok(env, "db", "upgrade")
    return env, _cli_ok(env, "seed", "--keys", str(keys))


@contextmanager
def prometheus(tmp_path: Path, target: str):
    if not Path(PROMETHEUS).exists():
        if in_ci():
            pytest.fail("prometheus is not installed (make prometheus: apt-get install prometheus)")
        pytest.skip("prometheus is not installed (make prometheus)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: keydesk\n    metrics_path: /metrics\n"
        f"    authorization:\n      credentials: {TOKEN}\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _query(base: str, promql: str) -> float | None:
    with suppress(requests.RequestException, ValueError, KeyError, IndexError):
        body = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5).json()
        return float(body["data"]["result"][0]["value"][1])
    return None


def _wait_for(base: str, promql: str, expected: float, timeout: float = 90) -> float | None:
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        value = _query(base, promql)
        if value == expected:
            return value
        time.sleep(0.5)
    return value


def test_prometheus_sums_two_gunicorn_workers(tmp_path):
    env, key = _database(tmp_path, KEYDESK_METRICS_TOKEN=TOKEN)
    bad = key[:-1] + ("A" if key[-1] != "A" else "B")
    with gunicorn(env, 2, tmp_path / "gunicorn.log") as server:
        valid, invalid = 40, 25

        def call(token: str) -> int:
            return requests.get(
                server.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
            ).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(call, [key] * valid + [bad] * invalid))
        assert statuses.count(200) == valid and statuses.count(401) == invalid
        served_by = {pid for pid, _, path in server.access(settle=0.5) if path == "/api/v1/me"}
        assert len(served_by) == 2, "both workers must have served /api/v1/me"
        # Every worker's own count is below the total: only the sum over workers matches
        # (each worker writes its counts within a second; the answering one at once).
        deadline, text = time.monotonic() + 10, ""
        while time.monotonic() < deadline:
            direct = requests.get(
                server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            )
            assert direct.status_code == 200
            text = direct.text
            if 'keydesk_api_auth_total{outcome="valid"} 40.0' in text:
                break
            time.sleep(0.2)
        assert 'keydesk_api_auth_total{outcome="valid"} 40.0' in text

        with prometheus(tmp_path, f"127.0.0.1:{server.port}") as prom:
            up = _wait_for(prom, 'up{job="keydesk"}', 1.0)
            assert up == 1.0, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert _wait_for(prom, 'sum(keydesk_api_auth_total{outcome="valid"})', valid) == valid
            assert (
                _wait_for(prom, 'sum(keydesk_api_auth_total{outcome="invalid"})', invalid)
                == invalid
            )
            me = 'sum(keydesk_http_request_duration_seconds_count{endpoint="api.me"})'
            assert _wait_for(prom, me, valid + invalid) == valid + invalid
            buckets = _query(
                prom, 'count(keydesk_http_request_duration_seconds_bucket{endpoint="api.me"})'
            )
            assert buckets and buckets > 2  # a real histogram: many buckets per series


def test_metrics_directory_is_made_and_removed_by_gunicorn_conf(tmp_path):
    env, _ = _database(tmp_path, KEYDESK_METRICS_TOKEN=TOKEN, TMPDIR=str(tmp_path))
    with gunicorn(env, 2, tmp_path / "gunicorn.log") as server:
        made = list(tmp_path.glob("keydesk-metrics-*"))
        assert len(made) == 1 and any(made[0].glob("*.db"))
        requests.get(server.url + "/api/v1/ping", timeout=30)
    assert not list(tmp_path.glob("keydesk-metrics-*"))


# --- JSON logs ---------------------------------------------------------------------------


def _wait_up(server: Gunicorn, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log()
        with suppress(requests.RequestException):
            if requests.get(server.url + "/livez", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"gunicorn did not start:\n{server.log()}")


def test_json_logs_every_line_with_request_ids_and_never_a_secret(tmp_path):
    closed = free_port()  # rate limits on a Redis that is down: the app logs warnings
    env, key = _database(
        tmp_path,
        KEYDESK_LOG_FORMAT="json",
        KEYDESK_METRICS_TOKEN=TOKEN,
        KEYDESK_RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{closed}/0",
    )
    _cli_ok(env, "users", "create", "ops@example.com", "--password", PASSWORD, "--tenant", "ops")
    secret = key.split("_", 2)[2]
    bad = key[:-1] + ("A" if key[-1] != "A" else "B")
    server = Gunicorn(env, 2, tmp_path / "server.log")
    responses = {}
    try:
        _wait_up(server)
        auth = {"Authorization": f"Bearer {key}"}
        get = requests.get
        responses["me"] = get(
            server.url + "/api/v1/me", headers={**auth, "X-Request-Id": "trace.me-1"}, timeout=30
        )
        responses["bad"] = get(
            server.url + "/api/v1/me", headers={"Authorization": f"Bearer {bad}"}, timeout=30
        )
        responses["query"] = get(f"{server.url}/api/v1/me?access_token={key}", timeout=30)
        responses["invite"] = get(f"{server.url}/invite/{key}", timeout=30)
        responses["agent"] = get(
            server.url + "/api/v1/ping",
            headers={"User-Agent": f"script {key}", "Referer": f"https://x.test/?k={key}"},
            timeout=30,
        )
        responses["evil"] = get(
            server.url + "/api/v1/me",
            headers={**auth, "X-Request-Id": "evil id <script>"},
            timeout=30,
        )
        responses["login"] = requests.post(
            server.url + "/login", data={"email": "ops@example.com", "password": PASSWORD},
            timeout=30,
        )  # fmt: skip
        responses["missing"] = get(server.url + "/no/such/page", timeout=30)
        time.sleep(0.5)  # the access line is written just after the response
    finally:
        server.stop()
    assert responses["me"].status_code == 200 and responses["bad"].status_code == 401
    assert responses["query"].status_code == 400
    log = server.log_path.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # each one JSON
    assert all({"time", "level", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line.get("logger") == "gunicorn.access"]
    assert len(access) >= len(responses)
    fields = {"request_id", "method", "path", "status", "duration_ms"}
    assert all(fields <= set(line) for line in access)
    assert all(isinstance(line["duration_ms"], float | int) for line in access)
    by_id = {line["request_id"]: line for line in access}
    for name, response in responses.items():
        rid = response.headers["X-Request-Id"]
        assert rid in by_id, name
        assert by_id[rid]["status"] == response.status_code, name
    me = by_id["trace.me-1"]
    assert responses["me"].headers["X-Request-Id"] == "trace.me-1"
    assert me["key_id"] == key.split("_")[1] and me["path"] == "/api/v1/me"
    assert "key_id" not in by_id[responses["bad"].headers["X-Request-Id"]]
    assert responses["evil"].headers["X-Request-Id"] != "evil id <script>"
    assert "evil id" not in log
    # App log lines written during a request carry its id (the Redis-down warning).
    app_lines = [line for line in lines if line.get("logger", "").startswith("app")]
    assert app_lines, "expected the rate-limit storage warning"
    assert all(line["request_id"] in by_id for line in app_lines if "request_id" in line)
    assert any("request_id" in line for line in app_lines)
    # Never a secret: not the key, not its secret part, not the password, in any line.
    assert key not in log and secret not in log and PASSWORD not in log
    assert by_id[responses["invite"].headers["X-Request-Id"]]["path"] == "/invite/[token]"


# --- backup while gunicorn writes -------------------------------------------------------


def test_backup_is_consistent_while_gunicorn_writes(tmp_path):
    env, _ = _database(tmp_path, keys=30_000)
    _cli_ok(env, "users", "create", "w@example.com", "--password", PASSWORD, "--tenant", "w")
    writer = _cli_ok(
        env, "keys", "issue", "--email", "w@example.com", "--name", "writer",
        "--scope", "keys:read", "--scope", "keys:write",
    )  # fmt: skip
    created: list[tuple[float, str]] = []  # (monotonic time the 201 arrived, key id)
    failures: list[int] = []
    stop = threading.Event()
    target = tmp_path / "backup" / "copy.sqlite3"
    target.parent.mkdir()

    with gunicorn(env, 2, tmp_path / "gunicorn.log") as server:

        def write() -> None:
            session = requests.Session()
            n = 0
            while not stop.is_set():
                n += 1
                response = session.post(
                    server.url + "/api/v1/tenant/w/api-keys/create",
                    json={"name": f"bulk {n}", "scopes": ["keys:read"], "expires_in_days": 0},
                    headers={"Authorization": f"Bearer {writer}"},
                    timeout=30,
                )
                if response.status_code == 201:
                    created.append((time.monotonic(), response.json()["id"]))
                else:
                    failures.append(response.status_code)

        threads = [threading.Thread(target=write) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(created) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            began = time.monotonic()
            before = {key_id for at, key_id in created if at < began}
            result = flask_cli(env, "backup", str(target))
            ended = time.monotonic()
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "integrity ok" in result.stdout
    assert not failures, failures  # writers were never refused or failed meanwhile
    during = [key_id for at, key_id in created if began <= at <= ended]
    assert during, "no write completed while the backup ran"
    copy = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ids = {row[0] for row in copy.execute("SELECT key_id FROM api_keys")}
        audit = copy.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    finally:
        copy.close()
    assert len(before) >= 20 and before <= ids
    assert len(ids) >= 30_000 + len(before)
    assert audit >= len(before)  # each issued key's audit event came along with it
