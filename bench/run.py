"""Load benchmark: bare Flask vs /api/v1/ping vs /api/v1/me, side by side, under gunicorn + wrk.

    make bench                                   # 1,000 and 100,000 keys on SQLite
    make bench BENCH_ARGS="--prod"               # + production: PostgreSQL, Redis, 2 workers, peer
    make bench BENCH_ARGS="--keys 1000,1000000 --db postgresql+psycopg://postgres@127.0.0.1/postgres"
    .venv/bin/python bench/run.py --help

For each key count: a fresh database (a SQLite file in a temporary directory, or a
PostgreSQL database created on the given server and dropped afterwards), `flask db
upgrade`, `flask seed --keys N` (timed), a few keys with known secrets from
bench/fixtures.py, then two gunicorn servers (Keydesk and bench/bare_app.py, same
worker settings) driven by wrk one case at a time, ALTERNATING the cases round after
round so that drift from other load on the machine hits every case alike. Ratios are
taken within a round (cases measured seconds apart), then the median over rounds; rps
and latencies are each case's median round. Rate limits are set high so they never
trigger. Results also go to bench/results/<timestamp>.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, nullcontext, suppress
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
HIGH_LIMIT = "100000000 per minute"
CASES = ("bare", "ping", "me", "revoked", "expired", "unknown", "bad_checksum")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KEYDESK_DATABASE_URL=database_url,
        KEYDESK_SECRET_KEY="bench-secret-key",  # noqa: S106 (a throwaway database)
        KEYDESK_KEY_PEPPER="bench-pepper",
        KEYDESK_API_RATE_LIMIT=HIGH_LIMIT,
        KEYDESK_AUTH_FAILURE_LIMIT=HIGH_LIMIT,
        KEYDESK_RATELIMIT_STORAGE_URI="memory://",
        PYTHONPATH=str(ROOT),
    )
    return env


@contextmanager
def fresh_database(db: str, label: str):
    """Yield a SQLAlchemy URL of an empty database; remove it afterwards."""
    if db == "sqlite":
        tmp = tempfile.mkdtemp(prefix="keydesk-bench-")
        try:
            yield f"sqlite:///{tmp}/bench.sqlite3"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(db)
    name = f"keydesk_bench_{os.getpid()}_{label}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flask(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "flask", "--app", "app", *args],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip


@contextmanager
def gunicorn(env: dict, target: str, workers: int, *, python=PYTHON, cwd=ROOT):
    port = free_port()
    proc = subprocess.Popen(
        # bench/gunicorn.conf.py: every app with gunicorn's defaults (no access log), not the
        # repository's gunicorn.conf.py, so they are served exactly the same way.
        [str(python), "-m", "gunicorn", "-c", str(ROOT / "bench" / "gunicorn.conf.py"),
         "-w", str(workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning", target],
        cwd=cwd, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    ping = "/api/v1/ping" if target.startswith("app:") else "/ping"
    try:
        for _ in range(300):
            with suppress(OSError):
                urllib.request.urlopen(url + ping, timeout=1).read()
                break
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn {target} exited with {proc.returncode}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"gunicorn {target} did not start")
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(number) * _UNITS[unit]


def wrk(
    url: str, token: str | None, *, duration: int, connections: int, threads: int = 1,
    scheme: str = "Bearer",
) -> dict:  # fmt: skip
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: {scheme} {token}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        # Lines of the "Latency Distribution" block; "75.50%" elsewhere must not match.
        p50 = _ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1))
        p99 = _ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))
        requests = int(re.search(r"(\d+) requests in", out).group(1))
    except (AttributeError, ValueError):
        raise RuntimeError(f"could not read wrk's output:\n{out}") from None
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": requests,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }  # fmt: skip


def check(url: str, token: str | None, expected: int, scheme: str = "Bearer") -> None:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"{scheme} {token}")
    try:
        status = urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status != expected:
        raise RuntimeError(f"{url} answered {status}, expected {expected}")


def worker_pids(master: subprocess.Popen) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master.pid)], capture_output=True, text=True
    ).stdout
    return [int(pid) for pid in out.split()]


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def run_count(args, count: int) -> dict:
    db_label = "sqlite" if args.db == "sqlite" else "postgresql"
    with fresh_database(args.db, str(count)) as url:
        env = base_env(url)
        log(f"{count:,} keys on {db_label}: migrating and seeding")
        flask(env, "db", "upgrade")
        started = time.monotonic()
        flask(env, "seed", "--keys", str(count))
        seed_seconds = time.monotonic() - started
        log(f"seeded {count:,} keys in {seed_seconds:.1f}s")
        fixtures = json.loads(
            subprocess.run(
                [PYTHON, "-m", "bench.fixtures", "--valid", str(args.memory_keys)],
                cwd=ROOT, env=env, check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
        tokens = {
            "bare": None, "ping": None, "me": fixtures["valid"][0],
            "revoked": fixtures["revoked"], "expired": fixtures["expired"],
            "unknown": fixtures["unknown"], "bad_checksum": fixtures["bad_checksum"],
        }  # fmt: skip
        cases = (*CASES, "lean") if args.lean else CASES
        tokens["lean"] = tokens["me"]
        if args.metrics:
            cases = (*cases, *METRICS_CASES)
            tokens["ping_m"], tokens["me_m"] = None, tokens["me"]
        with (
            gunicorn(env, "app:create_app()", args.workers) as (app_url, app_proc),
            gunicorn(env, "bench.bare_app:app", args.workers) as (bare_url, _),
            gunicorn(env, "bench.lean_app:app", args.workers)
            if args.lean
            else nullcontext((None, None)) as (lean_url, _),
            metrics_server(env, args) as metrics_url,
        ):
            urls = {case: app_url + "/api/v1/me" for case in cases}
            urls["bare"], urls["ping"] = bare_url + "/ping", app_url + "/api/v1/ping"
            if args.lean:
                urls["lean"] = lean_url + "/me"
            if args.metrics:
                urls["ping_m"], urls["me_m"] = (
                    metrics_url + "/api/v1/ping",
                    metrics_url + "/api/v1/me",
                )
            for case in cases:
                ok = case in ("bare", "ping", "me", "lean", *METRICS_CASES)
                check(urls[case], tokens[case], 200 if ok else 401)
            # Warm up every path (imports, pool, page cache) before measuring.
            for case in cases:
                wrk(urls[case], tokens[case], duration=1, connections=args.connections)
            rounds: dict[str, list[dict]] = {case: [] for case in cases}
            for n in range(args.rounds):
                # Rotate the order each round so no case always runs first or last.
                for case in cases[n % len(cases) :] + cases[: n % len(cases)]:
                    result = wrk(
                        urls[case], tokens[case], duration=args.duration,
                        connections=args.connections,
                    )  # fmt: skip
                    rounds[case].append(result)
                log(
                    f"round {n + 1}/{args.rounds}: "
                    + ", ".join(f"{c} {rounds[c][-1]['rps']:.0f}" for c in cases)
                )
            memory = (
                measure_memory(args, app_url, app_proc, fixtures["valid"])
                if (args.memory)
                else None
            )
    median = {case: _median_by_rps(results) for case, results in rounds.items()}

    def ratio(a: str, b: str) -> float:
        pairs = zip(rounds[a], rounds[b], strict=True)
        return statistics.median(x["rps"] / y["rps"] for x, y in pairs)

    refusals = ("revoked", "expired", "unknown", "bad_checksum")
    ratios = {
        "ping/bare": ratio("ping", "bare"),
        "me/ping": ratio("me", "ping"),
        "refusal/me": min(ratio(case, "me") for case in refusals),
    }
    if args.lean:
        ratios["lean/bare"], ratios["me/lean"] = ratio("lean", "bare"), ratio("me", "lean")
    if args.metrics:
        ratios["ping_m/bare"], ratios["me_m/ping_m"] = (
            ratio("ping_m", "bare"),
            ratio("me_m", "ping_m"),
        )
        ratios["me_m/me"] = ratio("me_m", "me")
    return {
        "keys": count, "database": db_label, "seed_seconds": seed_seconds,
        "median": median, "ratios": ratios, "rounds": rounds, "memory": memory,
    }  # fmt: skip


# --metrics: a second Keydesk with metrics on (KEYDESK_METRICS_TOKEN, prometheus-client in
# multiprocess mode as gunicorn.conf.py sets it up), measured side by side with the first.
METRICS_CASES = ("ping_m", "me_m")


@contextmanager
def metrics_server(env: dict, args):
    if not args.metrics:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="keydesk-bench-metrics-")
    metrics_env = {
        **env, "KEYDESK_METRICS_TOKEN": "bench-metrics-token", "PROMETHEUS_MULTIPROC_DIR": directory
    }  # fmt: skip
    try:
        with gunicorn(metrics_env, "app:create_app()", args.workers) as (url, _):
            yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _median_by_rps(results: list[dict]) -> dict:
    return sorted(results, key=lambda r: r["rps"])[len(results) // 2]


def measure_memory(args, url: str, master: subprocess.Popen, tokens: list[str]) -> dict:
    """Worker RSS after 20k and after 200k /me requests, cycling through many keys."""
    script = Path(tempfile.mkdtemp(prefix="keydesk-wrk-")) / "keys.lua"
    script.write_text(
        "local keys = {" + ",".join(f'"{t}"' for t in tokens) + "}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #keys + 1\n"
        '  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. keys[i]})\n'
        "end\n"
    )
    checkpoints, done, marks = [20_000, 200_000], 0, {}
    for target in checkpoints:
        while done < target:
            out = subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", "-d5s", "-s", str(script),
                 url + "/api/v1/me"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            done += int(re.search(r"(\d+) requests in", out).group(1))
        marks[target] = {
            "requests": done,
            "rss_kib": sum(rss_kib(pid) for pid in worker_pids(master)),
        }
        log(f"memory: {done:,} requests, worker RSS {marks[target]['rss_kib']:,} KiB")
    shutil.rmtree(script.parent, ignore_errors=True)
    first, last = marks[20_000]["rss_kib"], marks[200_000]["rss_kib"]
    return {"after_20k": marks[20_000], "after_200k": marks[200_000], "growth": last / first - 1}


def table(results: list[dict], args) -> str:
    head = (
        "| keys | db | bare rps | ping rps | me rps | ping/bare | me/ping | me p50 ms | me p99 ms"
        " | revoked rps | expired rps | unknown rps | bad checksum rps | refusal/me | seed s |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        m, q = r["median"], r["ratios"]
        lines.append(
            f"| {r['keys']:,} | {r['database']} | {m['bare']['rps']:.0f} | {m['ping']['rps']:.0f}"
            f" | {m['me']['rps']:.0f} | {q['ping/bare']:.2f} | {q['me/ping']:.2f}"
            f" | {m['me']['p50_ms']:.2f} | {m['me']['p99_ms']:.2f} | {m['revoked']['rps']:.0f}"
            f" | {m['expired']['rps']:.0f} | {m['unknown']['rps']:.0f}"
            f" | {m['bad_checksum']['rps']:.0f} | {q['refusal/me']:.2f} | {r['seed_seconds']:.1f} |"
        )
    notes = [
        f"gunicorn sync workers: {args.workers}; wrk -t1 -c{args.connections} -d{args.duration}s"
        f" per case, {args.rounds} rounds alternating all cases. rps and latency: the median"
        " round; ratios: the median over rounds of the ratio within a round (cases measured"
        " seconds apart); refusal/me: the slowest refusal case."
    ]
    if len(results) > 1:
        first, last = results[0], results[-1]
        # The key counts run minutes apart, so the raw ratio carries the machine's drift;
        # me/ping (measured side by side) at each count cancels most of it.
        raw = last["median"]["me"]["rps"] / first["median"]["me"]["rps"]
        normalized = last["ratios"]["me/ping"] / first["ratios"]["me/ping"]
        notes.append(
            f"flatness, me at {last['keys']:,} vs {first['keys']:,} keys: rps ratio {raw:.2f};"
            f" me/ping ratio {normalized:.2f}"
        )
    for r in results:
        if "lean/bare" in r["ratios"]:
            notes.append(
                f"lean ({r['keys']:,} keys; bench/lean_app.py: lookup + HMAC, no features):"
                f" {r['median']['lean']['rps']:.0f} rps, lean/bare {r['ratios']['lean/bare']:.2f},"
                f" me/lean {r['ratios']['me/lean']:.2f}"
            )
        if "me_m/me" in r["ratios"]:
            q, m = r["ratios"], r["median"]
            notes.append(
                f"metrics on ({r['keys']:,} keys; KEYDESK_METRICS_TOKEN set, multiprocess mode):"
                f" ping {m['ping_m']['rps']:.0f} rps, me {m['me_m']['rps']:.0f} rps,"
                f" ping/bare {q['ping_m/bare']:.2f}, me/ping {q['me_m/ping_m']:.2f},"
                f" me with/without metrics {q['me_m/me']:.2f}"
            )
        if r["memory"]:
            m = r["memory"]
            notes.append(
                f"memory ({r['keys']:,} keys): worker RSS {m['after_20k']['rss_kib']:,} KiB after"
                f" {m['after_20k']['requests']:,} requests, {m['after_200k']['rss_kib']:,} KiB"
                f" after {m['after_200k']['requests']:,} ({m['growth']:+.1%})"
            )
    return "\n".join(lines + [""] + notes)


def env_default(name: str, default: str) -> str:
    return os.environ.get(name) or default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keys", default=os.environ.get("BENCH_KEYS"),
        help="comma-separated key counts (env BENCH_KEYS; default 1000,100000, with --prod"
        " 100000) for the single-box table",
    )  # fmt: skip
    parser.add_argument(
        "--db", default=env_default("BENCH_DB", "sqlite"),
        help="sqlite, or a PostgreSQL server URL whose user may create databases (env BENCH_DB)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=int(env_default("BENCH_WORKERS", "1")))
    parser.add_argument(
        "--duration", type=int, default=int(env_default("BENCH_DURATION", "3")),
        help="seconds per wrk run (env BENCH_DURATION)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=int(env_default("BENCH_ROUNDS", "5")))
    parser.add_argument(
        "--connections", type=int, default=int(env_default("BENCH_CONNECTIONS", "4"))
    )
    parser.add_argument(
        "--memory", action="store_true", default=bool(os.environ.get("BENCH_MEMORY")),
        help="also measure worker RSS after 20k and 200k /me requests (env BENCH_MEMORY=1)",
    )  # fmt: skip
    parser.add_argument(
        "--lean", action="store_true", default=bool(os.environ.get("BENCH_LEAN")),
        help="also serve bench/lean_app.py (the lookup and nothing else) as a reference case",
    )  # fmt: skip
    parser.add_argument(
        "--metrics", action="store_true", default=bool(os.environ.get("BENCH_METRICS")),
        help="also serve Keydesk with metrics on, measure ping and me there (env BENCH_METRICS=1)",
    )  # fmt: skip
    parser.add_argument("--memory-keys", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument(
        "--prod", action="store_true", default=bool(os.environ.get("BENCH_PROD")),
        help="also the production configuration (bench/prod.py): PostgreSQL + Redis, several"
        " workers, djangorestframework-api-key as the peer, and revocation propagation",
    )  # fmt: skip
    parser.add_argument(
        "--prod-db", default=env_default("BENCH_PROD_DB", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help="the PostgreSQL server for --prod (its user may create databases)",
    )  # fmt: skip
    parser.add_argument("--prod-keys", type=int, default=100_000)
    parser.add_argument("--prod-workers", type=int, default=2)
    parser.add_argument("--prod-connections", type=int, default=8)
    parser.add_argument("--trials", type=int, default=200, help="propagation trials (--prod)")
    args = parser.parse_args()
    args.keys = args.keys or ("100000" if args.prod else "1000,100000")
    # SIGTERM unwinds like Ctrl-C, so the gunicorn servers and databases are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it: apt-get install wrk)")
    counts = [int(c.replace("_", "")) for c in args.keys.split(",")]
    results = [run_count(args, count) for count in counts]
    prod = None
    if args.prod:
        sys.path.insert(0, str(ROOT))
        from bench import prod as production

        prod = production.run_prod(args, sys.modules[__name__])
    machine = machine_line()
    text = table(results, args)
    if prod is not None:
        text = (
            "Production configuration (bench/prod.py)\n\n" + production.tables(prod, args)
            + "\n\nSingle box (SQLite)\n\n" + text
        )  # fmt: skip
    text += "\n" + machine
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}.txt").write_text(text + "\n")
    payload = {"single_box": results, "prod": prod} if prod is not None else results
    (RESULTS / f"{stamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
    log(f"results written to bench/results/{stamp}.txt and .json")


def machine_line() -> str:
    model = "unknown CPU"
    with suppress(OSError):
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = found.group(1).strip() if found else model
    version = sys.version.split()[0]
    return f"machine: {os.cpu_count()} CPUs, {model}, Python {version}"


if __name__ == "__main__":
    main()
