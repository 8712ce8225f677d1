"""Client address helpers.

ProxyFix (configured from KEYDESK_TRUSTED_PROXIES in create_app) has already
rewritten REMOTE_ADDR from the trusted X-Forwarded-For hops, so remote_addr is
the address to trust here.
"""

from flask import request


def client_ip(environ: dict | None = None) -> str:
    """The client's address; pass the WSGI environ where it is at hand (the API hot path)."""
    return (request.environ if environ is None else environ).get("REMOTE_ADDR") or "unknown"
