"""The API's bodies are declared once (app/api/schemas.py): the OpenAPI document's
components come from those declarations, and the views parse requests with them."""

from __future__ import annotations

import pytest

from app.api import schemas
from tests.conftest import bearer, issue_key


def test_document_components_are_the_declarations(client):
    doc = client.get("/api/v1/openapi.json").json
    assert doc["components"]["schemas"] == schemas.component_schemas()
    create = doc["components"]["schemas"]["KeyCreate"]
    assert create["required"] == ["name", "scopes"]
    assert create["properties"]["expires_in_days"]["maximum"] == 3650
    me_key = doc["components"]["schemas"]["MeKey"]["properties"]
    assert "user_token" in me_key["kind"]["anyOf"][0]["enum"]


@pytest.fixture
def writer(app, user) -> str:
    return issue_key(app, scopes=("keys:read", "keys:write", "api:write"))


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"scopes": ["api:read"]}, "name", "Missing field: name"),
        ({"name": 5, "scopes": ["api:read"]}, "name", "must be a string"),
        ({"name": "k", "scopes": "api:read"}, "scopes", "must be a list"),
        ({"name": "k", "scopes": ["api:read", 7]}, "scopes", "list of strings"),
        ({"name": "k", "scopes": ["api:read"], "expires_in_days": True}, "", "an integer"),
        ({"name": "k", "scopes": ["api:read"], "expires_in_days": "30"}, "", "an integer"),
        ({"name": "k", "scopes": ["api:read"], "expires_in_days": 1.5}, "", "an integer"),
        ({"name": "k", "scopes": ["api:read"], "expires_in_days": 2**64}, "", "between 0"),
        ({"name": "k", "scopes": ["api:read"], "allowed_ips": [{"a": 1}]}, "", "list of str"),
        ({"name": "k", "scopes": ["nope:nope"]}, "", "Unknown scope: nope:nope"),
        ({"name": "k", "scopes": []}, "", "at least one scope"),
    ],
)
def test_create_names_the_bad_field(client, writer, body, field, words):
    response = client.post("/api/v1/tenant/acme/api-keys/create", json=body, headers=bearer(writer))
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_request"
    assert words in response.json["error_description"]
    assert field in response.json["error_description"]


def test_null_reads_as_absent_and_extra_fields_are_ignored(client, writer):
    response = client.post(
        "/api/v1/tenant/acme/api-keys/create",
        json={"name": "k", "scopes": ["api:write"], "expires_in_days": None, "future": 1},
        headers=bearer(writer),
    )
    assert response.status_code == 201 and response.json["expires_at"] is None


@pytest.mark.parametrize("body", [[], "x", 5, None])
def test_a_body_that_is_no_object_is_refused(client, writer, body):
    import json

    response = client.post(
        "/api/v1/resources",
        data=json.dumps(body),
        content_type="application/json",
        headers=bearer(writer),
    )
    assert response.status_code == 400 and response.json["error"] == "invalid_request"


def test_rotate_and_resources_parse_with_their_declarations(app, client, writer):
    bad = client.post(
        "/api/v1/resources", json={"name": "db", "type": ["x"]}, headers=bearer(writer)
    )
    assert bad.status_code == 400 and "Field type must be a string" in bad.json["error_description"]
    key = client.post(
        "/api/v1/tenant/acme/api-keys/create",
        json={"name": "k", "scopes": ["api:write"]},
        headers=bearer(writer),
    ).json
    url = f"/api/v1/tenant/acme/api-keys/{key['id']}/rotate"
    refused = client.post(url, json={"grace_hours": "1"}, headers=bearer(writer))
    assert refused.status_code == 400 and "grace_hours" in refused.json["error_description"]
    rotated = client.post(url, headers=bearer(writer))  # no body: the default grace
    assert rotated.status_code == 201
