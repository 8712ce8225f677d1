"""The operator commands, through Flask's CLI runner."""

import pytest
from sqlalchemy import func, select

from app.accounts import service as accounts
from app.extensions import db
from app.models import ApiKey, Tenant, User
from tests.conftest import KEY_RE, PASSWORD, bearer, create_user


def run(runner, *args):
    return runner.invoke(args=list(args))


def one_error_line(result) -> str:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_users_create_creates_tenant_when_missing(app, runner):
    result = run(
        runner, "users", "create", "Ops@Example.com", "--password", PASSWORD,
        "--tenant", "ops", "--tenant-name", "Ops Team", "--admin",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ops@example.com" in result.stdout
    with app.app_context():
        user = accounts.get_user_by_email("ops@example.com")
        assert user.role == "admin"
        assert (user.tenant.slug, user.tenant.name) == ("ops", "Ops Team")
    # a second user joins the existing tenant as a member
    result = run(
        runner, "users", "create", "b@example.com", "--password", PASSWORD, "--tenant", "ops"
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Tenant)).scalar_one() == 1
        assert accounts.get_user_by_email("b@example.com").role == "member"
    # and can sign in
    client = app.test_client()
    response = client.post("/login", data={"email": "b@example.com", "password": PASSWORD})
    assert response.status_code == 302


def test_users_create_duplicate_email_fails_with_one_line(app, runner):
    run(runner, "users", "create", "a@example.com", "--password", PASSWORD, "--tenant", "t1")
    result = run(
        runner, "users", "create", "A@example.com", "--password", PASSWORD, "--tenant", "t2"
    )
    assert "already exists" in one_error_line(result)
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(User)).scalar_one() == 1
        assert accounts.get_tenant_by_slug("t2") is None  # nothing half-created


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["not-an-email", "--password", PASSWORD, "--tenant", "t"], "valid email"),
        (["x@example.com", "--password", PASSWORD, "--tenant", "Bad Slug!"], "slug"),
    ],
)
def test_users_create_bad_input(runner, args, words):
    assert words in one_error_line(run(runner, "users", "create", *args))


def test_users_create_weak_password_warns_on_stderr(runner):
    result = run(runner, "users", "create", "w@example.com", "--password", "short", "--tenant", "t")
    assert result.exit_code == 0
    assert "weak password" in result.stderr
    assert "weak" not in result.stdout


def test_keys_issue_prints_only_the_key(app, runner, client):
    create_user(app)
    result = run(
        runner, "keys", "issue", "--email", "alice@example.com", "--name", "deploy",
        "--scope", "api:read", "--scope", "deploy:staging", "--expires-in-days", "30",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert KEY_RE.fullmatch(result.stdout.strip())
    assert result.stdout.count("\n") == 1
    me = client.get("/api/v1/me", headers=bearer(result.stdout.strip())).json
    assert me["key"]["name"] == "deploy"
    assert me["key"]["scopes"] == ["api:read", "deploy:staging"]
    assert me["key"]["expires_at"] - me["key"]["created_at"] == 30 * 86400


def test_keys_issue_defaults_to_api_read_and_never_expires(app, runner, client):
    create_user(app)
    result = run(runner, "keys", "issue", "--email", "alice@example.com", "--name", "d")
    me = client.get("/api/v1/me", headers=bearer(result.stdout.strip())).json
    assert me["key"]["scopes"] == ["api:read"] and me["key"]["expires_at"] is None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--email", "nobody@example.com", "--name", "x"], "No user"),
        (["--email", "alice@example.com", "--name", "x", "--scope", "root:all"], "Unknown scope"),
        (["--email", "alice@example.com", "--name", "x", "--expires-in-days", "-1"], "between"),
        (["--email", "alice@example.com", "--name", ""], "Name"),
        (["--email", "alice@example.com", "--name", "x" * 101], "Name"),
    ],
)
def test_keys_issue_bad_input_fails_with_one_line(app, runner, args, words):
    create_user(app)
    line = one_error_line(run(runner, "keys", "issue", *args))
    assert words in line
    with app.app_context():
        assert db.session.execute(select(ApiKey)).first() is None


