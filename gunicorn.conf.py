"""gunicorn settings read from the working directory: `gunicorn "app:create_app()"`.

The access log records the path without its query string (%(U)s, not %(r)s) and no
Referer: a key pasted into a URL (?access_token=..., refused by the API with 400) or a
referring page's query must never reach a log file. Other settings come from the command
line or GUNICORN_CMD_ARGS as usual.
"""

accesslog = "-"
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss "%(a)s"'
