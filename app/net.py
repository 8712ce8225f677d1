"""Client address helpers.

ProxyFix (configured from KEYDESK_TRUSTED_PROXIES in create_app) has already
rewritten REMOTE_ADDR from the trusted X-Forwarded-For hops, so remote_addr is
the address to trust here.
"""

from flask import request


def client_ip() -> str:
    return request.remote_addr or "unknown"
