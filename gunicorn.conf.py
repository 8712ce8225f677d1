"""gunicorn settings read from the working directory: `gunicorn "app:create_app()"`.

The access log never holds a credential:
- the path is logged without its query string (%(U)s, not %(r)s), and no Referer: a key
  pasted into a URL (?access_token=..., refused by the API with 400) or a referring page's
  query never reaches a log file;
- an invitation link carries its token in the path (/invite/<token>): it is logged as
  /invite/[token].
Other settings come from the command line or GUNICORN_CMD_ARGS as usual.
"""

import re

from gunicorn.glogging import Logger

_INVITE = re.compile(r"^/invite/[^/?\s]+")
_INVITE_ANYWHERE = re.compile(r"/invite/[^/?\s]+")


class ScrubbingLogger(Logger):
    """Access log lines without invitation tokens, and never an exception from logging.

    gunicorn writes this line for requests it refused itself (bad framing such as
    `Content-Length: -1`, two Content-Length headers, `Transfer-Encoding: gzip`) from an
    environ that has no PATH_INFO, method or protocol: those atoms are None. An exception
    raised here propagates out of gunicorn's error handler and ends the worker, so every
    atom is made a string and any surprise falls back to a line without the request.
    """

    def atoms(self, resp, req, environ, request_time):
        try:
            atoms = super().atoms(resp, req, environ, request_time)
        except Exception:  # noqa: BLE001 - a log line must never take the worker down
            return {"h": "-", "s": str(getattr(resp, "status_code", "-") or "-")}
        for name, value in list(atoms.items()):
            if value is None or value == "":
                atoms[name] = "-"
        atoms["U"] = _INVITE.sub("/invite/[token]", str(atoms["U"]))
        # %(r)s and the raw URI hold the same path (plus the query): scrub them alike.
        for name in ("r", "{raw_uri}e", "{path_info}e", "{request_uri}e"):
            if name in atoms:
                atoms[name] = _INVITE_ANYWHERE.sub("/invite/[token]", str(atoms[name]))
        return atoms


logger_class = ScrubbingLogger
accesslog = "-"
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss "%(a)s"'

# Chosen, not inherited: a sync worker serves one request at a time and reads the whole
# body inside it, so a client that announces a body and never sends it holds that worker
# until this timeout, and the arbiter then kills and replaces the worker. The same clock
# bounds the longest legitimate request, a streamed audit export, which is why it is not
# lower. Slow clients are not gunicorn's to absorb: run Keydesk behind a buffering proxy
# (nginx with its defaults reads the whole request before passing it on), see README
# "Running in production".
timeout = 30
# --- Operations (README "Operations"): metrics across workers, JSON logs, request ids ----
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# Text access lines also carry the request id and, for an authenticated API call, the key
# id (app/observe.py puts both in environ; "-" when absent).
access_log_format += " rid=%({keydesk.request_id}e)s key=%({keydesk.key_id}e)s"  # noqa: F821

# prometheus-client multiprocess mode: every worker keeps its values in files in one
# directory and /metrics sums them. The variable must be set here, in the master, before
# any worker imports prometheus_client; the directory is emptied when gunicorn starts (a
# restart starts counters at zero, as Prometheus expects) and removed when it exits if it
# was made here. An operator may choose the directory with PROMETHEUS_MULTIPROC_DIR.
_METRICS_DIR_PREFIX = "keydesk-metrics-"
if os.environ.get("KEYDESK_METRICS_TOKEN") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_METRICS_DIR_PREFIX)

# After the metrics directory is set: importing app.logs imports the app package.
if os.environ.get("KEYDESK_LOG_FORMAT", "").strip().lower() == "json":
    from app.logs import json_logger_class

    logger_class = json_logger_class(logger_class)  # noqa: F821


def _metrics_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def on_starting(server):
    directory = _metrics_dir()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()


def child_exit(server, worker):
    if _metrics_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # its live gauges go; counters stay


def on_exit(server):
    directory = _metrics_dir()
    if (
        directory is not None
        and directory.name.startswith(_METRICS_DIR_PREFIX)
        and directory.parent == Path(tempfile.gettempdir())
    ):
        shutil.rmtree(directory, ignore_errors=True)
