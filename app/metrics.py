"""Prometheus metrics: the counters other modules increment, and GET /metrics.

Under gunicorn every worker is its own process. gunicorn.conf.py sets
PROMETHEUS_MULTIPROC_DIR before any worker imports prometheus_client (it is imported
here, from create_app, never in gunicorn's master before that), so every value below is
kept in a small per-process file in that directory, and /metrics, answered by whichever
worker gets the scrape, sums the files of all of them (prometheus_client's multiprocess
mode). Without the variable (flask run, tests) values live in this process.

What it costs on the API hot path: in multiprocess mode every increment is a lock, a
getpid and a write into a memory-mapped file, and a histogram observation is two of them
(2-4 µs a request under load, bench/profile.py --metrics). So requests do not touch
prometheus-client at all: they add to this process's running totals (Batch: a dict or
list update, about 0.5 µs), and a daemon thread writes what grew once a second (one write
per series and bucket, however many requests). /metrics writes the answering worker's
totals first; every worker's counts reach the files within a second. The request
histogram only runs when KEYDESK_METRICS_TOKEN is set (`make bench BENCH_ARGS=--metrics`).

Labels never carry ids: the API outcome is one of OUTCOMES, the request histogram is
labelled by the route's endpoint name (`api.me`, `portal.key_detail`: one value per
route, whatever ids its URL holds), a known method, and the status class (`2xx`).
"""

from __future__ import annotations

import atexit
import bisect
import hashlib
import hmac
import logging
import os
import threading
from collections import Counter as Tally

from flask import Flask, Response, current_app, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

OUTCOMES = (
    "valid",
    "invalid",
    "expired",
    "revoked",
    "insufficient_scope",
    "ip_not_allowed",
    "rate_limited",
)
API_AUTH = Counter(
    "keydesk_api_auth_total",
    "API authentications on /api/v1, by outcome (one per request that presents a key "
    "or is refused before its key is checked).",
    ["outcome"],
)
# Bound once: Counter.labels() takes a lock and builds a tuple on every call.
AUTH = {outcome: API_AUTH.labels(outcome) for outcome in OUTCOMES}

