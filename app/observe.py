"""What every request goes through for operators, in one WSGI middleware around the app:

- X-Request-Id: an incoming one of [A-Za-z0-9._-]{1,64} is kept, anything else is
  replaced by a fresh random id (never echoed: it could carry a header injection or a
  secret); the id is in environ for log lines (app/logs.py, gunicorn's access log) and on
  every response, errors included;
- the request duration histogram (app/metrics.py) when KEYDESK_METRICS_TOKEN is set;
- how many X-Forwarded-For hops requests arrive with, noted once per hop count and worker
  in instance/, so `flask doctor` can compare it with KEYDESK_TRUSTED_PROXIES.

It sits outside every other layer (ProxyFix, the security headers) so it sees the raw
request and the final response. Per request it costs a header read, one regex match or
16 random bytes, a set lookup and one closure (a few microseconds, measured in bench/).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import time
from pathlib import Path
from time import perf_counter

from flask import Flask

from app import metrics

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "keydesk.request_id"
# Set by app/api/auth.py once a key authenticated: gunicorn's access log names it.
KEY_ID_KEY = "keydesk.key_id"
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}").fullmatch
# Load balancers and orchestrators probe workers directly, without X-Forwarded-For.
PROBE_PATHS = frozenset(("/healthz", "/livez", "/readyz", "/metrics"))


# Request ids name requests, they guard nothing: unique, not unpredictable. 80 random bits
# per process (drawn again in every forked child) and a counter: 32 hex characters for a
# fraction of the cost of 16 fresh random bytes per request. The counter starts at 2**44,
# so its hex form is always 12 digits (for the next 2**48 - 2**44 requests of a process).
_FIRST = 1 << 44


def _new_prefix() -> None:
    global _prefix, _count
    _prefix, _count = os.urandom(10).hex(), itertools.count(_FIRST)


_prefix, _count = "", itertools.count(_FIRST)
_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)


def new_request_id() -> str:
    return _prefix + hex(next(_count))[2:]


class ForwardedLog:
    """X-Forwarded-For hop counts seen by this deployment: {hops: last seen, Unix time}."""

    def __init__(self, path: Path, trusted: int) -> None:
        self.path = path
        # Direct requests while no proxy is trusted are the normal case: nothing to note.
        self.seen: set[int] = set() if trusted else {0}

    def note(self, environ: dict) -> None:
        header = environ.get("HTTP_X_FORWARDED_FOR")
        hops = 0 if header is None else header.count(",") + 1
        if hops in self.seen or environ.get("PATH_INFO") in PROBE_PATHS:
            return
        self.seen.add(hops)  # once per worker and hop count: the write below is rare
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+", encoding="utf-8") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # workers note at the same moment
                handle.seek(0)
                try:
                    seen = json.loads(handle.read() or "{}")
                except ValueError:
                    seen = {}
                seen[str(hops)] = int(time.time())
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(seen, sort_keys=True))
        except OSError:
            log.warning("could not note forwarded hops in %s", self.path, exc_info=True)


def read_forwarded(path: Path) -> dict[int, int]:
    """{hops: last seen} as noted by ForwardedLog; empty when nothing was noted."""
    with contextlib.suppress(OSError, ValueError):
        return {int(hops): int(at) for hops, at in json.loads(path.read_text()).items()}
    return {}


def forwarded_path(app: Flask) -> Path:
    configured = app.config.get("KEYDESK_FORWARDED_LOG")
    return Path(configured) if configured else Path(app.instance_path, "forwarded.json")


class RequestObserver:
    def __init__(self, wsgi_app, *, timed: bool, forwarded: ForwardedLog | None) -> None:
        self.wsgi_app = wsgi_app
        self.timed = timed
        self.forwarded = forwarded

    def __call__(self, environ, start_response):
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid is None or _VALID_ID(rid) is None:
            rid = new_request_id()
        environ[REQUEST_ID_KEY] = rid
        if self.forwarded is not None:
            self.forwarded.note(environ)
        if not self.timed:

            def start(status, headers, exc_info=None):
                headers.append(("X-Request-Id", rid))  # app.web.ResponseHeaders' own list
                return start_response(status, headers, exc_info)

            return self.wsgi_app(environ, start)

        started = perf_counter()
        keys = []

        def start_timed(status, headers, exc_info=None):
            keys.append(metrics.histogram_key(environ, status))
            headers.append(("X-Request-Id", rid))
            return start_response(status, headers, exc_info)

        result = self.wsgi_app(environ, start_timed)
        if keys:
            metrics.BATCH.time(keys[-1], perf_counter() - started)
        return result


def init_app(app: Flask) -> None:
    """Install the middleware (outermost) and the operator routes."""
    from app import health, logs

    logs.init_app(app)
    metrics.init_app(app)
    health.init_app(app)
    # Under TESTING only where a test asks for it: a test must not write into instance/.
    note = not app.testing or app.config.get("KEYDESK_FORWARDED_LOG")
    forwarded = (
        ForwardedLog(forwarded_path(app), app.config["KEYDESK_TRUSTED_PROXIES"]) if note else None
    )
    app.wsgi_app = RequestObserver(
        app.wsgi_app, timed=bool(app.config.get("KEYDESK_METRICS_TOKEN")), forwarded=forwarded
    )
