"""Operations in one process: /metrics, request ids, /livez and /readyz, backup, doctor.

The real multi-worker checks (a Prometheus scrape of two gunicorn workers, JSON log
lines, a backup while gunicorn writes) are in test_operations_servers.py.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text

from app import create_app
from app.extensions import db
from app.models import ApiKey
from tests.conftest import FAST_ARGON2, bearer, create_user, issue_key, pg_connect

TOKEN = "m3tr1cs-t0ken-0123456789abcdefghijklmnop"
METRICS = [{"KEYDESK_METRICS_TOKEN": TOKEN}]
STRONG = "9f2c1e7a4b8d3f6e0a5c9b2d7e1f4a8c3b6d9e2f5a8c1b4d7e0f3a6c9b2e5d8"


def scrape(client) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    response = client.get("/metrics", headers=bearer(TOKEN))
    assert response.status_code == 200, response.data
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def outcome(samples, name: str) -> float:
    return samples[("keydesk_api_auth_total", (("outcome", name),))]


def _set_key(app, key_id: str, **values) -> None:
    with app.app_context():
        row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()
        for name, value in values.items():
            setattr(row, name, value)
        db.session.commit()


def _garble(full: str) -> str:
    """The same key with its last character changed: a bad checksum."""
    return full[:-1] + ("A" if full[-1] != "A" else "B")


def _key_id(full: str) -> str:
    return full.split("_")[1]


# --- /metrics -------------------------------------------------------------------------


def test_metrics_is_404_unless_a_token_is_set(client):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers=bearer("anything")).status_code == 404


@pytest.mark.parametrize("app_config", METRICS, indirect=True)
@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer wrong",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        "Bearer " + "A" * 10_000,
        "Bearer \x00",
        "Bearer \udcff",
    ],
)
def test_metrics_refuses_anything_but_the_token(client, header):
    headers = {} if header is None else {"Authorization": header}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert "keydesk_" not in response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("app_config", METRICS, indirect=True)
def test_every_auth_outcome_is_counted_once(app, client, user):
    valid = issue_key(app, scopes=("api:read",))
    expired = issue_key(app, scopes=("api:read",))
    revoked = issue_key(app, scopes=("api:read",))
    fenced = issue_key(app, scopes=("api:read",))
    _set_key(app, _key_id(expired), expires_at=_now() - timedelta(days=1))
    _set_key(app, _key_id(revoked), revoked_at=_now() - timedelta(hours=1))
    _set_key(app, _key_id(fenced), allowed_ips="10.0.0.0/8")
    cases = [
        ("valid", lambda: client.get("/api/v1/me", headers=bearer(valid)), 200),
        ("invalid", lambda: client.get("/api/v1/me", headers=bearer(_garble(valid))), 401),
        ("invalid", lambda: client.get("/api/v1/me"), 401),
        ("expired", lambda: client.get("/api/v1/me", headers=bearer(expired)), 401),
        ("revoked", lambda: client.get("/api/v1/me", headers=bearer(revoked)), 401),
        (
            "insufficient_scope",
            lambda: client.post(
                "/api/v1/resources", json={"name": "x", "type": "y"}, headers=bearer(valid)
            ),
            403,
        ),  # fmt: skip
        ("ip_not_allowed", lambda: client.get("/api/v1/me", headers=bearer(fenced)), 403),
    ]
    for name, call, status in cases:
        before = scrape(client)
        assert call().status_code == status, name
        after = scrape(client)
        changed = {o: outcome(after, o) - outcome(before, o) for o in _outcomes()}
        assert changed == {o: (1 if o == name else 0) for o in _outcomes()}, name


@pytest.mark.parametrize(
    "app_config", [{**METRICS[0], "KEYDESK_API_RATE_LIMIT": "2 per minute"}], indirect=True
)
def test_rate_limited_outcome_and_refusals_are_counted(app, client, user):
    key = issue_key(app)
    before = scrape(client)
    statuses = [client.get("/api/v1/me", headers=bearer(key)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    after = scrape(client)
    assert outcome(after, "rate_limited") - outcome(before, "rate_limited") == 1
    assert outcome(after, "valid") - outcome(before, "valid") == 2
    refusals = ("keydesk_rate_limit_refusals_total", (("limit", "api_key"),))
    assert after[refusals] - before[refusals] == 1


@pytest.mark.parametrize("app_config", METRICS, indirect=True)
def test_keys_issued_revoked_and_leaked_are_counted_at_commit(app, client, user):
    writer = issue_key(app, scopes=("keys:read", "keys:write"))
    issued = ("keydesk_keys_issued_total", (("kind", "user"),))
    revoked, leaked = ("keydesk_keys_revoked_total", ()), ("keydesk_keys_leaked_total", ())
    before = scrape(client)
    created = client.post(
        "/api/v1/tenant/acme/api-keys/create",
        json={"name": "ci", "scopes": ["keys:read"], "expires_in_days": 30},
        headers=bearer(writer),
    )
    assert created.status_code == 201
    second = client.post(
        "/api/v1/tenant/acme/api-keys/create",
        json={"name": "ci2", "scopes": ["keys:read"], "expires_in_days": 30},
        headers=bearer(writer),
    ).json
    assert client.post(
        f"/api/v1/tenant/acme/api-keys/{created.json['id']}/revoke", headers=bearer(writer)
    ).status_code == 200  # fmt: skip
    leak = client.post("/api/v1/keys/report-leak", json={"key": second["api_key"]})
    assert leak.status_code == 202
    after = scrape(client)
    assert after[issued] - before[issued] == 2
    assert after[revoked] - before[revoked] == 1
    assert after[leaked] - before[leaked] == 1

    # An issue that is rolled back never happened, so it is not counted.
    from app.accounts import service as accounts
    from app.audit import Actor
    from app.keys import service as keys

    with app.app_context():
        owner = accounts.get_user_by_email(user)
        keys.issue_key(
            user=owner, name="rolled back", scopes=("api:read",), expires_in_days=0,
            now=_now(), actor=Actor.cli(),
        )  # fmt: skip
        db.session.rollback()
    assert scrape(client)[issued] == after[issued]


@pytest.mark.parametrize("app_config", METRICS, indirect=True)
def test_invalidation_feed_state_is_exported(app, client, user):
    """On PostgreSQL the worker's key cache rides a feed: /metrics says whether this worker
    hears it (and so may serve from its cache); SQLite has no cache: the gauge stays 0."""
    key = issue_key(app, scopes=("api:read",))
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 200
    samples = scrape(client)
    mine = ("pid", str(os.getpid()))  # multiprocess gauges: one sample per live process
    connected = [
        v
        for (name, labels), v in samples.items()
        if name == "keydesk_invalidation_feed_connected" and (not labels or mine in labels)
    ]
    feed = app.extensions["keydesk.authenticator"].feed
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        assert feed is None  # no cache to serve from, so nothing to hear
    else:
        from app.keys.feed import status

        live = 1.0 if status(feed)["state"] == "live" else 0.0
        assert connected == [live]


@pytest.mark.parametrize("app_config", METRICS, indirect=True)
def test_request_histogram_labels_carry_no_ids(app, client, user):
    key = issue_key(app, scopes=("keys:read",))
    key_id = _key_id(key)
    assert (
        client.get(f"/api/v1/tenant/acme/api-keys/{key_id}", headers=bearer(key)).status_code == 200
    )
    assert (
        client.get(f"/api/v1/tenant/acme/api-keys/{'9' * 40}", headers=bearer(key)).status_code
        == 404
    )
    assert client.get("/no/such/page/123456789").status_code == 404
    assert client.open("/api/v1/me", method="BREW").status_code in (400, 405)
    samples = scrape(client)
    labels = {dict(lab).get("endpoint") for name, lab in samples if "duration" in name}
    methods = {dict(lab).get("method") for name, lab in samples if "duration" in name}
    text_ = client.get("/metrics", headers=bearer(TOKEN)).get_data(as_text=True)
    assert key_id not in text_ and "9" * 40 not in text_ and "123456789" not in text_
    assert "api.get_key" in labels or any(str(e).startswith("api.") for e in labels)
    assert "unmatched" in labels
    assert methods <= {None, "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    count = sum(
        value
        for (name, lab), value in samples.items()
        if name == "keydesk_http_request_duration_seconds_count"
        and dict(lab)["status"] == "4xx"
        and dict(lab)["endpoint"] == "unmatched"
    )
    assert count >= 1


# --- X-Request-Id -----------------------------------------------------------------------


@pytest.mark.parametrize("kept", ["a", "abc.DEF-1_2", "x" * 64, "0b7e1c2d-3f4a-4b5c-8d9e"])
def test_a_well_formed_request_id_is_kept(client, kept):
    for path in ("/api/v1/ping", "/api/v1/me", "/login", "/nowhere", "/livez"):
        assert client.get(path, headers={"X-Request-Id": kept}).headers["X-Request-Id"] == kept


@pytest.mark.parametrize(
    "bad", ["", "x" * 65, "has space", "semi;colon", "ümlaut", "a/b", "<script>", "\u202e"]
)
def test_a_malformed_request_id_is_replaced_not_echoed(client, bad):
    response = client.get("/api/v1/me", headers={"X-Request-Id": bad.encode().decode("latin-1")})
    rid = response.headers["X-Request-Id"]
    assert rid != bad and len(rid) == 32 and int(rid, 16) >= 0
    assert bad not in response.get_data(as_text=True) or bad == ""


def test_every_response_gets_a_fresh_request_id(client, user):
    seen = set()
    for path, method in [
        ("/api/v1/ping", "GET"), ("/api/v1/me", "GET"), ("/api/v1/nothing", "GET"),
        ("/keys", "GET"), ("/login", "POST"), ("/api/v1/ping", "DELETE"), ("/healthz", "GET"),
    ]:  # fmt: skip
        response = client.open(path, method=method)
        seen.add(response.headers["X-Request-Id"])
    assert len(seen) == 7


# --- /livez and /readyz -----------------------------------------------------------------


def _migrated_app(tmp_path, url: str, **config):
    app = create_app(
        {
            "TESTING": True, "SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": STRONG,
            "KEYDESK_KEY_PEPPER": STRONG[::-1], "KEYDESK_ARGON2": FAST_ARGON2,
            "RATELIMIT_STORAGE_URI": "memory://", **config,
        }
    )  # fmt: skip
    return app


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    """The URL of an empty database (no tables): SQLite file or a fresh PG database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ops.sqlite3'}"
        return
    request.getfixturevalue("pg_database")  # skips or fails as the suite does without PG
    name = f"keydesk_ops_{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    with pg_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _upgrade(app) -> None:
    """`flask db upgrade` in a subprocess, as an operator runs it (Alembic's env.py would
    reconfigure this process's logging)."""
    from tests.servers import flask_cli, server_env

    result = flask_cli(server_env(app.config["SQLALCHEMY_DATABASE_URI"]), "db", "upgrade")
    assert result.returncode == 0, result.stderr


