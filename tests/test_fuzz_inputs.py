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
from tests.conftest import bearer, create_user, issue_key, login

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
     "allowed_ips", "grace_hours", "next", "csrf_token", "back", "role",
     "max_key_lifetime_days", "require_expiry", "member_scopes"]
) | st.text(max_size=10)  # fmt: skip
# Values that broke something once (issue 12): numbers past any date or column, dates at
# the end of the calendar, header injection, display-spoofing characters.
EDGE_VALUES = [
    "", "0", "-1", "999999999999999999999", "1e308", "NaN", "api:read", "admin:all",
    "10.0.0.0/8", "::/0", "a" * 5000, "//evil.example", "\x00", "3e6", "1e10", "-1e10",
    "3000000", "10000000000", "-10000000000", "2147483648", "9223372036854775808",
    "9999-12-31", "0001-01-01", "/admin/keys\r\nSet-Cookie: x=1", "a\u202eb", "ad\u200bmin",
    "\ufeff", "\x7f", "\x85", "member", "admin", "csv", "json",
]  # fmt: skip
VALUES = st.text(max_size=300) | st.sampled_from(EDGE_VALUES)
FORMS = st.dictionaries(FIELD_NAMES, st.lists(VALUES, min_size=1, max_size=3), max_size=8)
LONE_SURROGATES = st.sampled_from(["a\ud800b", "\udfff", "\ud83d"])
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([3_000_000, 10**10, -(10**10), 2**31, 2**63, 10**400])
    | st.floats()
    | st.text(max_size=50)
    | LONE_SURROGATES
)
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
            "type": JSON_VALUES,
        },
    )
    | JSON_VALUES
    | st.dictionaries(LONE_SURROGATES, JSON_VALUES, min_size=1, max_size=2)
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
        else:  # ensure_ascii: lone surrogates travel as \ud800 escapes, as a client sends them
            response = client.open(
                path, method=method, data=json.dumps(body),
                headers={**bearer(key), "Content-Type": "application/json"},
            )  # fmt: skip
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


# -- portal and admin forms and query strings (issue 12, point 3), on both databases ------


@pytest.mark.parametrize("app_config", [NO_THROTTLE], indirect=True)
def test_admin_forms_never_500(app, signed_in):
    from app.accounts import service as accounts
    from app.extensions import db
    from app.models import Invite

    key_id = issue_key(app).split("_")[1]
    with app.app_context():
        member_id = accounts.get_user_by_email(
            create_user(app, "bob@example.com", role="member")
        ).id
        invite_ids = [i.id for i in db.session.query(Invite)] or [1]
    paths = [
        "/admin/members/invite", "/admin/policy", f"/admin/members/{member_id}/role",
        f"/admin/members/{member_id}/deactivate", f"/admin/invites/{invite_ids[0]}/revoke",
        f"/admin/keys/{key_id}/revoke", "/admin/keys/revoke?status=active",
        f"/admin/members/{2**31}/role", f"/admin/invites/{2**63}/revoke",
    ]  # fmt: skip

    @FUZZ
    @given(FORMS, st.sampled_from(paths))
    def check(form, path):
        _no_server_error(signed_in.post(path, data=form))

    check()


QUERY_NAMES = st.sampled_from(
    ["status", "owner", "scope", "expiring_within_days", "unused_for_days", "q", "sort", "dir",
     "page", "per_page", "action", "actor", "from", "to", "format", "before", "cursor",
     "limit", "next", "tenant"]
) | st.text(max_size=8)  # fmt: skip
QUERIES = st.dictionaries(QUERY_NAMES, VALUES.filter(lambda v: "\x00" not in v), max_size=5)


@pytest.mark.parametrize("app_config", [NO_THROTTLE], indirect=True)
def test_query_strings_never_500(app, signed_in):
    from urllib.parse import urlencode

    key = issue_key(app, scopes=ALL_SCOPES)
    key_id = key.split("_")[1]
    pages = ["/admin/keys", "/admin/audit", "/admin/members", "/keys", "/keys/new",
             f"/keys/{key_id}", f"/admin/keys/{key_id}", f"/admin/keys/{key_id}/revoke",
             "/admin/keys/revoke", "/login"]  # fmt: skip
    api = ["/api/v1/tenant/acme/audit-events", "/api/v1/tenant/acme/admin/api-keys",
           "/api/v1/tenant/acme/api-keys/list", "/api/v1/resources", "/api/v1/me"]  # fmt: skip

    @FUZZ
    @given(QUERIES, st.sampled_from(pages + api))
    def check(query, path):
        # errors="surrogatepass": a lone surrogate arrives as its (invalid) UTF-8 bytes
        url = path + "?" + urlencode(query, encoding="utf-8", errors="surrogatepass")
        headers = bearer(key) if path.startswith("/api/") else {}
        response = signed_in.get(url, headers=headers)
        _no_server_error(response)
        if response.status_code == 200 and "format=" in url:
            response.get_data()  # an export streams: the whole body must come through

    check()
