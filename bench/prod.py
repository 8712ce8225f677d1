"""`bench/run.py --prod`: the production configuration, side by side with the peer.

One PostgreSQL server, one Redis, every app under gunicorn with the same number of sync
workers (default 2):
- bare Flask (bench/bare_app.py), Keydesk /api/v1/ping, Keydesk /api/v1/me with
  PostgreSQL and Redis rate limits (cache + feed + leases: the defaults), and
  djangorestframework-api-key on PostgreSQL with persistent connections (bench/peer.py),
  each with --keys keys (default 100,000), measured by wrk in alternating rounds;
- propagation: a second Keydesk instance B (its own gunicorn, same database and Redis);
  for each of --trials keys, both of B's workers serve the key, then it is revoked and
  the time until B first refuses it is measured. Even trials commit the revocation in
  this process (a Keydesk app, through the same emitter), timed from just before COMMIT
  (an upper bound of "from the commit") and from COMMIT returning (a lower bound); odd
  trials revoke through instance A's API, timed from the request sent (upper bound, it
  includes A's work) and from A's 200 answer.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import peer

REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")


def _get(port: int, path: str, token: str, method: str = "GET") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _committer(url: str, env: dict):
    """A Keydesk app in this process on the bench database: it revokes with a commit whose
    moment is known to within the COMMIT round trip."""
    for name in ("KEYDESK_SECRET_KEY", "KEYDESK_KEY_PEPPER"):
        os.environ[name] = env[name]
    from app import create_app

    return create_app({"SQLALCHEMY_DATABASE_URI": url, "KEYDESK_USAGE_BACKGROUND": False})


def _revoke_here(app, key_id: str) -> tuple[float, float]:
    from sqlalchemy import select

    from app.audit import Actor
    from app.clock import utcnow
    from app.extensions import db
    from app.keys import service as keys
    from app.models import ApiKey

    with app.app_context():
        row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()
        keys.revoke_key(key=row, now=utcnow(), actor=Actor.cli())
        before = time.perf_counter()
        db.session.commit()
        return before, time.perf_counter()


def propagation(a_url: str, b_url: str, fixtures: dict, trials: int, workers: int, app) -> dict:
    """Odd trials revoke through instance A's API; even ones commit in this process. Either
    way the time runs until instance B first answers 401."""
    a_port, b_port = int(a_url.rsplit(":", 1)[1]), int(b_url.rsplit(":", 1)[1])
    tokens = fixtures["valid"][1 : trials + 1]
    if len(tokens) < trials:
        raise RuntimeError(f"need {trials} keys, have {len(tokens)}")
    times: dict[str, list[float]] = {"api_sent": [], "api_answered": [], "before": [], "after": []}
    stale_after_commit, stragglers = 0, 0
    for n, token in enumerate(tokens):
        key_id = token.split("_")[1]
        for _ in range(4 * workers):  # each worker of B serves (and caches) the key
            assert _get(b_port, "/api/v1/me", token) == 200
        if n % 2:
            path = f"/api/v1/tenant/{fixtures['tenant']}/api-keys/{key_id}/revoke"
            start = time.perf_counter()
            if _get(a_port, path, fixtures["manager"], method="POST") != 200:
                raise RuntimeError("revoke through instance A failed")
            committed = time.perf_counter()
        else:
            start, committed = _revoke_here(app, key_id)
        while _get(b_port, "/api/v1/me", token) != 401:
            stale_after_commit += 1
            if time.perf_counter() - start > 5:
                raise RuntimeError("instance B still serves a key revoked 5 s ago")
        refused = time.perf_counter()
        first, second = ("api_sent", "api_answered") if n % 2 else ("before", "after")
        times[first].append((refused - start) * 1000)
        times[second].append((refused - committed) * 1000)
        stragglers += sum(_get(b_port, "/api/v1/me", token) != 401 for _ in range(2 * workers))

    def summary(values: list[float]) -> dict:
        return {
            "n": len(values),
            "p50": statistics.median(values),
            "p99": _percentile(values, 0.99),
            "max": max(values),
        }

    return {
        "trials": trials,
        **{name: summary(values) for name, values in times.items()},
        "stale_after_commit": stale_after_commit,
        "stragglers": stragglers,
    }


def run_prod(args, run) -> dict:
    """`run` is bench/run.py's module (its servers, wrk and database helpers)."""
    python = peer.ensure_venv(run.log)
    count = args.prod_keys
    with (
        run.fresh_database(args.prod_db, "prod") as url,
        run.fresh_database(args.prod_db, "peer") as peer_url,
    ):
        env = run.base_env(url)
        env.update(
            KEYDESK_RATELIMIT_STORAGE_URI=REDIS_URL,
            KEYDESK_RATELIMIT_KEY_PREFIX=f"keydesk-bench-{secrets.token_hex(4)}",
        )
        run.log(f"prod: {count:,} keys on postgresql: migrating and seeding")
        run.flask(env, "db", "upgrade")
        run.flask(env, "seed", "--keys", str(count))
        fixtures = json.loads(
            subprocess.run(
                [run.PYTHON, "-m", "bench.fixtures", "--valid", str(args.trials + 1)],
                cwd=run.ROOT, env=env, check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
        run.log(f"prod: the peer, {count:,} keys on postgresql")
        folder = Path(tempfile.mkdtemp(prefix="keydesk-peer-"))
        try:
            peer.write_project(folder, peer_url)
            peer_key = peer.migrate_and_seed(python, folder, count)
            peer_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(folder)}
            peer_env["DJANGO_SETTINGS_MODULE"] = "peerbench.settings"
            result = _measure(args, run, env, fixtures, python, folder, peer_env, peer_key)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            _forget_redis(env["KEYDESK_RATELIMIT_KEY_PREFIX"])
    result["keys"] = count
    return result


def _forget_redis(prefix: str) -> None:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for name in client.scan_iter(match=f"*{prefix}*"):
            client.delete(name)
        client.close()
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"[bench] could not clean Redis: {exc}")


