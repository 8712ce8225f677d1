"""Property tests: the key format, and that no form or JSON input yields a 500."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.errors import KeyInvalid
from app.keys import format as keyformat
from app.keys.scopes import ALL_SCOPES
from tests.conftest import bearer, issue_key, login

BASE62 = st.text(alphabet=keyformat.ALPHABET, min_size=1)
PREFIXES = st.from_regex(r"[a-z][a-z0-9]{0,15}", fullmatch=True)
KEY_IDS = st.text(
    alphabet=keyformat.ALPHABET,
    min_size=keyformat.KEY_ID_LENGTH,
    max_size=keyformat.KEY_ID_LENGTH,
)
SECRETS = st.text(
    alphabet=keyformat.ALPHABET,
    min_size=keyformat.SECRET_LENGTH,
    max_size=keyformat.SECRET_LENGTH,
)


@given(PREFIXES, KEY_IDS, SECRETS)
def test_key_round_trip(prefix, key_id, secret):
    token = keyformat.assemble(prefix, key_id, secret)
    assert keyformat.parse(token) == (prefix, key_id, secret)
    assert re.fullmatch(keyformat.scanner_regex(prefix).replace(r"\b", ""), token)


@given(st.one_of(st.text(), st.text(alphabet=keyformat.ALPHABET + "_\n "), st.binary()))
def test_parse_any_input_raises_only_key_invalid(value):
    with contextlib.suppress(KeyInvalid):
        keyformat.parse(value)


@given(PREFIXES, KEY_IDS, SECRETS, st.data())
def test_any_one_character_change_fails(prefix, key_id, secret, data):
    token = keyformat.assemble(prefix, key_id, secret)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(codec="utf-8"))
    assume(replacement != token[position])
    changed = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(KeyInvalid):
        keyformat.parse(changed)


# -- HTTP: random forms and JSON never produce a 500 ------------------------------------

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FIELD_NAMES = st.sampled_from(
    ["email", "password", "confirm", "organization", "name", "scopes", "expires_in_days",
     "allowed_ips", "grace_hours", "next", "csrf_token", "back"]
) | st.text(max_size=10)  # fmt: skip
VALUES = st.text(max_size=300) | st.sampled_from(
    ["", "0", "-1", "999999999999999999999", "1e308", "NaN", "api:read", "admin:all",
     "10.0.0.0/8", "::/0", "a" * 5000, "//evil.example", "\x00"]
)  # fmt: skip
FORMS = st.dictionaries(FIELD_NAMES, st.lists(VALUES, min_size=1, max_size=3), max_size=8)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
JSON_BODIES = (
    st.fixed_dictionaries(
        {},
        optional={
            "name": JSON_VALUES,
            "scopes": JSON_VALUES | st.lists(st.sampled_from(ALL_SCOPES)),
            "expires_in_days": JSON_VALUES,
            "allowed_ips": JSON_VALUES,
            "grace_hours": JSON_VALUES,
            "key": JSON_VALUES,
            "source_url": JSON_VALUES,
            "email": JSON_VALUES,
            "role": JSON_VALUES,
        },
    )
    | JSON_VALUES
)

NO_THROTTLE = {"KEYDESK_LOGIN_RATE_LIMIT": "100000 per minute"}


def _no_server_error(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:500]


@pytest.mark.parametrize("app_config", [NO_THROTTLE], indirect=True)
@pytest.mark.parametrize("path", ["/register", "/login"])
def test_anonymous_forms_never_500(client, user, path):
    @FUZZ
    @given(FORMS)
    def check(form):
        with client.application.test_client() as fresh:
            _no_server_error(fresh.post(path, data=form))

    check()


@pytest.mark.parametrize("app_config", [NO_THROTTLE], indirect=True)
def test_signed_in_forms_never_500(app, signed_in):
    key_id = issue_key(app).split("_")[1]

    paths = ["/keys/new", f"/keys/{key_id}/rotate", f"/keys/{key_id}/allowed-ips", "/keys/x/rotate"]

    @FUZZ
    @given(FORMS, st.sampled_from(paths))
    def check(form, path):
        _no_server_error(signed_in.post(path, data=form))

    check()


def _api_targets(app, key_id: str) -> list[tuple[str, str]]:
    """Every /api/v1 route that takes a body, with path arguments filled in."""
    targets = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        for method in sorted((rule.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: key_id, rule.rule)
            targets.append((method, path))
    return targets


def test_api_json_inputs_never_500(app, client, user):
    key = issue_key(app, scopes=ALL_SCOPES)
    key_id = key.split("_")[1]
    targets = _api_targets(app, key_id) + [("GET", "/api/v1/me"), ("POST", "/api/v1/me")]

    @FUZZ
    @given(st.sampled_from(targets), JSON_BODIES, st.booleans())
    def check(target, body, raw):
        method, path = target
        if raw:  # not-quite-JSON bytes with a JSON content type
            data = json.dumps(body, allow_nan=True)[:-1]
            response = client.open(
                path, method=method, data=data, headers={**bearer(key),
                "Content-Type": "application/json"},
            )  # fmt: skip
        else:
            response = client.open(path, method=method, json=body, headers=bearer(key))
        _no_server_error(response)
        if response.is_json:
            assert "error" in response.json or response.status_code < 400

    check()


@given(st.text(max_size=200))
@FUZZ
def test_authorization_header_never_500(app, client, header):
    if any(c in header for c in "\r\n\x00") or not header.isprintable():
        header = header.encode("unicode_escape").decode("ascii")
    response = client.get("/api/v1/me", headers={"Authorization": header})
    assert response.status_code in (400, 401)


def test_login_unicode_and_huge_inputs(client, user):
    for email, password in [("\u0000@x", "p"), ("a" * 10_000, "b" * 10_000), (user, "\ud7ff" * 50)]:
        _no_server_error(login(client, email=email, password=password))


def test_nul_bytes_anywhere_are_a_400_not_a_database_error(app, signed_in):
    key = issue_key(app)
    assert signed_in.get("/keys/ab%00cd").status_code == 400
    assert signed_in.post("/keys/new", data={"name": "a\x00b"}).status_code == 400
    api = signed_in.post(
        "/api/v1/me", data='{"name": "a\\u0000b"}', headers={**bearer(key),
        "Content-Type": "application/json"},
    )  # fmt: skip
    assert api.status_code == 400 and api.json["error"] == "invalid_request"


def test_nul_bytes_in_the_query_string_are_a_400(app, signed_in):
    key = issue_key(app)
    assert signed_in.get("/admin/keys?q=a%00b").status_code == 400
    assert signed_in.get("/admin/keys?a%00=1").status_code == 400
    assert signed_in.get("/api/v1/resources?tenant=%00", headers=bearer(key)).status_code == 400
    # An encoded percent sign followed by "00" is not a NUL: searched for as typed.
    assert signed_in.get("/admin/keys?q=%2500").status_code == 200
    assert signed_in.get("/api/v1/me?x=%2500", headers=bearer(key)).status_code == 200
