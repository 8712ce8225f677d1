"""The key format, checked locally: `<prefix>_<id>_<secret><checksum>` (Keydesk README,
"Key format"). A mistyped or random string fails its CRC32 checksum without a request."""

from __future__ import annotations

import re
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_RE = re.compile(r"([a-z][a-z0-9]{0,15})_([0-9A-Za-z]{12})_([0-9A-Za-z]{32})([0-9A-Za-z]{6})")


def _base62(number: int, width: int = 6) -> str:
    out = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        out.append(ALPHABET[rem])
    return "".join(reversed(out))


def well_formed(token: str, prefixes: tuple[str, ...] | None = None) -> bool:
    """True when `token` has the key shape and a correct checksum (and, when given, one of
    `prefixes`). Says nothing about whether the key exists or works."""
    if not isinstance(token, str) or len(token) > 80:
        return False
    match = _KEY_RE.fullmatch(token)
    if match is None:
        return False
    prefix, key_id, secret, check = match.groups()
    if prefixes is not None and prefix not in prefixes:
        return False
    body = f"{prefix}_{key_id}_{secret}"
    return _base62(zlib.crc32(body.encode("ascii"))) == check


def key_id_of(token: str) -> str | None:
    match = _KEY_RE.fullmatch(token) if isinstance(token, str) else None
    return match.group(2) if match else None
