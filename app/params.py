"""Whole numbers from query strings and URLs, refusing what int() would choke on or what a
database integer column cannot hold.

str.isdigit() accepts "²" and "٣", which int() then refuses or reads unexpectedly, and a
20-digit number overflows a database integer: only 1 to 18 ASCII digits pass here. Row ids
(path segments, cursors) are INTEGER columns: PostgreSQL refuses anything past 2^31 - 1 with
an error (a 500), SQLite anything past 2^63 - 1, so ids are bounded by the smaller.
"""

import re

from werkzeug.routing import BaseConverter

MAX_DB_ID = 2**31 - 1  # PostgreSQL INTEGER; SQLite's INTEGER holds more

_DIGITS = re.compile(r"[0-9]{1,18}")


def whole_number(raw: str | None, *, low: int = 0, high: int = 10**18 - 1) -> int | None:
    """The number in `raw` if it is plain ASCII digits within [low, high], else None."""
    if raw is None or not _DIGITS.fullmatch(raw.strip()):
        return None
    value = int(raw.strip())
    return value if low <= value <= high else None


def db_id(raw: str | None) -> int | None:
    """A row id (1 to MAX_DB_ID) in `raw`, else None."""
    return whole_number(raw, low=1, high=MAX_DB_ID)


class DbIdConverter(BaseConverter):
    """`<dbid:name>` in a route: a row id that every database can hold. A number past it
    becomes 0, which no row has, so the view answers 404 as for any unknown id, before a
    query could overflow the column (refusing it here instead would turn a GET on a path
    that also has a POST rule into a misleading 405)."""

    regex = r"\d{1,19}"  # longer runs match no rule at all: 404

    def to_python(self, value: str) -> int:
        number = int(value)
        return number if number <= MAX_DB_ID else 0

    def to_url(self, value: object) -> str:
        return str(int(value))  # type: ignore[call-overload]
