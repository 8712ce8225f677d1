"""clients/python against a live Keydesk (gunicorn on a free port, migrated SQLite): the
`keydesk` command's device-flow login and key commands, the Python API and KeyVerifier."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests

# clients/python, installed into the venv by the Makefile (pip install -e ./clients/python).
from keydesk_client import Keydesk, KeydeskError, KeyVerifier

from tests.servers import BIN, PASSWORD, csrf_token, flask_cli, gunicorn, server_env, web_login

KEY_RE = re.compile(r"^kd_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}$")
TOKEN_RE = re.compile(r"kdu_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}")
EMAIL = "dev@example.com"


class Server:
    def __init__(self, server, env: dict, client_key: str) -> None:
        self.server, self.url, self.env, self.client_key = server, server.url, env, client_key

    def count(self, path: str) -> int:
        return sum(1 for _, _, p in self.server.access(settle=0.2) if p == path)


@pytest.fixture(scope="module")
def keydesk(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    env = server_env(f"sqlite:///{root / 'keydesk.sqlite3'}", KEYDESK_DEVICE_POLL_INTERVAL="1")
    for args in (
        ("db", "upgrade"),
        ("users", "create", EMAIL, "--password", PASSWORD, "--tenant", "acme", "--admin"),
    ):
        done = flask_cli(env, *args)
        assert done.returncode == 0, done.stderr
    issued = flask_cli(env, "client-keys", "issue", "--name", "verifier")
    assert issued.returncode == 0, issued.stderr
    with gunicorn(env, 1, root / "gunicorn.log") as server:
        yield Server(server, env, issued.stdout.strip())


def cli_env(config: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYDESK_")}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env.update(XDG_CONFIG_HOME=str(config), **extra)
    return env


def keydesk_cmd(config: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "keydesk"), *args],
        env=cli_env(config, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def approve_in_browser(base: str, user_code: str, decision: str = "approve") -> None:
    browser = web_login(base, EMAIL)
    page = browser.get(f"{base}/device", params={"user_code": user_code}, timeout=30)
    assert page.status_code == 200 and user_code in page.text
    done = browser.post(
        f"{base}/device",
        data={"csrf_token": csrf_token(page.text), "user_code": user_code, "decision": decision},
        timeout=30,
    )
    assert done.status_code == 200, done.text[:300]


def cli_login(keydesk, config: Path, decision: str = "approve") -> subprocess.CompletedProcess:
    """`keydesk login` as a person runs it: read the code it prints, approve it on /device."""
    proc = subprocess.Popen(
        [str(BIN / "keydesk"), "login", "--url", keydesk.url],
        env=cli_env(config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        match = re.search(r"enter the code: ([A-Z]{4}-[A-Z]{4})", line)
        if match:
            approve_in_browser(keydesk.url, match.group(1), decision)
            break
        if not line and proc.poll() is not None:
            break
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, err)


@pytest.fixture(scope="module")
def config(keydesk, tmp_path_factory) -> Path:
    """A signed-in CLI configuration folder."""
    config = tmp_path_factory.mktemp("config")
    done = cli_login(keydesk, config)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return config


def stored_token(config: Path) -> str:
    import json

    return json.loads((config / "keydesk" / "credentials.json").read_text())["token"]


# --- the command ----------------------------------------------------------------------


def test_login_prints_code_and_url_and_stores_the_token_0600(keydesk, config):
    path = config / "keydesk" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = stored_token(config)
    assert TOKEN_RE.fullmatch(token)
    me = requests.get(
        keydesk.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert me.json()["key"]["kind"] == "user_token"
    whoami = keydesk_cmd(config, "whoami")
    assert whoami.returncode == 0 and EMAIL in whoami.stdout and "acme" in whoami.stdout
    assert token not in whoami.stdout + whoami.stderr


def test_login_output_shows_code_and_url_but_no_token(keydesk, tmp_path):
    done = cli_login(keydesk, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{keydesk.url}/device" in done.stdout
    assert re.search(r"enter the code: [A-Z]{4}-[A-Z]{4}", done.stdout)
    assert not TOKEN_RE.search(done.stdout + done.stderr)
    assert f"Signed in to {keydesk.url} as {EMAIL}" in done.stdout


def test_denied_login_fails_in_one_line_and_stores_nothing(keydesk, tmp_path):
    done = cli_login(keydesk, tmp_path, decision="deny")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "access_denied" in done.stderr
    assert not (tmp_path / "keydesk" / "credentials.json").exists()


def test_keys_create_prints_only_a_working_key(keydesk, config):
    done = keydesk_cmd(config, "keys", "create", "--name", "ci", "--scope", "api:read")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert KEY_RE.match(key) and done.stdout == key + "\n"
    me = requests.get(keydesk.url + "/api/v1/me", headers={"Authorization": f"Bearer {key}"},
                      timeout=30)  # fmt: skip
    assert me.status_code == 200 and me.json()["key"]["scopes"] == ["api:read"]
    assert me.json()["key"]["expires_at"] is None


def test_keys_list_show_rotate_revoke(keydesk, config):
    import json

    created = keydesk_cmd(
        config, "keys", "create", "--name", "deploy", "--scope", "api:write",
        "--expires-in-days", "90",
    )  # fmt: skip
    key_id = created.stdout.strip().split("_")[1]
    listing = keydesk_cmd(config, "keys", "list")
    assert listing.returncode == 0 and key_id in listing.stdout and "deploy" in listing.stdout
    assert "kd_" not in listing.stdout  # ids, never secrets
    as_json = json.loads(keydesk_cmd(config, "keys", "list", "--json").stdout)
    assert key_id in [k["id"] for k in as_json]
    assert stored_token(config).split("_")[1] not in [k["id"] for k in as_json]
    shown = keydesk_cmd(config, "keys", "show", key_id)
    assert shown.returncode == 0 and "api:write" in shown.stdout
    shown_json = json.loads(keydesk_cmd(config, "keys", "show", key_id, "--json").stdout)
    assert shown_json["expires_at"] - shown_json["created_at"] == 90 * 86400

    rotated = keydesk_cmd(config, "keys", "rotate", key_id, "--grace-hours", "0")
    assert rotated.returncode == 0, rotated.stderr
    assert KEY_RE.match(rotated.stdout.strip()) and rotated.stdout.count("\n") == 1
    assert (
        json.loads(keydesk_cmd(config, "keys", "show", key_id, "--json").stdout)["status"]
        == "rotated"
    )
    new_id = rotated.stdout.strip().split("_")[1]
    revoked = keydesk_cmd(config, "keys", "revoke", new_id)
    assert revoked.returncode == 0 and new_id in revoked.stdout
    again = keydesk_cmd(config, "keys", "revoke", new_id)
    assert again.returncode == 1 and again.stderr.count("\n") == 1


def test_keys_edit(keydesk, config):
    key_id = keydesk_cmd(config, "keys", "create", "--name", "old", "--scope", "api:read"
                         ).stdout.strip().split("_")[1]  # fmt: skip
    probe = requests.patch(
        f"{keydesk.url}/api/v1/tenant/acme/api-keys/{key_id}",
        json={"name": "new"},
        headers={"Authorization": f"Bearer {stored_token(config)}"},
        timeout=30,
    )
    if probe.status_code == 405:
        pytest.skip("this Keydesk has no PATCH /api-keys/<id> yet (SPEC 'Keys after creation')")
    edited = keydesk_cmd(config, "keys", "edit", key_id, "--name", "renamed")
    assert edited.returncode == 0, edited.stderr
    assert "renamed" in keydesk_cmd(config, "keys", "show", key_id).stdout


def test_keydesk_url_and_token_override_for_ci(keydesk, tmp_path):
    issued = flask_cli(
        keydesk.env, "keys", "issue", "--email", EMAIL, "--name", "ci admin",
        "--scope", "keys:read", "--scope", "keys:write", "--scope", "api:read",
    )  # fmt: skip
    token = issued.stdout.strip()
    done = keydesk_cmd(
        tmp_path, "keys", "create", "--name", "from ci", "--scope", "api:read",
        "--expires-in-days", "0", KEYDESK_URL=keydesk.url, KEYDESK_TOKEN=token,
    )  # fmt: skip
    # an API key may not mint a never-expiring key if it expires itself; this one never does
    assert done.returncode == 0, done.stderr
    assert KEY_RE.match(done.stdout.strip())
    assert not (tmp_path / "keydesk").exists()  # nothing written


@pytest.mark.parametrize(
    ("args", "extra", "code", "words"),
    [
        (("keys", "show", "AAAAAAAAAAAA"), {}, 1, "No such key"),
        (("keys", "show", "../../admin"), {}, 1, "No such key"),
        (("keys", "create", "--name", "x"), {}, 1, "--scope"),
        (("keys", "create", "--name", "x", "--scope", "nope:nope"), {}, 1, "Unknown scope"),
        (("keys", "create", "--name", "n" * 101, "--scope", "api:read"), {}, 1, "Name"),
        (("keys", "rotate", "AAAAAAAAAAAA", "--grace-hours", "999"), {}, 1, ""),
        (("keys", "create", "--scope", "api:read"), {}, 2, "--name"),
        (("keys", "list"), {"KEYDESK_TOKEN": "kdu_nope"}, 3, "login"),
        (("nonsense",), {}, 2, "invalid choice"),
    ],
)
def test_errors_are_one_line_with_a_non_zero_exit(keydesk, config, args, extra, code, words):
    if extra:
        extra = {"KEYDESK_URL": keydesk.url, **extra}
    done = keydesk_cmd(config, *args, **extra)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert words in done.stderr
    assert done.stdout == ""


def test_not_signed_in_and_unreachable(tmp_path):
    done = keydesk_cmd(tmp_path, "keys", "list")
    assert done.returncode == 3 and "keydesk login" in done.stderr
    from tests.servers import free_port

    gone = keydesk_cmd(
        tmp_path, "whoami", KEYDESK_URL=f"http://127.0.0.1:{free_port()}", KEYDESK_TOKEN="x"
    )
    assert gone.returncode == 1 and "Cannot reach Keydesk" in gone.stderr
    assert gone.stderr.count("\n") == 1


def test_logout_ends_the_token_at_the_server(keydesk, tmp_path):
    assert cli_login(keydesk, tmp_path).returncode == 0
    token = stored_token(tmp_path)
    done = keydesk_cmd(tmp_path, "logout")
    assert done.returncode == 0 and not (tmp_path / "keydesk" / "credentials.json").exists()
    me = requests.get(keydesk.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"},
                      timeout=30)  # fmt: skip
    assert me.status_code == 401
    after = keydesk_cmd(tmp_path, "whoami")
    assert after.returncode == 3


# --- the Python API ---------------------------------------------------------------------


def test_python_api_creates_90_day_and_never_expiring_keys(keydesk, config):
    with Keydesk(keydesk.url, stored_token(config)) as api:
        me = api.me()
        assert (me.email, me.tenant_slug, me.kind) == (EMAIL, "acme", "user_token")
        ninety = api.create_key("seed 90", ["api:read", "api:write"], expires_in_days=90)
        never = api.create_key("seed forever", ["api:read"], expires_in_days=0)
        assert ninety.key.expires_at - ninety.key.created_at == 90 * 86400
        assert never.key.expires_at is None and KEY_RE.match(never.api_key)
        assert never.api_key not in repr(never)
        assert {ninety.key.id, never.key.id} <= {k.id for k in api.list_keys()}
        assert api.get_key(never.key.id).name == "seed forever"
        with pytest.raises(KeydeskError) as refused:
            api.create_key("bad", ["nope:nope"])
        assert refused.value.error == "invalid_request" and refused.value.status == 400
        assert "Unknown scope" in refused.value.error_description
        api.revoke_key(ninety.key.id)
        assert api.get_key(ninety.key.id).status == "revoked"


# --- the verifier -----------------------------------------------------------------------


def _key(keydesk, *scopes: str) -> str:
    args = ["keys", "issue", "--email", EMAIL, "--name", "svc"]
    for scope in scopes:
        args += ["--scope", scope]
    done = flask_cli(keydesk.env, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_verifier_checks_the_checksum_locally_then_asks_keydesk(keydesk):
    verifier = KeyVerifier(keydesk.url, keydesk.client_key)
    key = _key(keydesk, "deploy:staging")
    result = verifier.verify(key)
    assert result.valid and result.scopes == ["deploy:staging"] and result.tenant == "acme"
    assert result.owner == EMAIL and result.has_scopes("deploy:staging")
    assert not result.has_scopes("deploy:production")
    asked = keydesk.count("/api/v1/keys/verify")
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    for bad in (typo, "", "kd_short", "x" * 10_000, "\u202e" + key):
        assert verifier.verify(bad).reason == "invalid"
    assert keydesk.count("/api/v1/keys/verify") == asked  # no request for any of them
    assert verifier.requests == 1
    # no positive cache by default: a revocation is seen at once
    with Keydesk(keydesk.url, _key(keydesk, "keys:write", "keys:read")) as api:
        api.revoke_key(result.key_id)
    assert verifier.verify(key).reason == "revoked"


def test_verifier_cache_is_opt_in_and_trades_freshness(keydesk):
    cached = KeyVerifier(keydesk.url, keydesk.client_key, cache_seconds=60)
    key = _key(keydesk, "api:read")
    assert cached.verify(key).valid and cached.verify(key).valid
    assert cached.requests == 1
    with Keydesk(keydesk.url, _key(keydesk, "keys:write", "keys:read")) as api:
        api.revoke_key(key.split("_")[1])
    assert cached.verify(key).valid  # the documented trade-off: up to cache_seconds late
    assert not KeyVerifier(keydesk.url, keydesk.client_key).verify(key).valid


def test_verifier_raises_when_keydesk_refuses_it(keydesk):
    with pytest.raises(KeydeskError) as refused:
        KeyVerifier(keydesk.url, _key(keydesk, "api:read")).verify(_key(keydesk, "api:read"))
    assert refused.value.status == 403 and refused.value.error == "insufficient_scope"


def test_require_key_decorator(keydesk):
    from flask import Flask, g

    verifier = KeyVerifier(keydesk.url, keydesk.client_key)
    service = Flask("service")

    @service.get("/deploy")
    @verifier.require_key("deploy:production")
    def deploy():
        return {"deployed_by": g.keydesk_key.owner}

    down = KeyVerifier("http://127.0.0.1:9", keydesk.client_key)  # nothing listens there
    service.add_url_rule("/down", "down", down.require_key()(lambda: "no"))
    web = service.test_client()
    good = _key(keydesk, "deploy:production")
    assert web.get("/deploy", headers={"Authorization": f"Bearer {good}"}).json == {
        "deployed_by": EMAIL
    }
    missing = web.get("/deploy")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = web.get("/deploy", headers={"Authorization": f"Bearer {_key(keydesk, 'api:read')}"})
    assert wrong.status_code == 403 and wrong.json["error"] == "insufficient_scope"
    typo_key = good[:-1] + ("x" if good[-1] != "x" else "y")  # a real typo: never the same key
    typo = web.get("/deploy", headers={"Authorization": f"Bearer {typo_key}"})
    assert typo.status_code == 401 and typo.json["error"] == "invalid_token"
    basic = web.get("/deploy", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert basic.status_code == 400
    assert web.get("/down", headers={"Authorization": f"Bearer {good}"}).status_code == 503