HTTP_DURATION = Histogram(
    "keydesk_http_request_duration_seconds",
    "Time from the request reaching Keydesk to its response being ready, by route "
    "(endpoint name), method and status class.",
    ["endpoint", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
KEYS_ISSUED = Counter(
    "keydesk_keys_issued_total",
    "API keys issued (user keys, client keys and rotation successors), counted at commit.",
    ["kind"],
)
KEYS_REVOKED = Counter(
    "keydesk_keys_revoked_total", "API keys revoked (not counting leaks), counted at commit."
)
KEYS_LEAKED = Counter(
    "keydesk_keys_leaked_total", "API keys revoked because they were reported leaked."
)
RATE_LIMITED = Counter(
    "keydesk_rate_limit_refusals_total",
    "Requests refused with 429, by limit.",
    ["limit"],
)
RATE_LIMIT_NAMES = ("api_key", "auth_failures", "leak_reports", "portal")
RATE_LIMITS = {name: RATE_LIMITED.labels(name) for name in RATE_LIMIT_NAMES}

# The invalidation feed (per-worker key cache, issue 15): one series per live worker.
FEED_UP = Gauge(
    "keydesk_invalidation_feed_connected",
    "1 while this worker hears the invalidation feed (and may serve from its key cache).",
    multiprocess_mode="liveall",
)
FEED_LAG = Gauge(
    "keydesk_invalidation_feed_lag_seconds",
    "How far this worker's view of the invalidation feed is behind.",
    multiprocess_mode="liveall",
)

# Audit actions that mean a key was issued, revoked or leaked, and what they count.
_AUDITED = {
    "key.issued": KEYS_ISSUED.labels("user"),
    "key.rotated": KEYS_ISSUED.labels("rotation"),
    "client_key.issued": KEYS_ISSUED.labels("client"),
    "key.revoked": KEYS_REVOKED,
    "client_key.revoked": KEYS_REVOKED,
    "key.leaked": KEYS_LEAKED,
}
_PENDING = "keydesk.metrics.pending"


class Batch:
    """This process's counts, kept as running totals in plain Python objects; flush() writes
    what grew since the last flush into prometheus-client (one increment per series and
    bucket, however many requests).

    count(child) and time(key, seconds) run on requests and only ever add to the totals;
    the flushing thread only reads them (and its own record of what it wrote), so nothing
    is lost between the two. Two request threads adding to one total at the same instant
    could lose one of the two additions (`+=` is not atomic): gunicorn's sync workers, as
    Keydesk runs them, have one request thread. A daemon thread flushes every
    FLUSH_SECONDS; /metrics and process exit flush too. After a fork the child starts
    with empty totals and its own thread."""

    FLUSH_SECONDS = 1.0

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()  # starting the thread, and one flush at a time
        self.counts: dict = {}  # counter child -> running total
        self.timings: dict = {}  # histogram key -> [sum, count per bucket...]
        self.written: dict = {}  # (counter child or histogram key) -> totals already written
        self.thread: threading.Thread | None = None

    def count(self, child) -> None:
        counts = self.counts
        counts[child] = counts.get(child, 0) + 1
        if self.thread is None:
            self._start()

    def time(self, key: tuple, seconds: float) -> None:
        totals = self.timings.get(key)
        if totals is None:
            totals = self.timings[key] = [0.0] * (len(_BOUNDS) + 1)
        totals[0] += seconds
        totals[bisect.bisect_left(_BOUNDS, seconds) + 1] += 1
        if self.thread is None:
            self._start()

    def _start(self) -> None:
        with self.lock:
            if self.thread is not None:
                return
            self.thread = threading.Thread(target=self._run, name="keydesk-metrics", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            try:
                self._flush()
            except Exception:  # noqa: BLE001 - a metrics fault must never reach a request
                log.warning("could not write metrics", exc_info=True)

    def _flush(self) -> None:
        written = self.written
        for child, total in list(self.counts.items()):  # a snapshot: requests go on
            done = written.get(child, 0)
            if total != done:
                child.inc(total - done)
                written[child] = total
        for key, totals in list(self.timings.items()):
            now = list(totals)
            done = written.get(key)
            if done is None:
                done = written[key] = [0.0] * len(now)
            if now == done:
                continue
            child = _children[key]
            # prometheus-client keeps a sum and per-bucket (non-cumulative) counts, which is
            # what Histogram.observe adds one value to; here many at once.
            if now[0] != done[0]:
                child._sum.inc(now[0] - done[0])
            for index in range(1, len(now)):
                if now[index] != done[index]:
                    child._buckets[index - 1].inc(now[index] - done[index])
            written[key] = now


BATCH = Batch()
os.register_at_fork(after_in_child=BATCH._reset)
atexit.register(BATCH.flush)  # a gunicorn worker that exits writes what it still holds


def count_rate_limited(limit: str) -> None:
    """One 429; `limit` is one of RATE_LIMIT_NAMES (an API one also counts as an outcome)."""
    BATCH.count(RATE_LIMITS[limit])
    if limit in ("api_key", "auth_failures"):
        BATCH.count(AUTH["rate_limited"])


def count_outcome(outcome: str) -> None:
    BATCH.count(AUTH[outcome])


def note_audited(session, action: str, count: int = 1) -> None:
    """Remember that `count` events of `action` were written in `session`'s transaction;
    they are counted when it commits (a rolled-back issue never happened)."""
    if action in _AUDITED:
        session.info.setdefault(_PENDING, Tally())[action] += count


def _after_commit(session) -> None:
    pending = session.info.pop(_PENDING, None)
    for action, count in (pending or {}).items():
        _AUDITED[action].inc(count)  # rare next to requests: written at once


def _after_rollback(session) -> None:
    session.info.pop(_PENDING, None)


def export_feed_gauges(source) -> None:
    """Copy the invalidation feed's state (app/keys/feed.py) into this worker's gauges.

    `source` holds the feed (the Authenticator; its `feed` is None on SQLite, whose cache
    needs none). /metrics calls it for the worker that answers: "connected" means the worker
    may serve from its key cache (state "live"), not merely that a socket is open."""
    feed = getattr(source, "feed", None)
    if feed is None:
        return
    from app.keys.feed import status

    info = status(feed)
    FEED_UP.set(1 if info["state"] == "live" else 0)
    if info["lag_seconds"] is not None:
        FEED_LAG.set(float(info["lag_seconds"]))


# --- the request histogram ------------------------------------------------------------

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_STATUS_CLASSES = {str(n): f"{n}xx" for n in range(1, 6)}


class _Children(dict):
    """(endpoint, method, status class) -> histogram child; .labels() once per key."""

    def __missing__(self, key):
        child = self[key] = HTTP_DURATION.labels(*key)
        return child


_children = _Children()
_BOUNDS = list(HTTP_DURATION._upper_bounds)  # the buckets, +Inf last


def histogram_key(environ: dict, status: str) -> tuple:
    """This request's (endpoint, method, status class), to be called from start_response,
    while the request Flask parsed is still in environ (Flask clears it when the request
    ends); a URL that matched no route is `unmatched`, whatever its path."""
    req = environ.get("werkzeug.request")
    rule = getattr(req, "url_rule", None)
    endpoint = rule.endpoint if rule is not None else "unmatched"
    method = environ.get("REQUEST_METHOD")
    return (
        endpoint,
        method if method in _METHODS else "other",
        _STATUS_CLASSES.get(status[:1], "other"),
    )


# --- GET /metrics -----------------------------------------------------------------------


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def metrics_view():
    """Prometheus text format, for `Authorization: Bearer <KEYDESK_METRICS_TOKEN>` only."""
    expected = current_app.config.get("KEYDESK_METRICS_TOKEN")
    if not expected:
        return _plain(404, "Not found\n")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Both sides hashed to 32 bytes first: compare_digest's time then depends on neither
    # the token's length nor on how many leading characters a guess got right.
    ok = hmac.compare_digest(_digest(given.strip()), _digest(expected))
    if scheme.lower() != "bearer" or not ok:
        response = _plain(401, "A valid metrics token is required\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="keydesk-metrics"'
        return response
    authenticator = current_app.extensions.get("keydesk.authenticator")
    if authenticator is not None:
        export_feed_gauges(authenticator)
    BATCH.flush()  # this worker's counts are exact in this answer
    # The format the scraper asks for (Prometheus offers OpenMetrics and the text formats).
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = Response(encoder(_registry()), content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def _registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # every worker's files, summed
        return registry
    return REGISTRY


def _plain(status: int, text: str) -> Response:
    return Response(text, status=status, mimetype="text/plain")


def multiprocess_mode() -> bool:
    """Whether values are shared between processes (gunicorn.conf.py set the directory)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def init_app(app: Flask) -> None:
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_rollback", _after_rollback)
