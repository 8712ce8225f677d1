"""Configuration from KEYDESK_* environment variables, with secrets kept in instance/.

Environment first; a secret that is not in the environment is generated once
into instance/ with mode 0600 so restarts and multiple workers share it.
"""

import contextlib
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from app.keys.format import PREFIX_RE

TRUE_WORDS = {"1", "true", "yes", "on"}


def _bool(value: str) -> bool:
    return value.strip().lower() in TRUE_WORDS


def _positive(env, name: str, default: int) -> int:
    """A positive whole number (minutes, hours); refuse to start on anything else rather
    than run with sessions that never time out."""
    return _whole(env, name, default, low=1, high=100_000)


def _whole(env, name: str, default: int, *, low: int, high: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"{name}={raw!r}: use a whole number from {low} to {high}")
    return int(raw)


def instance_secret(instance_path: str, name: str) -> str:
    """Read instance/<name>, creating it (0600, 256 random bits) on first use.

    Several workers may start at once: the secret is written to a private temporary file
    and then hard-linked into place, so the name appears only with its full content and
    exactly one worker's secret wins; the others read that one.
    """
    path = Path(instance_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    value = path.read_text().strip()
    if not value:
        raise RuntimeError(f"{path} is empty; delete it to generate a new secret")
    return value


def load_config(instance_path: str, env: dict[str, str] | None = None) -> dict:
    env = os.environ if env is None else env
    database_url = env.get("KEYDESK_DATABASE_URL") or (
        f"sqlite:///{Path(instance_path) / 'keydesk.sqlite3'}"
    )
    prefix = env.get("KEYDESK_KEY_PREFIX", "kd")
    # 15 at most: user access tokens add "u" (SPEC "Key format") within the 16 a key may have.
    if not PREFIX_RE.match(prefix) or len(prefix) > 15:
        # Keys with such a prefix would never parse: refuse to start rather than mint them.
        raise ValueError(
            f"KEYDESK_KEY_PREFIX={prefix!r}: use 1-15 lowercase letters and digits, "
            "starting with a letter"
        )
    base_url = (env.get("KEYDESK_BASE_URL") or "").strip()
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            # Links mailed with it would not work: refuse to start rather than send them.
            raise ValueError(
                f"KEYDESK_BASE_URL={base_url!r}: use the public URL, like https://keys.example.com"
            )
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        # Public URL for links sent by mail or shown to be sent on (app.web.public_url).
        "KEYDESK_BASE_URL": base_url,
        "SECRET_KEY": env.get("KEYDESK_SECRET_KEY") or instance_secret(instance_path, "secret_key"),
        "KEYDESK_KEY_PEPPER": env.get("KEYDESK_KEY_PEPPER")
        or instance_secret(instance_path, "key_pepper"),
        "KEYDESK_KEY_PREFIX": prefix,
        "RATELIMIT_STORAGE_URI": env.get("KEYDESK_RATELIMIT_STORAGE_URI", "memory://"),
        # Several Keydesk deployments (or test runs) can share one Redis.
        "RATELIMIT_KEY_PREFIX": env.get("KEYDESK_RATELIMIT_KEY_PREFIX", "keydesk"),
        "KEYDESK_API_RATE_LIMIT": env.get("KEYDESK_API_RATE_LIMIT", "600 per minute"),
        "KEYDESK_AUTH_FAILURE_LIMIT": env.get("KEYDESK_AUTH_FAILURE_LIMIT", "60 per minute"),
        "KEYDESK_LOGIN_RATE_LIMIT": env.get("KEYDESK_LOGIN_RATE_LIMIT", "10 per minute"),
        "KEYDESK_TRUSTED_PROXIES": int(env.get("KEYDESK_TRUSTED_PROXIES", "0") or 0),
        "KEYDESK_ALLOW_REGISTRATION": _bool(env.get("KEYDESK_ALLOW_REGISTRATION", "true")),
        "KEYDESK_MAIL_URL": env.get("KEYDESK_MAIL_URL", ""),
        "KEYDESK_MAIL_FROM": env.get("KEYDESK_MAIL_FROM", "keydesk@localhost"),
        "KEYDESK_LEAK_REPORT_LIMIT": env.get("KEYDESK_LEAK_REPORT_LIMIT", "30 per minute"),
        # Server-side sessions (app/accounts/sessions.py) and sudo mode (app/auth/sudo.py).
        "KEYDESK_SESSION_IDLE_MINUTES": _positive(env, "KEYDESK_SESSION_IDLE_MINUTES", 60),
        "KEYDESK_SESSION_MAX_HOURS": _positive(env, "KEYDESK_SESSION_MAX_HOURS", 24),
        "KEYDESK_SUDO_MINUTES": _positive(env, "KEYDESK_SUDO_MINUTES", 120),
        # Seconds a worker may keep a looked-up key: behind its invalidation feed on
        # PostgreSQL (app/keys/feed.py), behind SQLite's commit counter on SQLite
        # (app/keys/commits.py); 0 turns the cache off.
        "KEYDESK_AUTH_CACHE_TTL": float(env.get("KEYDESK_AUTH_CACHE_TTL", "60") or 0),
        # Usage (last used, daily counts) written on a thread of the worker, off the request.
        "KEYDESK_USAGE_BACKGROUND": _bool(env.get("KEYDESK_USAGE_BACKGROUND", "true")),
        # Operations (app/metrics.py, app/logs.py): /metrics is 404 unless the token is set.
        "KEYDESK_METRICS_TOKEN": env.get("KEYDESK_METRICS_TOKEN", ""),
        "KEYDESK_LOG_FORMAT": env.get("KEYDESK_LOG_FORMAT", "text").strip().lower(),
        # Terminal sign-in (app/keys/device.py): how long a user access token lives, and
        # the polling interval the device authorization endpoint asks clients to keep.
        "KEYDESK_USER_TOKEN_HOURS": _whole(env, "KEYDESK_USER_TOKEN_HOURS", 8, low=1, high=24 * 90),
        "KEYDESK_DEVICE_POLL_INTERVAL": _whole(
            env, "KEYDESK_DEVICE_POLL_INTERVAL", 5, low=1, high=60
        ),
        # SSO: off, a tenant admin's issuer URL may only reach https:// on public addresses.
        "KEYDESK_SSO_ALLOW_PRIVATE_ISSUERS": _bool(
            env.get("KEYDESK_SSO_ALLOW_PRIVATE_ISSUERS", "false")
        ),
        # argon2id parameters (RFC 9106 second recommendation); tests lower them.
        "KEYDESK_ARGON2": {"time_cost": 3, "memory_cost": 65536, "parallelism": 4},
        # Secure cookies: always with KEYDESK_SECURE_COOKIES=true, else whenever the request
        # is HTTPS (app/web.py SessionInterface), so plain-http development still works.
        "SESSION_COOKIE_SECURE": _bool(env.get("KEYDESK_SECURE_COOKIES", "false")),
        "REMEMBER_COOKIE_SECURE": _bool(env.get("KEYDESK_SECURE_COOKIES", "false")),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "MAX_CONTENT_LENGTH": 64 * 1024,
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_SWALLOW_ERRORS": True,
    }
