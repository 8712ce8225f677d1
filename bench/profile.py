"""Per-request cost of the hot path without HTTP: call the WSGI app directly.

    .venv/bin/python bench/profile.py [--keys N] [--requests N] [--pyinstrument]

Seeds a temporary SQLite database, then times /api/v1/ping, /api/v1/me and the
bare Flask app in-process (µs of CPU time per request, best of 5 rounds: CPU time, so
that other load on the machine distorts less). With --pyinstrument ping|me|bare|bad it
prints a call tree for that path. Numbers, not tests.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def environ(path: str, token: str | None = None) -> dict:
    env = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if token:
        env["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return env


def call(app, path: str, token: str | None = None) -> str:
    status = []
    body = app(environ(path, token), lambda s, h, exc_info=None: status.append(s))
    b"".join(body)
    if hasattr(body, "close"):
        body.close()
    return status[0]


def per_request_us(app, path: str, token: str | None, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            call(app, path, token)
        best = min(best, (time.process_time() - started) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pyinstrument", metavar="PATH", help="profile ping, me, bare or bad")
    parser.add_argument(
        "--metrics", action="store_true",
        help="prometheus-client in multiprocess mode (as under gunicorn); adds ping and me "
        "with KEYDESK_METRICS_TOKEN set (the request histogram) to the rows",
    )  # fmt: skip
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="keydesk-profile-")
    if args.metrics:  # before anything imports prometheus_client, as gunicorn.conf.py does
        os.makedirs(f"{tmp}/metrics")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = f"{tmp}/metrics"
    os.environ.update(
        KEYDESK_DATABASE_URL=f"sqlite:///{tmp}/bench.sqlite3",
        KEYDESK_SECRET_KEY="bench",  # noqa: S106 (a throwaway database)
        KEYDESK_KEY_PEPPER="bench-pepper",
        KEYDESK_API_RATE_LIMIT="100000000 per minute",
        KEYDESK_AUTH_FAILURE_LIMIT="100000000 per minute",
    )
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    subprocess.run([*flask, "db", "upgrade"], check=True, cwd=ROOT, capture_output=True)
    seeded = subprocess.run(
        [*flask, "seed", "--keys", str(args.keys)], check=True, cwd=ROOT, capture_output=True
    )
    token = seeded.stdout.decode().strip().splitlines()[-1]

    from app import create_app
    from bench.bare_app import app as bare

    app = create_app()
    assert call(app, "/api/v1/me", token).startswith("200"), call(app, "/api/v1/me", token)
    n = args.requests
    bad = token[:-1] + ("A" if token[-1] != "A" else "B")
    rows = [
        ("bare", per_request_us(bare, "/ping", None, n)),
        ("ping", per_request_us(app, "/api/v1/ping", None, n)),
        ("me", per_request_us(app, "/api/v1/me", token, n)),
        ("bad checksum", per_request_us(app, "/api/v1/me", bad, n)),
    ]
    if args.metrics:
        timed = create_app({"KEYDESK_METRICS_TOKEN": "bench-metrics-token"})
        rows += [
            ("ping+metrics", per_request_us(timed, "/api/v1/ping", None, n)),
            ("me+metrics", per_request_us(timed, "/api/v1/me", token, n)),
        ]
    for name, us in rows:
        print(f"{name:12s} {us:8.1f} µs/request")
    if args.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0001)
        profiler.start()
        target, path, tok = {
            "bare": (bare, "/ping", None),
            "ping": (app, "/api/v1/ping", None),
            "me": (app, "/api/v1/me", token),
            "bad": (app, "/api/v1/me", bad),
        }[args.pyinstrument]
        for _ in range(n * 3):
            call(target, path, tok)
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=True))


if __name__ == "__main__":
    main()
