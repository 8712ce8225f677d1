"""SPEC "Names": one rule for every name and free text a person types and others read
(key names, organizations, resources, descriptions), in the portal, the API and the CLI.

Refused, because they change how a name is displayed rather than what it says: C0 and C1
control characters and DEL; the bidirectional controls (U+202A-U+202E, U+2066-U+2069,
U+200E/U+200F, and U+061C, the Arabic letter mark), with which "invoice\u202egpj.exe" shows
as "invoiceexe.jpg"; the zero-width characters (U+200B-U+200D, U+2060, U+FEFF), with which
"ad\u200bmin" looks like "admin"; and lone surrogates, which are not Unicode and which the
database drivers cannot encode.
"""

from __future__ import annotations

import re

from app.errors import InvalidInput

_REFUSED = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff\ud800-\udfff]"
)
NAME_MAX = 100


def has_refused_characters(text: str) -> bool:
    return _REFUSED.search(text) is not None


def clean_name(
    value: object, *, field: str, label: str | None = None, limit: int = NAME_MAX
) -> str:
    """The trimmed name, 1 to `limit` characters, or InvalidInput naming `field` (shown to
    people as `label`, e.g. "Organization" for the field "organization")."""
    label = label or field.replace("_", " ").capitalize()
    if not isinstance(value, str):
        raise InvalidInput(f"{label} must be text", field=field)
    name = value.strip()
    if not 1 <= len(name) <= limit:
        raise InvalidInput(f"{label} must be 1 to {limit} characters", field=field)
    if has_refused_characters(name):
        raise InvalidInput(
            f"{label} must not contain control characters, bidirectional controls"
            " or zero-width characters",
            field=field,
        )
    return name


def clean_text(
    value: object, *, field: str, label: str | None = None, limit: int = 1000
) -> str | None:
    """Optional free text (a description): the same characters refused, empty is None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return clean_name(value, field=field, label=label, limit=limit)
