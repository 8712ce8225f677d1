"""Time helpers: timezone-aware UTC in Python, Unix seconds at the edges."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def from_unix(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)
