"""`flask --app app doctor`: the configuration an operator can get wrong, one line a check.

Run it with the environment the server runs with (same KEYDESK_* variables, same
working directory). Each check is ok (✓), a warning (⚠: advice a healthy small setup
may ignore) or a failure (✗); every warning and failure says how to fix it. The
command exits 1 when any check fails.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask

from app import health
from app.observe import forwarded_path, read_forwarded

OK, WARN, FAIL = "ok", "warning", "fail"
MARKS = {OK: "✓", WARN: "⚠", FAIL: "✗"}
MIN_SECRET = 32
# Values seen in examples, tests and benchmarks: never a production secret.
KNOWN_WEAK = frozenset(
    {
        "secret", "secret-key", "secret_key", "changeme", "change-me", "change_me", "dev",
        "development", "test", "testing", "keydesk", "password", "pepper", "test-secret-key",
        "test-pepper", "bench-secret-key", "bench-pepper", "s", "p",
    }
)  # fmt: skip
GENERATE = "python3 -c 'import secrets; print(secrets.token_hex(32))'"
# Forwarded-header observations older than this are from another setup.
FORWARDED_WINDOW = 7 * 24 * 3600
SMTP_TIMEOUT = 5


@dataclass(frozen=True)
class Check:
    status: str
    name: str
    message: str

    def line(self) -> str:
        return f"{MARKS[self.status]} {self.name}: {self.message}"


def run(app: Flask, env: dict[str, str] | None = None) -> list[Check]:
    env = os.environ if env is None else env
    checks: list[Check] = []
    for step in _steps():
        checks.extend(step(app, env))
    return checks


def _steps() -> list[Callable[[Flask, dict], list[Check]]]:
    return [_secrets, _database, _rate_limits, _proxies, _mail, _metrics]


def _secrets(app: Flask, env: dict) -> list[Check]:
    found = []
    key, pepper = app.config["SECRET_KEY"], app.config["KEYDESK_KEY_PEPPER"]
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgres")
    for name, variable, file_name, value in (
        ("secret key", "KEYDESK_SECRET_KEY", "secret_key", key),
        ("key pepper", "KEYDESK_KEY_PEPPER", "key_pepper", pepper),
    ):
        found.append(_secret(app, env, name, variable, file_name, value, postgres))
    if key == pepper:
        found.append(
            Check(
                FAIL,
                "secrets",
                "KEYDESK_SECRET_KEY and KEYDESK_KEY_PEPPER are the same value: a leaked "
                "session key would also let key digests be checked offline; fix: give the "
                f"pepper its own value ({GENERATE}) — only before any key was issued, see "
                "SECURITY.md on rotating the pepper",
            )
        )
    return found


def _secret(app, env, name, variable, file_name, value, postgres) -> Check:
    path = Path(app.instance_path) / file_name
    fix = f"fix: set {variable} to a new random value ({GENERATE})"
    if variable == "KEYDESK_KEY_PEPPER":
        fix += "; changing the pepper invalidates every issued key"
    if value.strip().lower() in KNOWN_WEAK or len(set(value)) < 8:
        return Check(FAIL, name, f"a well-known placeholder value; {fix}")
    if len(value) < MIN_SECRET:
        return Check(FAIL, name, f"only {len(value)} characters (use {MIN_SECRET}+); {fix}")
    if env.get(variable):
        return Check(OK, name, f"set in {variable} ({len(value)} characters)")
    if path.is_file():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            return Check(
                FAIL, name, f"{path} is readable by others (mode {mode:04o}); fix: chmod 600 {path}"
            )
        if postgres:
            return Check(
                WARN,
                name,
                f"generated in {path}, shared only by the workers of this machine; every "
                f"machine serving this PostgreSQL database needs the same value: set {variable} "
                "on all of them (copy this file's content)",
            )
        return Check(OK, name, f"generated in {path} (mode 0600, shared by every worker here)")
    return Check(OK, name, f"set by the application's configuration ({len(value)} characters)")


def _database(app: Flask, env: dict) -> list[Check]:
    from sqlalchemy.engine import make_url

    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    where = (
        f"SQLite at {url.database}"
        if url.get_backend_name() == "sqlite"
        else f"{url.get_backend_name()} at {url.host or 'local socket'}"
        f"{':' + str(url.port) if url.port else ''}/{url.database}"
    )
    fix = "fix: check KEYDESK_DATABASE_URL and that the database server runs"
    with app.app_context():
        reachable = health.check_database(quiet=True) == health.OK
        if not reachable:
            return [
                Check(FAIL, "database", f"{where} does not answer; {fix}"),
                Check(FAIL, "schema", "cannot be checked while the database does not answer"),
            ]
        schema = health.check_schema(app)
    checks = [Check(OK, "database", f"{where} answers")]
    if schema == health.OK:
        heads = ", ".join(sorted(health.migration_heads(app)))
        checks.append(Check(OK, "schema", f"at the newest migration ({heads})"))
    else:
        checks.append(Check(FAIL, "schema", schema))
    return checks


def _rate_limits(app: Flask, env: dict) -> list[Check]:
    uri = app.config.get("RATELIMIT_STORAGE_URI") or "memory://"
    if uri.startswith("memory://"):
        return [
            Check(
                WARN,
                "rate limits",
                "kept in each worker's memory, so N workers allow N times each limit; fix "
                "with several workers or machines: KEYDESK_RATELIMIT_STORAGE_URI=redis://host:6379/0",
            )
        ]
    checks = []
    for name, url in health.redis_urls(app):
        shown = _without_password(url)
        if health.check_redis(app, url) == health.OK:
            checks.append(Check(OK, "redis", f"{shown} answers ({name})"))
        else:
            checks.append(
                Check(
                    FAIL,
                    "redis",
                    f"{shown} does not answer; fix: start Redis or correct "
                    f"KEYDESK_{name.removeprefix('KEYDESK_')}",
                )
            )
    return checks or [Check(OK, "rate limits", f"stored in {_without_password(uri)}")]


def _proxies(app: Flask, env: dict) -> list[Check]:
    trusted = app.config["KEYDESK_TRUSTED_PROXIES"]
    cutoff = time.time() - FORWARDED_WINDOW
    seen = {hops: at for hops, at in read_forwarded(forwarded_path(app)).items() if at >= cutoff}
    forwarded = sorted(hops for hops in seen if hops > 0)
    name = "trusted proxies"
    if not trusted:
        if forwarded:
            return [
                Check(
                    WARN,
                    name,
                    f"requests arrived with X-Forwarded-For ({_hops(forwarded[0])}) but "
                    "KEYDESK_TRUSTED_PROXIES=0, so the proxy's address stands for every client "
                    "in rate limits, allow-lists and the audit log; fix, if Keydesk is behind "
                    f"a proxy: KEYDESK_TRUSTED_PROXIES={forwarded[0]}",
                )
            ]
        return [Check(OK, name, "none trusted and no X-Forwarded-For seen")]
    if forwarded and forwarded[0] < trusted:
        return [
            Check(
                FAIL,
                name,
                f"KEYDESK_TRUSTED_PROXIES={trusted} but requests arrived with "
                f"{_hops(forwarded[0])}: a client can choose the address Keydesk sees by "
                f"sending its own X-Forwarded-For; fix: KEYDESK_TRUSTED_PROXIES={forwarded[0]}",
            )
        ]
    if 0 in seen:
        return [
            Check(
                WARN,
                name,
                f"KEYDESK_TRUSTED_PROXIES={trusted} but requests (other than health checks) "
                "arrived without X-Forwarded-For: something reaches Keydesk around the proxy; "
                "fix: let only the proxy connect to Keydesk",
            )
        ]
    if not forwarded:
        return [Check(OK, name, f"{trusted} trusted; no requests seen yet to compare")]
    return [Check(OK, name, f"{trusted} trusted, requests arrive with {_hops(forwarded[0])}")]


def _hops(count: int) -> str:
    return f"{count} hop" + ("" if count == 1 else "s")


def _mail(app: Flask, env: dict) -> list[Check]:
    url = app.config.get("KEYDESK_MAIL_URL") or ""
    if not url:
        return [
            Check(
                WARN,
                "mail",
                "not configured: no expiry reminders, invitation or password-reset mails are "
                "sent; fix: KEYDESK_MAIL_URL=smtp+starttls://user:password@host:587",
            )
        ]
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtp+starttls", "smtps") or not parts.hostname:
        return [Check(FAIL, "mail", "KEYDESK_MAIL_URL must look like smtp://user:pass@host:port")]
    shown = _without_password(url)
    port = parts.port or {"smtp": 25, "smtp+starttls": 587, "smtps": 465}[parts.scheme]
    try:
        if parts.scheme == "smtps":
            client = smtplib.SMTP_SSL(
                parts.hostname, port, timeout=SMTP_TIMEOUT, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(parts.hostname, port, timeout=SMTP_TIMEOUT)
        with client:
            client.noop()
    except (OSError, smtplib.SMTPException) as exc:
        return [
            Check(
                FAIL,
                "mail",
                f"{shown} does not answer ({type(exc).__name__}); fix: check KEYDESK_MAIL_URL",
            )
        ]
    checks = [Check(OK, "mail", f"{shown} answers")]
    if not app.config.get("KEYDESK_BASE_URL") and not env.get("KEYDESK_BASE_URL"):
        checks.append(
            Check(
                WARN,
                "base url",
                "KEYDESK_BASE_URL is not set: links in mails use the host each request named; "
                "fix: KEYDESK_BASE_URL=https://keys.example.com",
            )
        )
    return checks


def _metrics(app: Flask, env: dict) -> list[Check]:
    token = app.config.get("KEYDESK_METRICS_TOKEN") or ""
    if not token:
        return [Check(OK, "metrics", "off (/metrics answers 404); set KEYDESK_METRICS_TOKEN")]
    fix = f"fix: KEYDESK_METRICS_TOKEN=$({GENERATE})"
    if token.strip().lower() in KNOWN_WEAK or len(token) < MIN_SECRET:
        return [
            Check(
                FAIL,
                "metrics",
                f"KEYDESK_METRICS_TOKEN has {len(token)} characters; use {MIN_SECRET}+ random "
                f"ones; {fix}",
            )
        ]
    return [Check(OK, "metrics", f"/metrics protected by a {len(token)}-character token")]


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
