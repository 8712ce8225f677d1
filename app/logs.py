"""KEYDESK_LOG_FORMAT=json: every log line one JSON object (standard library logging).

Fields: `time` (UTC, ISO 8601 with milliseconds), `level`, `logger`, `message`; during a
request also `request_id`, `method` and `path`; gunicorn's access lines (gunicorn.conf.py,
json_logger_class) add `status`, `duration_ms`, `remote_addr`, `bytes`, `user_agent`,
`pid` and, for an authenticated API call, `key_id`. A traceback goes into `exception`.

Nothing key-shaped survives: every string field is scrubbed for the key pattern (any
prefix), keeping the public key id, so even a key pasted somewhere unexpected (a path, a
user agent, an exception message) is logged as `kd_<id>_[redacted]`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

from app.keys.format import KEY_ID_LENGTH, TOKEN_RE

_INVITE = re.compile(r"^/invite/[^/]+")
_KEY_ID_END = len("_") + KEY_ID_LENGTH


def scrub(text: str) -> str:
    """Replace every key-shaped token's secret; keep its prefix and id."""
    if "_" not in text:
        return text
    return TOKEN_RE.sub(_redact, text)


def _redact(match: re.Match) -> str:
    token = match.group(0)
    cut = token.index("_") + 1 + _KEY_ID_END
    return token[:cut] + "[redacted]"


def scrub_path(path: str) -> str:
    """A path as logged: invitation tokens hidden (as gunicorn.conf.py does), keys scrubbed."""
    return scrub(_INVITE.sub("/invite/[token]", path))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        fields = getattr(record, "keydesk", None)  # gunicorn's access line brings its own
        if fields is None:
            fields = _request_fields()
        for name, value in fields.items():
            data[name] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            data["exception"] = scrub(self.formatException(record.exc_info))
        elif record.stack_info:
            data["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(data, default=str)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _request_fields() -> dict:
    from flask import has_request_context, request

    if not has_request_context():
        return {}
    from app.observe import REQUEST_ID_KEY

    environ = request.environ
    return {
        "request_id": environ.get(REQUEST_ID_KEY),
        "method": environ.get("REQUEST_METHOD"),
        "path": scrub_path(environ.get("PATH_INFO", "")),
    }


def json_logger_class(base):
    """gunicorn's Logger class `base` (the scrubbing one in gunicorn.conf.py), writing every
    error-log line and every access line as JSON. (Called in gunicorn's master: imports
    nothing that imports prometheus_client, see gunicorn.conf.py.)"""

    class JsonLogger(base):
        def setup(self, cfg):
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                for handler in logger.handlers:
                    handler.setFormatter(JsonFormatter())

        def access(self, resp, req, environ, request_time):
            if not getattr(self, "access_log_enabled", self.access_log.handlers):
                return
            from app.observe import KEY_ID_KEY, REQUEST_ID_KEY

            try:
                # base.atoms: whatever scrubbing gunicorn.conf.py applies to the text log.
                atoms = self.atoms(resp, req, environ, request_time)
                status = atoms.get("s")
                fields = {
                    "request_id": environ.get(REQUEST_ID_KEY),
                    "method": atoms.get("m"),
                    "path": scrub_path(str(atoms.get("U") or "")),
                    "status": int(status) if str(status).isdigit() else status,
                    "duration_ms": round(
                        request_time.seconds * 1000 + request_time.microseconds / 1000, 3
                    ),
                    "remote_addr": atoms.get("h"),
                    "bytes": atoms.get("B"),
                    "user_agent": atoms.get("a"),
                    "pid": os.getpid(),
                }
                key_id = environ.get(KEY_ID_KEY)
                if key_id is not None:
                    fields["key_id"] = key_id
                message = f"{fields['method']} {fields['path']} {fields['status']}"
                self.access_log.info(message, extra={"keydesk": fields})
            except Exception:  # noqa: BLE001 - as gunicorn does: a log line never fails a request
                self.error("could not write an access log line", exc_info=True)

    return JsonLogger


def init_app(app) -> None:
    """With KEYDESK_LOG_FORMAT=json, send every Python log record through one JSON handler
    on stderr (where gunicorn's error log goes by default)."""
    if app.config.get("KEYDESK_LOG_FORMAT") != "json":
        return
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    # Flask's own text handler on the app's logger would print every record twice.
    from flask.logging import default_handler

    app.logger.removeHandler(default_handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
