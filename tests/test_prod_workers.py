"""Keydesk behind several gunicorn workers: SQLite writes never hit "database is locked",
a revocation is refused by every worker at its next request, and Redis-backed rate
limits hold across workers. Each test starts its own gunicorn on a free port."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.accounts import service as accounts
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import service as keys
from tests.conftest import (
    REDIS_URL,
    bearer,
    create_user,
    issue_key,
    secret_from_page,
    service_missing,
)
from tests.servers import (
    PASSWORD,
    csrf_token,
    flask_cli,
    gunicorn,
    server_env,
    web_login,
)


def test_sqlite_four_workers_concurrent_writes_never_lock(tmp_path):
    """8 signed-in clients create and revoke keys at once through 4 workers."""
    db_url = f"sqlite:///{tmp_path / 'keydesk.sqlite3'}"
    env = server_env(db_url)
    upgrade = flask_cli(env, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    created = flask_cli(
        env, "users", "create", "load@example.com", "--password", PASSWORD, "--tenant", "load",
        "--admin",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr

    clients, per_client = 8, 5
    with gunicorn(env, 4, tmp_path / "gunicorn.log") as server:
        sessions = [web_login(server.url, "load@example.com") for _ in range(clients)]

        def work(n: int) -> list[int]:
            session, statuses = sessions[n], []
            for i in range(per_client):
                token = csrf_token(session.get(server.url + "/keys/new", timeout=60).text)
                response = session.post(
                    server.url + "/keys/new",
                    data={
                        "name": f"load {n}-{i}",
                        "scopes": ["api:read"],
                        "expires_in_days": 30,
                        "csrf_token": token,
                    },
                    timeout=60,
                )
                statuses.append(response.status_code)
                if response.status_code == 200 and i % 2 == 0:
                    revoked = session.post(
                        f"{server.url}/keys/{_key_id(response.text)}/revoke",
                        data={"csrf_token": token},
                        allow_redirects=False,
                        timeout=60,
                    )
                    statuses.append(revoked.status_code)
            return statuses

        with ThreadPoolExecutor(clients) as pool:
            statuses = [s for batch in pool.map(work, range(clients)) for s in batch]
        log = server.log()
        pids = {pid for pid, _, path in server.access(settle=0.5) if path == "/keys/new"}

    assert "database is locked" not in log
    assert "Traceback" not in log
    assert set(statuses) <= {200, 302}, statuses
    assert statuses.count(200) == clients * per_client
    assert len(pids) >= 2, "the load should be spread over several workers"
    listed = flask_cli(env, "audit", "verify")
    assert listed.returncode == 0, listed.stdout + listed.stderr


def _key_id(reveal_html: str) -> str:
    return secret_from_page(reveal_html).split("_")[1]


def _spread(server, key: str, expect: int, workers: int, timeout: float = 60) -> set[int]:
    """Concurrent requests until every worker has answered `expect` (bounded in time).

    Every status the clients saw must be `expect`; returns the pids that answered it. (The
    access log is written just after the response, so lines can lag: it is only used to tell
    which worker answered, never to judge the answers.)"""
    deadline = time.monotonic() + timeout
    seen: list[int] = []

    def call(_: int) -> int:
        return requests.get(server.url + "/api/v1/me", headers=bearer(key), timeout=30).status_code

    pids: set[int] = set()
    with ThreadPoolExecutor(2 * workers) as pool:
        while time.monotonic() < deadline and len(pids) < workers:
            seen.extend(pool.map(call, range(2 * workers)))
            assert set(seen) == {expect}, seen
            pids = {pid for pid, status, path in server.access() if status == expect}
    return pids


def test_revocation_is_refused_by_every_worker(app, database_url, tmp_path):
    create_user(app)
    key = issue_key(app)
    env = server_env(database_url)
    with gunicorn(env, 3, tmp_path / "gunicorn.log") as server:
        assert len(_spread(server, key, 200, workers=3)) == 3, "every worker served the key"

        # Revoked by another process (this one), as an admin or the CLI would.
        with app.app_context():
            user = accounts.get_user_by_email("alice@example.com")
            row = keys.get_user_key(user=user, key_id=key.split("_")[1])
            keys.revoke_key(key=row, now=utcnow(), actor=Actor.cli())
            db.session.commit()

        assert len(_spread(server, key, 401, workers=3)) == 3, "every worker refused the key"


@pytest.fixture
def redis_prefix() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing(f"Redis unreachable at {REDIS_URL}: {exc}")
    prefix = f"keydesk-test-{secrets.token_hex(6)}"
    yield prefix
    for name in client.scan_iter(match=f"*{prefix}*"):
        client.delete(name)
    client.close()


def test_login_rate_limit_in_redis_holds_across_three_workers(tmp_path, redis_prefix):
    """5 sign-in attempts per minute for one account, whichever worker serves them.

    (The per-key API limit has its own test below.)"""
    db_url = f"sqlite:///{tmp_path / 'keydesk.sqlite3'}"
    env = server_env(
        db_url,
        KEYDESK_RATELIMIT_STORAGE_URI=REDIS_URL,
        KEYDESK_RATELIMIT_KEY_PREFIX=redis_prefix,
        KEYDESK_LOGIN_RATE_LIMIT="5 per minute",
    )
    assert flask_cli(env, "db", "upgrade").returncode == 0
    with gunicorn(env, 3, tmp_path / "gunicorn.log") as server:

        def attempt(_: int) -> int:
            session = requests.Session()
            token = csrf_token(session.get(server.url + "/login", timeout=30).text)
            return session.post(
                server.url + "/login",
                data={"email": "victim@example.com", "password": "wrong" * 3, "csrf_token": token},
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(attempt, range(18)))
        posts = [(pid, s) for pid, s, path in server.access(settle=0.5) if path == "/login"]
    assert statuses.count(401) == 5, statuses
    assert statuses.count(429) == 13, statuses
    assert len({pid for pid, status in posts if status in (401, 429)}) >= 2


def test_per_key_api_limit_in_redis_holds_across_three_workers(tmp_path, redis_prefix):
    """KEYDESK_API_RATE_LIMIT=5 per minute for one key: 5 answers in all, whichever worker."""
    db_url = f"sqlite:///{tmp_path / 'keydesk.sqlite3'}"
    env = server_env(
        db_url,
        KEYDESK_RATELIMIT_STORAGE_URI=REDIS_URL,
        KEYDESK_RATELIMIT_KEY_PREFIX=redis_prefix,
        KEYDESK_API_RATE_LIMIT="5 per minute",
    )
    assert flask_cli(env, "db", "upgrade").returncode == 0
    created = flask_cli(env, "users", "create", "bot@example.com", "--password",
                        "a long test passphrase 42", "--tenant", "acme")  # fmt: skip
    assert created.returncode == 0, created.stderr
    issued = flask_cli(env, "keys", "issue", "--email", "bot@example.com", "--name", "ci")
    assert issued.returncode == 0, issued.stderr
    key = issued.stdout.strip()
    with gunicorn(env, 3, tmp_path / "gunicorn.log") as server:

        def call(_: int) -> requests.Response:
            return requests.get(server.url + "/api/v1/me", headers=bearer(key), timeout=30)

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(call, range(18)))
        answered = [(pid, s) for pid, s, path in server.access(settle=0.5) if path == "/api/v1/me"]
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 5, statuses
    assert statuses.count(429) == 13, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) > 0
    assert len({pid for pid, status in answered}) >= 2, "the calls were spread over workers"