def _dispose(app) -> None:
    with app.app_context():
        db.engine.dispose()
    app.extensions["keydesk.authenticator"].close_connections()


def test_readyz_needs_the_newest_migration(tmp_path, empty_database):
    app = _migrated_app(tmp_path, empty_database)
    try:
        client = app.test_client()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json["status"] == "unavailable"
        assert response.json["checks"]["database"] == "ok"
        assert "db upgrade" in response.json["checks"]["schema"]
        assert client.get("/livez").status_code == 200
        _upgrade(app)
        response = client.get("/readyz")
        assert response.status_code == 200, response.json
        assert response.json == {"status": "ok", "checks": {"database": "ok", "schema": "ok"}}
        assert response.headers["Cache-Control"] == "no-store"
        # An older schema than the code expects (a deploy without `db upgrade`).
        with app.app_context():
            db.session.execute(text("UPDATE alembic_version SET version_num = '0000'"))
            db.session.commit()
        response = client.get("/readyz")
        assert response.status_code == 503 and "0000" in response.json["checks"]["schema"]
    finally:
        _dispose(app)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_livez_serves_while_readyz_names_a_dead_database(tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/nothing"
    app = _migrated_app(tmp_path, url)
    try:
        client = app.test_client()
        assert client.get("/livez").json == {"status": "ok"}
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json["checks"]["database"] == "unreachable"
        assert response.json["checks"]["schema"] != "ok"
        assert "password" not in response.get_data(as_text=True)
    finally:
        _dispose(app)


def test_readyz_checks_a_configured_redis(tmp_path):
    from tests.conftest import REDIS_URL

    url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    down = _migrated_app(
        tmp_path, url, RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{_closed_port()}/0"
    )
    _upgrade(down)
    response = down.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"] == {"database": "ok", "schema": "ok", "redis": "unreachable"}
    _dispose(down)
    up = _migrated_app(tmp_path, url, RATELIMIT_STORAGE_URI=REDIS_URL)
    response = up.test_client().get("/readyz")
    if response.json["checks"].get("redis") != "ok" and os.environ.get("CI") != "true":
        pytest.skip("Redis is not running")
    assert response.status_code == 200 and response.json["checks"]["redis"] == "ok"
    _dispose(up)


# --- backup ----------------------------------------------------------------------------


@pytest.fixture
def served_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    app = _migrated_app(tmp_path, url)
    _upgrade(app)
    create_user(app)
    keys = [issue_key(app, name=f"k{i}") for i in range(5)]
    yield app, tmp_path / "live.sqlite3", keys
    _dispose(app)


def _snapshot(path) -> dict:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in path.parent.iterdir()
        if p.name.startswith(path.name)
    }


