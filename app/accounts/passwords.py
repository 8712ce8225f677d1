"""Password hashing with argon2id (argon2-cffi) and the password rules."""

from functools import cache
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

from app.errors import InvalidInput

MIN_LENGTH = 12
MAX_LENGTH = 128


def _hasher() -> PasswordHasher:
    params = current_app.config["KEYDESK_ARGON2"]
    return PasswordHasher(**params)


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(stored_hash: str | None, password: str) -> tuple[bool, str | None]:
    """Check a password. Returns (ok, new hash if the parameters changed and it needs a rehash)."""
    hasher = _hasher()
    if not stored_hash:
        # Spend the same time as a real check so an unknown account is not revealed by timing.
        hasher.hash(password)
        return False, None
    try:
        hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False, None
    return True, hasher.hash(password) if hasher.check_needs_rehash(stored_hash) else None


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("app.accounts").joinpath("common_passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def check_password_rules(password: str, *, email: str = "") -> None:
    """Raise InvalidInput naming the first rule a new password breaks."""
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"Use at least {MIN_LENGTH} characters", field="password")
    if len(password) > MAX_LENGTH:
        raise InvalidInput(f"Use at most {MAX_LENGTH} characters", field="password")
    lowered = password.lower()
    if email and (lowered == email.lower() or lowered == email.split("@")[0].lower()):
        raise InvalidInput("Your password must not be your email address", field="password")
    if lowered in common_passwords():
        raise InvalidInput(
            "This password is too common; choose one that is hard to guess", field="password"
        )