def test_seed_creates_keys_and_prints_a_working_key_last(app, runner, client):
    result = run(runner, "seed", "--keys", "200")
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert KEY_RE.fullmatch(last)
    me = client.get("/api/v1/me", headers=bearer(last))
    assert me.status_code == 200
    assert me.json["key"]["scopes"] == ["api:read", "api:write"]
    assert me.json["tenant"]["slug"] == "demo"
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(ApiKey)).scalar_one() == 200
    # seeding again adds to the same tenant and owners
    again = run(runner, "seed", "--keys", "10", "--tenant", "demo")
    assert again.exit_code == 0, again.output
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(ApiKey)).scalar_one() == 210
        assert db.session.execute(select(func.count()).select_from(User)).scalar_one() == 10


def test_seeded_keys_show_in_the_portal_without_errors(app, runner):
    run(runner, "seed", "--keys", "100")
    with app.app_context():
        email = db.session.execute(select(User.email).order_by(User.id)).scalars().first()
        user = accounts.get_user_by_email(email)
        user.password_hash = __import__(
            "app.accounts.passwords", fromlist=["hash_password"]
        ).hash_password(PASSWORD)
        db.session.commit()
    client = app.test_client()
    assert client.post("/login", data={"email": email, "password": PASSWORD}).status_code == 302
    page = client.get("/keys")
    assert page.status_code == 200 and "seed key" in page.get_data(as_text=True)


@pytest.mark.parametrize(
    "args", [["--keys", "0"], ["--keys", "-5"], ["--keys", "1", "--tenant", "Bad!"]]
)
def test_seed_bad_input(runner, args):
    one_error_line(run(runner, "seed", *args))


def test_client_keys_issue_list_revoke(app, runner, client):
    issued = run(runner, "client-keys", "issue", "--name", "billing service")
    assert issued.exit_code == 0, issued.output
    key = issued.stdout.strip()
    assert KEY_RE.fullmatch(key) and issued.stdout.count("\n") == 1
    me = client.get("/api/v1/me", headers=bearer(key)).json
    assert me["user"] is None and me["tenant"] is None

    listing = run(runner, "client-keys", "list")
    assert listing.exit_code == 0
    key_id = key.split("_")[1]
    line = next(row for row in listing.stdout.splitlines() if key_id in row)
    assert "active" in line and "billing service" in line
    assert key not in listing.output

    revoked = run(runner, "client-keys", "revoke", key_id)
    assert revoked.exit_code == 0, revoked.output
    assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401
    assert "revoked" in next(
        row for row in run(runner, "client-keys", "list").stdout.splitlines() if key_id in row
    )
    assert "already revoked" in one_error_line(run(runner, "client-keys", "revoke", key_id))


def test_client_keys_list_empty_and_unknown_revoke(runner):
    assert "No client keys" in run(runner, "client-keys", "list").stdout
    assert "No client key" in one_error_line(run(runner, "client-keys", "revoke", "nope"))


def test_client_keys_revoke_refuses_a_user_key(app, runner):
    create_user(app)
    key = run(runner, "keys", "issue", "--email", "alice@example.com", "--name", "u").stdout
    one_error_line(run(runner, "client-keys", "revoke", key.split("_")[1]))


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "issue", "--email", "a@example.com", "--name", "x", "--expires-in-days", "abc"],
        ["keys", "issue", "--name", "x"],
        ["users", "create", "a@example.com"],
        ["seed"],
        ["seed", "--keys", "many"],
        ["client-keys", "issue"],
    ],
)
def test_usage_errors_are_one_line_too(runner, args):
    line = one_error_line(run(runner, *args))
    assert line.startswith("Error: ") and "--" in line