def test_backup_writes_a_checked_private_copy(served_sqlite, tmp_path):
    app, source, keys = served_sqlite
    target = tmp_path / "copies" / "keydesk-backup.sqlite3"
    target.parent.mkdir()
    result = app.test_cli_runner().invoke(args=["backup", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and str(target) in result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no leftovers
    copy = sqlite3.connect(target)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ids = {row[0] for row in copy.execute("SELECT key_id FROM api_keys")}
    finally:
        copy.close()
    assert {_key_id(k) for k in keys} <= ids


@pytest.mark.parametrize("where", ["existing", "missing_dir", "parent_is_file", "proc"])
def test_backup_refuses_a_bad_target_in_one_line(served_sqlite, tmp_path, where):
    app, source, _ = served_sqlite
    existing = tmp_path / "existing.sqlite3"
    existing.write_bytes(b"precious")
    (tmp_path / "afile").write_text("x")
    target = {
        "existing": existing,
        "missing_dir": tmp_path / "no" / "such" / "dir" / "b.sqlite3",
        "parent_is_file": tmp_path / "afile" / "b.sqlite3",
        "proc": "/proc/keydesk-backup.sqlite3",  # unwritable even for root
    }[where]
    before = _snapshot(source)
    result = app.test_cli_runner().invoke(args=["backup", str(target)])
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0 and result.output.startswith("Error: ")
    assert "Traceback" not in result.output
    assert existing.read_bytes() == b"precious"
    assert _snapshot(source) == before  # the database was not touched


def test_backup_of_postgresql_points_to_pg_dump(tmp_path):
    from tests.conftest import PG_ADMIN_URL

    app = _migrated_app(tmp_path, PG_ADMIN_URL)
    target = tmp_path / "never-written.sqlite3"
    result = app.test_cli_runner().invoke(args=["backup", str(target)])
    assert result.exit_code != 0
    assert "pg_dump" in result.output and result.output.strip().count("\n") == 0
    assert not target.exists()
    _dispose(app)


# --- doctor ----------------------------------------------------------------------------


def _doctor(app, monkeypatch, **env):
    for name in ("KEYDESK_SECRET_KEY", "KEYDESK_KEY_PEPPER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = app.test_cli_runner().invoke(args=["doctor"])
    lines = result.output.splitlines()
    assert lines and all(line[:2] in ("✓ ", "⚠ ", "✗ ") for line in lines), result.output
    return result.exit_code, {line.split(":")[0][2:]: line for line in lines}


def test_doctor_passes_a_sound_setup_with_warnings(served_sqlite, monkeypatch):
    app, _, _ = served_sqlite
    code, lines = _doctor(
        app, monkeypatch, KEYDESK_SECRET_KEY=STRONG, KEYDESK_KEY_PEPPER=STRONG[::-1]
    )
    assert code == 0, lines
    assert lines["secret key"].startswith("✓") and "KEYDESK_SECRET_KEY" in lines["secret key"]
    assert lines["database"].startswith("✓") and lines["schema"].startswith("✓")
    assert lines["rate limits"].startswith("⚠") and "redis://" in lines["rate limits"]
    assert lines["mail"].startswith("⚠") and "KEYDESK_MAIL_URL" in lines["mail"]
    assert lines["metrics"].startswith("✓")
    assert STRONG not in "".join(lines.values())  # never prints a secret


def test_doctor_fails_placeholder_secrets_and_names_the_fix(app, monkeypatch):
    # The test app: SECRET_KEY "test-secret-key", schema made by create_all (no migration).
    code, lines = _doctor(app, monkeypatch)
    assert code == 1
    assert lines["secret key"].startswith("✗") and "secrets.token_hex" in lines["secret key"]
    assert lines["key pepper"].startswith("✗")
    assert lines["schema"].startswith("✗") and "db upgrade" in lines["schema"]


def test_doctor_fails_an_unreachable_database_and_redis(tmp_path, monkeypatch):
    url = f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{_closed_port()}/nothing"
    redis = f"redis://:redispass@127.0.0.1:{_closed_port()}/0"
    app = _migrated_app(tmp_path, url, RATELIMIT_STORAGE_URI=redis, KEYDESK_METRICS_TOKEN="short")
    try:
        code, lines = _doctor(app, monkeypatch)
    finally:
        _dispose(app)
    assert code == 1
    assert lines["database"].startswith("✗") and lines["redis"].startswith("✗")
    assert lines["metrics"].startswith("✗") and "5 characters" in lines["metrics"]
    assert "hunter2" not in str(lines) and "redispass" not in str(lines)


def test_doctor_compares_trusted_proxies_with_forwarded_requests(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    seen = tmp_path / "forwarded.json"
    plain = _migrated_app(tmp_path, url, KEYDESK_FORWARDED_LOG=str(seen))
    _upgrade(plain)
    env = {"KEYDESK_SECRET_KEY": STRONG, "KEYDESK_KEY_PEPPER": STRONG[::-1]}
    assert _doctor(plain, monkeypatch, **env)[1]["trusted proxies"].startswith("✓")
    plain.test_client().get("/api/v1/ping", headers={"X-Forwarded-For": "203.0.113.9"})
    code, lines = _doctor(plain, monkeypatch, **env)
    assert code == 0 and lines["trusted proxies"].startswith("⚠")
    assert "KEYDESK_TRUSTED_PROXIES=1" in lines["trusted proxies"]
    _dispose(plain)
    # Two hops trusted, but requests come through one proxy: clients could spoof.
    two = _migrated_app(tmp_path, url, KEYDESK_FORWARDED_LOG=str(seen), KEYDESK_TRUSTED_PROXIES=2)
    code, lines = _doctor(two, monkeypatch, **env)
    assert code == 1 and lines["trusted proxies"].startswith("✗")
    assert "KEYDESK_TRUSTED_PROXIES=1" in lines["trusted proxies"]
    _dispose(two)


def _now():
    from app.clock import utcnow

    return utcnow()


def _outcomes():
    from app.metrics import OUTCOMES

    return OUTCOMES


@pytest.mark.parametrize(
    "app_config", [{**METRICS[0], "KEYDESK_LOGIN_RATE_LIMIT": "1 per minute"}], indirect=True
)
def test_portal_sign_in_refusals_are_counted(client, user):
    sign_in = ("keydesk_rate_limit_refusals_total", (("limit", "portal"),))
    before = scrape(client)
    statuses = [
        client.post("/login", data={"email": user, "password": "wrong"}).status_code
        for _ in range(3)
    ]
    assert statuses[-1] == 429
    assert scrape(client)[sign_in] - before[sign_in] == statuses.count(429)


def test_batched_histogram_matches_observe_and_counts_are_exact_under_flushes():
    import threading

    from prometheus_client import REGISTRY

    from app.metrics import AUTH, BATCH

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    key = ("test.batch", "GET", "2xx")
    labels = dict(zip(("endpoint", "method", "status"), key, strict=True))
    bucket = "keydesk_http_request_duration_seconds_bucket"
    for seconds in (0.0005, 0.003, 0.003, 20.0):
        BATCH.time(key, seconds)
    BATCH.flush()
    assert sample(bucket, le="0.001", **labels) == 1
    assert sample(bucket, le="0.005", **labels) == 3
    assert sample(bucket, le="10.0", **labels) == 3
    assert sample(bucket, le="+Inf", **labels) == 4
    assert sample("keydesk_http_request_duration_seconds_sum", **labels) == pytest.approx(20.0065)
    BATCH.time(key, 0.2)
    BATCH.flush()
    assert sample(bucket, le="0.25", **labels) == 4 and sample(bucket, le="+Inf", **labels) == 5

    # One request thread counting while another flushes over and over: nothing lost.
    child = AUTH["ip_not_allowed"]
    before = child._value.get()
    done = threading.Event()

    def flusher():
        while not done.is_set():
            BATCH.flush()

    thread = threading.Thread(target=flusher)
    thread.start()
    for _ in range(50_000):
        BATCH.count(child)
    done.set()
    thread.join()
    BATCH.flush()
    assert child._value.get() - before == 50_000
