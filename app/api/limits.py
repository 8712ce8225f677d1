"""Rate limits for /api/v1: per key (KEYDESK_API_RATE_LIMIT) and failed auth per IP.

Filled in by the API work; count_auth_failure is called for every 401.
"""


def count_auth_failure() -> None:
    """Charge one failed authentication to the client address (see the API issue)."""
