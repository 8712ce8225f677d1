"""Whole numbers from query strings, refusing what int() would choke on or overflow with.

str.isdigit() accepts "²" and "٣", which int() then refuses or reads unexpectedly, and a
20-digit number overflows a database integer: only 1 to 18 ASCII digits pass here.
"""

import re

_DIGITS = re.compile(r"[0-9]{1,18}")


def whole_number(raw: str | None, *, low: int = 0, high: int = 10**18 - 1) -> int | None:
    """The number in `raw` if it is plain ASCII digits within [low, high], else None."""
    if raw is None or not _DIGITS.fullmatch(raw.strip()):
        return None
    value = int(raw.strip())
    return value if low <= value <= high else None
