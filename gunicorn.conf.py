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

_INVITE = re.compile(r"^/invite/[^/]+")


class ScrubbingLogger(Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["U"] = _INVITE.sub("/invite/[token]", atoms["U"])
        return atoms


logger_class = ScrubbingLogger
accesslog = "-"
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss "%(a)s"'
