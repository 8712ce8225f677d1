"""Out-of-range input is a 4xx naming the field, never a 500, on SQLite and PostgreSQL
(issue 12, point 3), and names refuse what could spoof their display (SPEC "Names")."""

from __future__ import annotations

import html

import pytest

from tests.conftest import bearer, issue_key, login

RAW_JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("days", [3_000_000, 10**10, -(10**10), 10**400])
def test_api_expiry_past_any_date_is_a_400_naming_the_field(app, client, user, days):
    key = issue_key(app, scopes=("keys:write", "api:read"))
    body = f'{{"name": "x", "scopes": ["api:read"], "expires_in_days": {days}}}'
    response = client.post(
        "/api/v1/tenant/acme/api-keys/create", data=body, headers={**bearer(key), **RAW_JSON}
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "expires_in_days" in response.json["error_description"]


@pytest.mark.parametrize("days", ["3e6", "1e10", "-1e10"])
def test_api_expiry_as_a_huge_float_is_a_400_naming_the_field(app, client, user, days):
    key = issue_key(app, scopes=("keys:write", "api:read"))
    body = f'{{"name": "x", "scopes": ["api:read"], "expires_in_days": {days}}}'
    response = client.post(
        "/api/v1/tenant/acme/api-keys/create", data=body, headers={**bearer(key), **RAW_JSON}
    )
    assert response.status_code == 400
    assert "expires_in_days" in response.json["error_description"]


def test_an_expiring_key_creating_a_huge_expiry_is_a_400(app, client, user):
    key = issue_key(app, scopes=("keys:write", "api:read"), days=30)
    response = client.post(
        "/api/v1/tenant/acme/api-keys/create",
        json={"name": "x", "scopes": ["api:read"], "expires_in_days": 3_000_000},
        headers=bearer(key),
    )
    assert response.status_code == 400
    assert "expires_in_days" in response.json["error_description"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/tenant/acme/api-keys/create",
         '{"name": "a\\ud800b", "scopes": ["api:read"]}', "name"),
        ("/api/v1/tenant/acme/api-keys/create",
         '{"name": "ok", "scopes": ["api:read\\udfff"]}', "scopes"),
        ("/api/v1/tenant/acme/api-keys/create",
         '{"name": "ok", "scopes": ["api:read"], "allowed_ips": ["\\ud800"]}', "allowed_ips"),
        ("/api/v1/resources", '{"name": "a\\ud800b", "type": "t"}', "name"),
        ("/api/v1/resources", '{"name": "n", "type": "\\udc00"}', "type"),
        ("/api/v1/keys/verify", '{"key": "kd_\\ud800"}', "key"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_in_any_json_string_is_a_400_naming_the_field(
    app, client, user, path, body, field
):
    key = issue_key(app, scopes=("keys:write", "api:read", "api:write", "keys:verify"))
    response = client.post(path, data=body, headers={**bearer(key), **RAW_JSON})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"] == "invalid_request"
    assert field in response.json["error_description"]


def test_a_lone_surrogate_in_a_json_field_name_is_a_400(app, client, user):
    key = issue_key(app, scopes=("api:write",))
    response = client.post(
        "/api/v1/resources", data='{"\\ud800": 1}', headers={**bearer(key), **RAW_JSON}
    )
    assert response.status_code == 400 and response.json["error"] == "invalid_request"


def test_leak_report_with_a_lone_surrogate_is_still_202(client):
    response = client.post(
        "/api/v1/keys/report-leak", data='{"key": "\\ud800", "source_url": "\\udfff"}',
        headers=RAW_JSON,
    )  # fmt: skip
    assert response.status_code == 202


def test_undecodable_bytes_in_forms_are_never_a_500(app, client, user):
    login(client)
    for body in (b"name=a%ED%A0%80b&scopes=api:read&expires_in_days=30",
                 b"name=a\xed\xa0\x80b&scopes=api:read&expires_in_days=30"):  # fmt: skip
        response = client.post(
            "/keys/new", data=body, content_type="application/x-www-form-urlencoded"
        )
        assert response.status_code in (200, 400), response.status_code
    assert client.get("/admin/keys?q=a%ED%A0%80b").status_code == 200


@pytest.mark.parametrize("field", ["to", "from"])
@pytest.mark.parametrize("value", ["9999-12-31", "0001-01-01"])
def test_audit_dates_out_of_range_are_a_400_naming_the_field(app, client, user, field, value):
    login(client)
    key = issue_key(app, scopes=("admin:read",))
    for fmt in ("", "&format=csv", "&format=json"):
        response = client.get(f"/admin/audit?{field}={value}{fmt}")
        assert response.status_code == 400, (fmt, response.status_code)
        # The page names the field as it labels it (From / To).
        label = field.capitalize()
        assert f"{label} must be a date from" in html.unescape(response.get_data(as_text=True))
    api = client.get(f"/api/v1/tenant/acme/audit-events?{field}={value}", headers=bearer(key))
    assert api.status_code == 400 and api.json["field"] == field
    assert api.json["error_description"].startswith(f"{field} must be a date from")


def test_audit_to_the_last_allowed_day_is_served(app, client, user):
    login(client)
    assert client.get("/admin/audit?to=9998-12-31").status_code == 200
    export = client.get("/admin/audit?to=9998-12-31&format=json")
    assert export.status_code == 200 and export.get_data(as_text=True).startswith("[")


@pytest.mark.parametrize("big", [2**31, 2**63, 10**30])
def test_row_ids_past_the_column_are_a_404(app, client, user, big):
    login(client)
    for method, path in [
        ("POST", f"/admin/members/{big}/role"),
        ("GET", f"/admin/members/{big}/deactivate"),
        ("POST", f"/admin/members/{big}/deactivate"),
        ("POST", f"/admin/invites/{big}/revoke"),
    ]:
        response = client.open(path, method=method, data={"role": "member"})
        assert response.status_code == 404, (path, response.status_code)


@pytest.mark.parametrize("cursor", ["2147483648", "9223372036854775808"])
def test_audit_cursor_past_the_column_is_a_400_naming_it(app, client, user, cursor):
    key = issue_key(app, scopes=("admin:read",))
    response = client.get(f"/api/v1/tenant/acme/audit-events?cursor={cursor}", headers=bearer(key))
    assert response.status_code == 400 and "cursor" in response.json["error_description"]
    login(client)
    assert client.get(f"/admin/audit?before={cursor}").status_code in (200, 400)


@pytest.mark.parametrize("next_", ["/admin/keys\r\nSet-Cookie: x=1", "/admin/\nkeys", "/admin/\tx"])
def test_a_control_character_in_next_falls_back_to_the_default(app, client, user, next_):
    full = issue_key(app)
    login(client)
    key_id = full.split("_")[1]
    response = client.post(f"/admin/keys/{key_id}/revoke", data={"next": next_})
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/keys"
    assert "Set-Cookie: x" not in str(response.headers)


# -- SPEC "Names": what a name refuses, in the portal and the API alike ------------------

SPOOFING = {
    "DEL": "a\x7fb",
    "C1 control": "a\x85b",
    "C0 control": "a\x1bb",
    "right-to-left override": "invoice\u202egpj.exe",
    "left-to-right isolate": "a\u2066b",
    "right-to-left mark": "a\u200fb",
    "zero-width space": "ad\u200bmin",
    "word joiner": "a\u2060b",
    "byte order mark": "\ufeffname",
}


@pytest.mark.parametrize("text", SPOOFING.values(), ids=SPOOFING.keys())
def test_api_names_refuse_spoofing_characters(app, client, user, text):
    key = issue_key(app, scopes=("keys:write", "api:read", "api:write"))
    created = client.post(
        "/api/v1/tenant/acme/api-keys/create",
        json={"name": text, "scopes": ["api:read"]},
        headers=bearer(key),
    )
    assert created.status_code == 400 and "name" in created.json["error_description"].lower()
    resource = client.post(
        "/api/v1/resources", json={"name": text, "type": "t"}, headers=bearer(key)
    )
    assert resource.status_code == 400 and "name" in resource.json["error_description"].lower()


@pytest.mark.parametrize("text", SPOOFING.values(), ids=SPOOFING.keys())
def test_portal_names_refuse_spoofing_characters(app, client, user, text):
    login(client)
    response = client.post(
        "/keys/new", data={"name": text, "scopes": ["api:read"], "expires_in_days": "30"}
    )
    assert response.status_code == 400
    assert "Name must not contain" in response.get_data(as_text=True)
    with client.application.test_client() as fresh:
        registered = fresh.post(
            "/register",
            data={"email": "new@example.com", "password": "a long new passphrase 7",
                  "confirm": "a long new passphrase 7", "organization": text},
        )  # fmt: skip
        assert registered.status_code == 400
        assert "Organization must not contain" in registered.get_data(as_text=True)


def test_names_keep_ordinary_unicode(app, client, user):
    key = issue_key(app, scopes=("keys:write", "api:read"))
    for name in ("Zürich déploiement", "日本語のキー", "emoji 🔑", "a-b_c.d (e)"):
        response = client.post(
            "/api/v1/tenant/acme/api-keys/create",
            json={"name": f"  {name}  ", "scopes": ["api:read"]},
            headers=bearer(key),
        )
        assert response.status_code == 201 and response.json["name"] == name


def test_cli_refuses_a_spoofing_key_name(app, runner, user):
    result = runner.invoke(
        args=["keys", "issue", "--email", user, "--name", "a\u202eb", "--scope", "api:read"]
    )
    assert result.exit_code != 0 and "Name must not contain" in result.output


def test_cli_refuses_a_huge_expiry(app, runner, user):
    result = runner.invoke(
        args=["keys", "issue", "--email", user, "--name", "k", "--expires-in-days", "3000000"]
    )
    assert result.exit_code != 0 and "expires_in_days" in result.output.replace("-", "_")
