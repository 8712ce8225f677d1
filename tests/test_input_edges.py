"""Inputs at the edges: odd digits, stray query keys, oversized or secret-bearing bodies,
and configuration that would mint unusable keys."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app import create_app
from app.extensions import db
from app.models import AuditEvent
from app.params import whole_number
from tests.conftest import bearer, issue_key, login


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("12", 12), (" 7 ", 7), ("0", 0), ("²", None), ("٣", None), ("-1", None), ("1e3", None),
     ("9" * 19, None), ("", None), (None, None)],
)  # fmt: skip
def test_whole_number_takes_only_plain_ascii_digits(raw, expected):
    assert whole_number(raw) == expected


def test_odd_numbers_in_admin_query_strings_are_never_a_500(app, client, user):
    login(client)
    for url in ("/admin/keys?page=²", "/admin/keys?expiring_within_days=٣",
                "/admin/audit?before=²", "/admin/audit?before=99999999999999999999"):  # fmt: skip
        assert client.get(url).status_code in (200, 400), url
    key = issue_key(app, scopes=("admin:read",))
    for url in ("/api/v1/tenant/acme/audit-events?cursor=²",
                "/api/v1/tenant/acme/audit-events?limit=²",
                "/api/v1/tenant/acme/admin/api-keys?page=²"):  # fmt: skip
        response = client.get(url, headers=bearer(key))
        assert response.status_code == 400 and response.json["error"] == "invalid_request", url


def test_unknown_query_keys_do_not_reach_the_next_page_link(app, client, user):
    key = issue_key(app, scopes=("admin:read",))
    for n in range(3):
        issue_key(app, name=f"k{n}")
    response = client.get(
        "/api/v1/tenant/acme/admin/api-keys?per_page=1&slug=x&_scheme=javascript&_external=1",
        headers=bearer(key),
    )
    assert response.status_code == 200
    link = response.headers["Link"]
    assert link.startswith("</api/v1/tenant/acme/admin/api-keys?") and "_scheme" not in link


def test_forbidden_carries_the_bearer_challenge(app, client, user):
    from app.accounts import service as accounts
    from app.audit import Actor
    from app.clock import utcnow
    from app.keys import service as keys

    with app.app_context():
        _, key = keys.issue_key(
            user=accounts.get_user_by_email(user), name="office only", scopes=("api:read",),
            expires_in_days=0, allowed_ips="203.0.113.0/24", now=utcnow(), actor=Actor.cli(),
        )  # fmt: skip
        db.session.commit()
    response = client.get("/api/v1/me", headers=bearer(key))
    assert response.status_code == 403 and response.json["error"] == "forbidden"
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="keydesk"')
    assert 'error="forbidden"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("prefix", ["KD", "my-app", "1kd", "", "a" * 17])
def test_an_unusable_key_prefix_stops_the_app_at_start(tmp_path, monkeypatch, prefix):
    monkeypatch.setenv("KEYDESK_KEY_PREFIX", prefix)
    monkeypatch.setenv("KEYDESK_DATABASE_URL", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with pytest.raises(ValueError, match="KEYDESK_KEY_PREFIX"):
        create_app({"TESTING": True})


def test_report_leak_is_202_even_when_too_large(client):
    response = client.post(
        "/api/v1/keys/report-leak", data="x" * (70 * 1024), content_type="application/json"
    )
    assert response.status_code == 202


def test_report_leak_never_stores_a_key_found_in_the_source_url(app, client, user):
    key = issue_key(app)
    url = f"https://paste.example/raw?token={key}&x=1"
    assert (
        client.post("/api/v1/keys/report-leak", json={"key": key, "source_url": url}).status_code
        == 202
    )
    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "key.leaked")
        ).scalar_one()
    assert key not in event.details and "[redacted key]" in event.details


def test_report_leak_is_202_for_nul_bytes_and_keeps_none(app, client, user):
    key = issue_key(app)
    for body in ({"\u0000": None}, {"key": "\u0000", "source_url": "x"}):
        assert client.post("/api/v1/keys/report-leak", json=body).status_code == 202
    url = "https://paste.example/\u0000raw"
    response = client.post("/api/v1/keys/report-leak", json={"key": key, "source_url": url})
    assert response.status_code == 202
    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "key.leaked")
        ).scalar_one()
    assert "\\u0000" not in event.details and "paste.example/raw" in event.details
