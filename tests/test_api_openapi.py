"""The OpenAPI document: valid 3.1, covers every /api/v1 route, and schemathesis finds no
5xx and no response outside it when run against the live app."""

from __future__ import annotations

import re
import warnings

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.experimental import OPEN_API_3_1

from tests.conftest import bearer, create_user, issue_key

OPEN_API_3_1.enable()
# schemathesis 3.x subclasses jsonschema's deprecated RefResolver; not our code.
pytestmark = pytest.mark.filterwarnings(
    "ignore:jsonschema.RefResolver is deprecated:DeprecationWarning"
)  # schemathesis 3.x checks OpenAPI 3.1 documents behind this switch
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
)


@pytest.fixture
def app_config() -> dict:
    # Hundreds of generated requests from one key and address: keep the limits out of the way.
    many = "100000 per minute"
    return {
        "KEYDESK_API_RATE_LIMIT": many,
        "KEYDESK_AUTH_FAILURE_LIMIT": many,
        "KEYDESK_LEAK_REPORT_LIMIT": many,
    }


def test_document_is_valid_openapi_3_1(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.is_json
    doc = response.json
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on an invalid document
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "kd_<key id>_<secret><checksum>",
    }


def test_every_route_is_documented_with_its_scopes(app, client):
    doc = client.get("/api/v1/openapi.json").json
    seen = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        view = app.view_functions[rule.endpoint]
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = doc["paths"][path].get(method.lower())
            assert operation is not None, f"{method} {path}"
            needed = getattr(view, "required_scopes", None)
            if needed is None:
                assert operation["security"] == [], f"{method} {path} needs no key"
            else:
                assert operation["x-required-scopes"] == list(needed), f"{method} {path}"
                assert "401" in operation["responses"] and "403" in operation["responses"]
            seen += 1
    assert seen >= 14
    for path in (
        "/api/v1/tenant/{slug}/admin/api-keys",
        "/api/v1/tenant/{slug}/admin/api-keys/{key_id}/revoke",
        "/api/v1/tenant/{slug}/audit-events",
    ):
        assert path in doc["paths"]


@pytest.fixture
def admin_key(app) -> str:
    create_user(app)
    return issue_key(app, scopes=("admin:all",))


@pytest.fixture
def api_schema(app, admin_key):
    return schemathesis.from_wsgi("/api/v1/openapi.json", app)


with warnings.catch_warnings():
    # schemathesis 3.39 warns about its own default filter arguments here; not our call.
    warnings.simplefilter("ignore", DeprecationWarning)
    schema = schemathesis.from_pytest_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_live_app_conforms_to_its_document(case, admin_key):
    response = case.call(headers=bearer(admin_key))
    case.validate_response(response, checks=CHECKS)
