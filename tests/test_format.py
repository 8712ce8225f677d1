"""The key format, without HTTP or a database: assemble/parse, checksum, scanner pattern."""

import math
import re

import pytest

from app.errors import KeyInvalid
from app.keys import format as keyformat

README_PATTERN = re.compile(r"\bkdu?_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}\b")


def new_key(prefix: str = "kd") -> tuple[str, str, str]:
    key_id, secret = keyformat.new_key_id(), keyformat.new_secret()
    return keyformat.assemble(prefix, key_id, secret), key_id, secret


def test_round_trip_gives_back_prefix_id_and_secret():
    for _ in range(200):
        full, key_id, secret = new_key()
        assert keyformat.parse(full) == ("kd", key_id, secret)


def test_custom_prefix_round_trips():
    full, key_id, secret = new_key("acme2")
    assert full.startswith("acme2_")
    assert keyformat.parse(full) == ("acme2", key_id, secret)


def test_every_one_character_change_is_rejected_by_the_checksum():
    full, _, _ = new_key()
    start = len("kd_")
    for position in range(start, len(full)):
        if full[position] == "_":
            continue
        for replacement in "0aZ":
            if replacement == full[position]:
                continue
            mutated = full[:position] + replacement + full[position + 1 :]
            with pytest.raises(KeyInvalid):
                keyformat.parse(mutated)


def test_swapping_two_neighbours_is_rejected():
    full, _, _ = new_key()
    position = next(
        i for i in range(3, len(full) - 1) if full[i] != full[i + 1] and "_" not in full[i : i + 2]
    )
    swapped = full[:position] + full[position + 1] + full[position] + full[position + 2 :]
    with pytest.raises(KeyInvalid):
        keyformat.parse(swapped)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "kd",
        "kd_",
        "kd__",
        "not a key at all",
        "Bearer kd_abc",
        "kd_" + "a" * 12 + "_" + "b" * 38,  # right shape, wrong checksum
        "kd-" + "a" * 12 + "_" + "b" * 38,
        "KD_" + "a" * 12 + "_" + "b" * 38,  # prefixes are lowercase
        "_" + "a" * 12 + "_" + "b" * 38,
        "kd_" + "a" * 11 + "_" + "b" * 39,
        "kd_" + "a" * 13 + "_" + "b" * 37,
        "kd_" + "a" * 12 + "_" + "b" * 37,
        "kd_" + "a" * 12 + "_" + "b" * 39,
        "kd_" + "a" * 12 + "-" + "b" * 38,
        "kd_" + "a" * 12 + "_" + "b" * 37 + "!",
        "kd_" + "é" * 12 + "_" + "b" * 38,
        "x" * 10_000,
    ],
)
def test_malformed_strings_raise_key_invalid(token):
    with pytest.raises(KeyInvalid):
        keyformat.parse(token)


def test_non_strings_raise_key_invalid():
    for value in (None, 42, b"kd_abc", ["kd"]):
        with pytest.raises(KeyInvalid):
            keyformat.parse(value)


def test_random_strings_are_rejected():
    import secrets

    for _ in range(500):
        body = "kd_" + keyformat.random_base62(12) + "_" + keyformat.random_base62(38)
        if body[-6:] == keyformat.checksum(body[:-6]):  # 1 in 62**6: never in practice
            continue
        with pytest.raises(KeyInvalid):
            keyformat.parse(body)
        with pytest.raises(KeyInvalid):
            keyformat.parse(secrets.token_urlsafe(40))


def test_a_valid_key_with_a_different_prefix_parses_but_reports_its_prefix():
    full, _, _ = new_key("other")
    assert keyformat.parse(full).prefix == "other"
    assert not README_PATTERN.search(full)


def test_readme_scanner_pattern_matches_issued_keys_in_text():
    full, _, _ = new_key()
    text = f'export TOKEN={full}\n# and in JSON: {{"key": "{full}"}}'
    assert README_PATTERN.findall(text) == [full, full]
    assert keyformat.scanner_regex("kd") == README_PATTERN.pattern


def test_readme_documents_the_same_pattern():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert README_PATTERN.pattern in readme


def test_secret_has_at_least_160_bits():
    bits = keyformat.SECRET_LENGTH * math.log2(len(keyformat.ALPHABET))
    assert bits >= 160
    secrets_seen = {keyformat.new_secret() for _ in range(1000)}
    assert len(secrets_seen) == 1000
    assert all(len(s) == keyformat.SECRET_LENGTH for s in secrets_seen)
    # every base62 character shows up: the secret uses the whole alphabet
    assert set("".join(secrets_seen)) == set(keyformat.ALPHABET)


def test_checksum_is_fixed_width_base62_of_crc32():
    import zlib

    assert keyformat.checksum("") == "000000"
    body = "kd_abc_def"
    value, digits = zlib.crc32(body.encode()), keyformat.checksum(body)
    assert len(digits) == 6
    decoded = 0
    for ch in digits:
        decoded = decoded * 62 + keyformat.ALPHABET.index(ch)
    assert decoded == value


def test_digest_is_hmac_sha256_of_the_secret():
    import hashlib
    import hmac

    expected = hmac.new(b"pepper", b"secret", hashlib.sha256).digest()
    assert keyformat.digest(b"pepper", "secret") == expected
    assert keyformat.digest(b"other", "secret") != expected


def test_random_base62_maps_bytes_without_bias():
    from collections import Counter

    # 248 byte values map to characters, each exactly 4 times; the other 8 are dropped.
    kept = Counter(keyformat._BASE62_TABLE[:248])
    assert sorted(kept) == sorted(keyformat.ALPHABET.encode()) and set(kept.values()) == {4}
    drawn = keyformat.random_base62(10_000)
    assert len(drawn) == 10_000 and set(drawn) <= set(keyformat.ALPHABET)


def test_the_hot_path_digester_equals_the_one_shot_digest():
    digester = keyformat.Digester(b"pepper")
    for secret in (keyformat.new_secret() for _ in range(20)):
        assert digester(secret) == keyformat.digest(b"pepper", secret)
    assert digester("a") != keyformat.Digester(b"other pepper")("a")
