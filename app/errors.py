"""Domain exceptions: one truth for why something was refused.

The API maps these to RFC 6750 JSON (app/api/errors.py); the portal maps them
to form errors and flash messages.
"""


class KeydeskError(Exception):
    """Base class; `str(error)` is safe to show to the user (never a secret)."""


class KeyInvalid(KeydeskError):
    """Malformed token, bad checksum, unknown key id or wrong secret."""

    def __init__(self, message: str = "Invalid API key") -> None:
        super().__init__(message)


class KeyExpired(KeydeskError):
    def __init__(self, message: str = "API key has expired") -> None:
        super().__init__(message)


class KeyRevoked(KeydeskError):
    def __init__(self, message: str = "API key has been revoked") -> None:
        super().__init__(message)


class ScopeMissing(KeydeskError):
    def __init__(self, scopes: tuple[str, ...] | list[str]) -> None:
        self.scopes = tuple(scopes)
        super().__init__(f"This request needs the scope {' '.join(self.scopes)}")


class IpNotAllowed(KeydeskError):
    def __init__(self, message: str = "This API key may not be used from this address") -> None:
        super().__init__(message)


class NotFound(KeydeskError):
    """Missing, or belonging to another tenant: the two are indistinguishable on purpose."""

    def __init__(self, message: str = "Not found") -> None:
        super().__init__(message)


class PolicyViolation(KeydeskError):
    """A new key, edit or rotation breaks the tenant policy; the message names the rule and
    `field` the input it concerns ("scopes", "expires_in_days", "expires_at"), so a form
    can put the message beside that field without reading the text."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class InvalidInput(KeydeskError):
    """Bad input to a service; `field` names the offending field when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class Conflict(KeydeskError):
    """The action lost a race or no longer applies (already revoked, already rotated)."""


class Forbidden(KeydeskError):
    pass