def _measure(args, run, env, fixtures, python, folder, peer_env, peer_key) -> dict:
    workers = args.prod_workers
    me_token = fixtures["valid"][0]
    with (
        run.gunicorn(env, "app:create_app()", workers) as (app_url, _),
        run.gunicorn(env, "bench.bare_app:app", workers) as (bare_url, _),
        run.gunicorn(peer_env, "peerbench.wsgi", workers, python=python, cwd=folder) as (
            peer_url,
            _,
        ),
    ):
        cases = ("bare", "ping", "me", "peer")
        urls = {
            "bare": bare_url + "/ping", "ping": app_url + "/api/v1/ping",
            "me": app_url + "/api/v1/me", "peer": peer_url + "/me",
        }  # fmt: skip
        tokens = {"bare": None, "ping": None, "me": me_token, "peer": peer_key}
        schemes = {"peer": "Api-Key"}
        for case in cases:
            run.check(urls[case], tokens[case], 200, scheme=schemes.get(case, "Bearer"))
        run.check(peer_url + "/me", "nope.nope", 403, scheme="Api-Key")  # the peer does check

        def measure(case: str, duration: int) -> dict:
            return run.wrk(
                urls[case], tokens[case], duration=duration, connections=args.prod_connections,
                threads=2, scheme=schemes.get(case, "Bearer"),
            )  # fmt: skip

        for case in cases:
            measure(case, 1)  # warm-up: imports, connections, caches, leases
        rounds: dict[str, list[dict]] = {case: [] for case in cases}
        for n in range(args.rounds):
            for case in cases[n % len(cases) :] + cases[: n % len(cases)]:
                rounds[case].append(measure(case, args.duration))
            run.log(
                f"prod round {n + 1}/{args.rounds}: "
                + ", ".join(f"{c} {rounds[c][-1]['rps']:.0f}" for c in cases)
            )
        non_2xx = {case: sum(r["non_2xx"] for r in rounds[case]) for case in cases}
        if any(non_2xx.values()):
            raise RuntimeError(f"non-2xx answers during the run: {non_2xx}")
        run.log(f"prod: propagation, {args.trials} trials across two instances")
        committer = _committer(env["KEYDESK_DATABASE_URL"], env)
        with run.gunicorn(env, "app:create_app()", workers) as (second_url, _):
            spread = propagation(app_url, second_url, fixtures, args.trials, workers, committer)

    def ratio(a: str, b: str) -> float:
        return statistics.median(
            x["rps"] / y["rps"] for x, y in zip(rounds[a], rounds[b], strict=True)
        )

    return {
        "median": {case: run._median_by_rps(results) for case, results in rounds.items()},
        "ratios": {
            "ping/bare": ratio("ping", "bare"),
            "me/ping": ratio("me", "ping"),
            "me/peer": ratio("me", "peer"),
        },
        "rounds": rounds,
        "propagation": spread,
        "workers": workers,
    }


def tables(result: dict, args) -> str:
    m, q, p = result["median"], result["ratios"], result["propagation"]
    lines = [
        "| keys | db | workers | bare rps | ping rps | me rps | peer rps | ping/bare | me/ping"
        " | me/peer | me p50 ms | me p99 ms | peer p50 ms | peer p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['keys']:,} | postgresql + redis | {result['workers']} | {m['bare']['rps']:.0f}"
        f" | {m['ping']['rps']:.0f} | {m['me']['rps']:.0f} | {m['peer']['rps']:.0f}"
        f" | {q['ping/bare']:.2f} | {q['me/ping']:.2f} | {q['me/peer']:.2f}"
        f" | {m['me']['p50_ms']:.2f} | {m['me']['p99_ms']:.2f} | {m['peer']['p50_ms']:.2f}"
        f" | {m['peer']['p99_ms']:.2f} |",
        "",
        f"peer: djangorestframework-api-key {peer.REQUIREMENTS[0].split('==')[1]} (HasAPIKey,"
        " PostgreSQL, CONN_MAX_AGE=None); gunicorn sync workers for every app; wrk -t2"
        f" -c{args.prod_connections} -d{args.duration}s per case, {args.rounds} rounds"
        " alternating the cases; ratios: median over rounds of the ratio within a round.",
        "",
        "| propagation: a revocation's commit -> first 401 on instance B | trials | p50 ms"
        " | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for label, name in (
        ("commit in another process: from before COMMIT (upper bound)", "before"),
        ("commit in another process: from COMMIT returned (lower bound)", "after"),
        ("revoked through instance A's API: from the request sent (upper bound)", "api_sent"),
        ("revoked through instance A's API: from its 200 answer (lower bound)", "api_answered"),
    ):
        s = p[name]
        lines.append(f"| {label} | {s['n']} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    lines += [
        "",
        f"200s from B after the commit returned: {p['stale_after_commit']} in {p['trials']}"
        f" trials; 200s from B after its first refusal (the other worker): {p['stragglers']}",
    ]
    return "\n".join(lines)
