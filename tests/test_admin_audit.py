"""The audit log: events recorded, /admin/audit filters and exports, the API, chain checks."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

from bs4 import BeautifulSoup
from sqlalchemy import delete, select, update

from app import audit
from app.audit import Actor
from app.extensions import db
from app.models import AuditEvent
from tests.conftest import bearer, create_user, issue_key, login

DAY = timedelta(days=1)


def seed_events(app, n=0, *, tenant_id=1, action="test.event", actor="robot", when=None):
    with app.app_context():
        for i in range(n):
            audit.record(
                action, actor=Actor("cli", actor), tenant_id=tenant_id, target_type="thing",
                target=f"t{i}", now=when or datetime.now(UTC), n=i,
            )  # fmt: skip
        db.session.commit()


def page_ids(client, **params) -> list[int]:
    response = client.get("/admin/audit", query_string=params)
    assert response.status_code == 200
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    return [int(tr["data-event-id"]) for tr in soup.select("tr[data-event-id]")]


def table_actions(client, **params) -> list[str]:
    soup = BeautifulSoup(client.get("/admin/audit", query_string=params).data, "html.parser")
    return [tr.find_all("td")[1].get_text(strip=True) for tr in soup.select("tr[data-event-id]")]


def actions_of(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_sign_in_success_and_failure_are_recorded_with_ip_and_agent(app, client, user):
    client.post("/login", data={"email": user, "password": "wrong wrong wrong"})
    login(client)
    with app.app_context():
        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("auth.%")).order_by(AuditEvent.id)
        ).all()
    assert [e.action for e in events] == ["auth.login_failed", "auth.login"]
    assert all(e.ip == "127.0.0.1" and e.user_agent and e.target == user for e in events)


def test_admin_audit_page_newest_first_with_filters(app, signed_in):
    issue_key(app, name="a key")
    ids = page_ids(signed_in)
    assert ids == sorted(ids, reverse=True) and len(ids) >= 3
    key_events = page_ids(signed_in, action="key.issued")
    with app.app_context():
        rows = db.session.scalars(select(AuditEvent).where(AuditEvent.id.in_(key_events))).all()
    assert rows and all(r.action == "key.issued" for r in rows)
    assert all(r.actor == "cli" for r in rows)
    by_alice = page_ids(signed_in, actor="ALICE@example.com")
    with app.app_context():
        actors = set(
            db.session.scalars(select(AuditEvent.actor).where(AuditEvent.id.in_(by_alice)))
        )
    assert actors == {"alice@example.com"}


def test_date_range_filter_is_inclusive_of_whole_days(app, signed_in):
    seed_events(app, 1, action="old.event", when=datetime(2025, 3, 1, 23, 59, tzinfo=UTC))
    seed_events(app, 1, action="mid.event", when=datetime(2025, 3, 5, 0, 0, tzinfo=UTC))
    seed_events(app, 1, action="new.event", when=datetime(2025, 3, 9, 12, 0, tzinfo=UTC))
    shown = table_actions(signed_in, **{"from": "2025-03-01", "to": "2025-03-05"})
    assert "old.event" in shown and "mid.event" in shown and "new.event" not in shown
    shown = table_actions(signed_in, **{"from": "2025-03-02"})
    assert "old.event" not in shown and "new.event" in shown
    assert table_actions(signed_in, to="2025-03-04") == ["old.event"]
    bad = signed_in.get("/admin/audit?from=yesterday")
    assert bad.status_code == 400 and "must be a date" in bad.get_data(as_text=True)


def test_audit_page_is_paginated_and_tenant_scoped(app, signed_in):
    create_user(app, "eve@other.example", tenant="other")
    seed_events(app, 120)
    seed_events(app, 5, tenant_id=2, action="other.secret")
    first = page_ids(signed_in)
    assert len(first) == 50
    html = signed_in.get("/admin/audit").get_data(as_text=True)
    assert "other.secret" not in html and "other.secret" not in table_actions(signed_in)
    older = BeautifulSoup(html, "html.parser").find("a", rel="next")["href"]
    second = page_ids(signed_in, before=older.split("before=")[1].split("&")[0])
    assert len(second) == 50 and max(second) < min(first)


def test_csv_and_json_exports_stream_the_filtered_events(app, signed_in):
    create_user(app, "eve@other.example", tenant="other")
    seed_events(app, 1500, action="bulk.event")
    seed_events(app, 3, tenant_id=2, action="bulk.event")
    response = signed_in.get("/admin/audit?format=csv&action=bulk.event")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.is_streamed
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 1500 and {r["action"] for r in rows} == {"bulk.event"}
    assert int(rows[0]["id"]) > int(rows[-1]["id"])
    assert json.loads(rows[0]["details"])["n"] == 1499

    response = signed_in.get("/admin/audit?format=json&action=bulk.event")
    assert response.mimetype == "application/json" and response.is_streamed
    events = json.loads(response.get_data(as_text=True))
    assert len(events) == 1500 and events[0]["details"] == {"n": 1499}
    assert set(events[0]) == {
        "id", "action", "actor_type", "actor", "ip", "user_agent", "target_type", "target",
        "details", "created_at",
    }  # fmt: skip
    assert isinstance(events[0]["created_at"], int)
    everything = json.loads(signed_in.get("/admin/audit?format=json").get_data(as_text=True))
    assert {e["action"] for e in everything} >= {"bulk.event", "user.created"}
    assert len([e for e in everything if e["action"] == "bulk.event"]) == 1500


def test_csv_export_neutralizes_spreadsheet_formulas(app, signed_in):
    seed_events(app, 1, actor="=HYPERLINK(1)")
    text = signed_in.get("/admin/audit?format=csv").get_data(as_text=True)
    assert "'=HYPERLINK(1)" in text


def test_member_cannot_read_the_audit_log(app, client, user):
    create_user(app, "bob@example.com", role="member")
    login(client, "bob@example.com")
    assert client.get("/admin/audit").status_code == 403
    assert client.get("/admin/audit?format=csv").status_code == 403


# --- API ----------------------------------------------------------------------------


def test_audit_events_api_pages_with_a_cursor(app, client, user):
    seed_events(app, 130)
    key = issue_key(app, scopes=("admin:read",))
    url = "/api/v1/tenant/acme/audit-events"
    first = client.get(url, headers=bearer(key))
    assert first.status_code == 200
    body = first.json
    assert len(body["events"]) == 50 and body["next_cursor"]
    event = body["events"][0]
    assert set(event) == {
        "id", "action", "actor_type", "actor", "ip", "user_agent", "target_type", "target",
        "details", "created_at",
    }  # fmt: skip
    # this very call was the key's first use from an address: newest event
    assert event["action"] == "key.used_from_new_ip" and event["ip"] == "127.0.0.1"
    assert body["events"][1]["action"] == "key.issued"
    assert isinstance(event["details"], dict) and isinstance(event["created_at"], int)
    seen = [e["id"] for e in body["events"]]
    cursor = body["next_cursor"]
    while cursor:
        page = client.get(url, query_string={"cursor": cursor, "limit": 200}, headers=bearer(key))
        seen += [e["id"] for e in page.json["events"]]
        cursor = page.json["next_cursor"]
    with app.app_context():
        total = db.session.scalar(
            select(db.func.count()).select_from(AuditEvent).where(AuditEvent.tenant_id == 1)
        )
    assert len(seen) == len(set(seen)) == total and seen == sorted(seen, reverse=True)
    small = client.get(url + "?limit=3", headers=bearer(key)).json
    assert len(small["events"]) == 3


def test_audit_events_api_rejects_bad_input_and_wrong_callers(app, client, user):
    url = "/api/v1/tenant/acme/audit-events"
    key = issue_key(app, scopes=("admin:read",))
    for query in ("?limit=0", "?limit=201", "?limit=x", "?cursor=abc"):
        response = client.get(url + query, headers=bearer(key))
        assert response.status_code == 400, query
        assert response.json["error"] == "invalid_request"
    assert client.get(url, headers=bearer(issue_key(app, scopes=("api:read",)))).status_code == 403
    create_user(app, "bob@example.com", role="member")
    member = issue_key(app, "bob@example.com", scopes=("admin:read",))
    assert client.get(url, headers=bearer(member)).status_code == 403
    create_user(app, "eve@other.example", tenant="other")
    foreign = issue_key(app, "eve@other.example", scopes=("admin:read",))
    response = client.get(url, headers=bearer(foreign))
    assert response.status_code == 404 and response.json["error"] == "not_found"
    assert client.get(url).status_code == 401


# --- tamper evidence ----------------------------------------------------------------


def test_chain_verification_names_an_edited_event(app, runner, user):
    seed_events(app, 5)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0 and "intact" in result.output
    with app.app_context():
        victim = db.session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all()[3]
        db.session.execute(
            update(AuditEvent).where(AuditEvent.id == victim).values(actor="someone-else")
        )
        db.session.commit()
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code != 0 and f"event {victim}: its contents were altered" in result.output


def test_chain_verification_names_the_event_after_a_deleted_one(app, runner, user):
    seed_events(app, 5)
    with app.app_context():
        ids = db.session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all()
        db.session.execute(delete(AuditEvent).where(AuditEvent.id == ids[2]))
        db.session.commit()
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code != 0
    assert f"event {ids[3]}: the event before it is missing or was altered" in result.output


def test_admin_actions_are_audited(app, signed_in):
    """Policy, member and invite changes each leave an event naming the admin."""
    create_user(app, "bob@example.com", role="member")
    signed_in.post(
        "/admin/policy", data={"max_key_lifetime_days": "10", "confirm_no_member_scopes": "yes"}
    )
    signed_in.post("/admin/members/invite", data={"email": "new@example.com"})
    with app.app_context():
        bob = db.session.scalar(select(AuditEvent.target).where(AuditEvent.target.like("bob%")))
        from app.accounts.service import get_user_by_email

        bob_id = get_user_by_email(bob).id
    signed_in.post(f"/admin/members/{bob_id}/role", data={"role": "admin"})
    signed_in.post(f"/admin/members/{bob_id}/deactivate")
    with app.app_context():
        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.actor == "alice@example.com")
        ).all()
    assert {
        "policy.changed",
        "invite.created",
        "member.role_changed",
        "member.deactivated",
    } <= {e.action for e in events}
    assert all(e.ip == "127.0.0.1" for e in events)


def test_details_are_shown_briefly_and_changes_as_old_to_new():
    from app.admin.auditlog import readable_details

    raw = (
        '{"before": {"max_key_lifetime_days": 0, "require_expiry": false, "member_scopes": ["a"]},'
        ' "after": {"max_key_lifetime_days": 30, "require_expiry": false, "member_scopes": ["a"]},'
        ' "expires_at": "2026-12-27T06:12:29.115000+00:00", "note": "' + "x" * 200 + '"}'
    )
    shown = dict(readable_details(raw))
    assert shown["max_key_lifetime_days"] == "0 → 30"
    assert "require_expiry" not in shown and "member_scopes" not in shown  # unchanged
    assert shown["expires_at"] == "2026-12-27 06:12 UTC"
    assert len(shown["note"]) == 80 and shown["note"].endswith("…")
    assert readable_details('{"before": "member", "after": "admin"}') == [
        ("change", "member → admin")
    ]
    assert readable_details("{}") == [] and readable_details(None) == []
