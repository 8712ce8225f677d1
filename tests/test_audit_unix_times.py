"""Issue 13.11: every time in the audit log's JSON is Unix seconds, `details` included, in
the page's JSON export, the CSV's details column and the API; the page shows them as dates."""

from __future__ import annotations

import csv
import io
import json

from bs4 import BeautifulSoup
from sqlalchemy import select

from app import audit
from app.audit import Actor
from app.clock import to_unix, utcnow
from app.extensions import db
from app.models import ApiKey, AuditEvent, User
from tests.conftest import bearer, issue_key


def test_new_events_store_times_as_unix_seconds(app, signed_in):
    issue_key(app, days=30)
    with app.app_context():
        key = db.session.execute(select(ApiKey)).scalar_one()
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "key.issued")
        ).scalar_one()
        assert json.loads(event.details)["expires_at"] == to_unix(key.expires_at)
        expected = to_unix(key.expires_at)
    exported = json.loads(signed_in.get("/admin/audit?format=json&action=key.issued").data)
    assert exported[0]["details"]["expires_at"] == expected
    rows = list(csv.DictReader(io.StringIO(signed_in.get("/admin/audit?format=csv").text)))
    issued = next(r for r in rows if r["action"] == "key.issued")
    assert json.loads(issued["details"])["expires_at"] == expected
    page = BeautifulSoup(signed_in.get("/admin/audit?action=key.issued").data, "html.parser")
    assert key.expires_at.strftime("%Y-%m-%d %H:%M UTC") in page.get_text()


def test_events_written_before_hold_text_times_yet_export_unix_seconds(app, signed_in):
    now = utcnow().replace(microsecond=420590)
    with app.app_context():
        tenant_id = db.session.execute(select(User.tenant_id)).scalar()
        # As audit.record wrote them before: a datetime through json.dumps(default=str).
        old = {"expires_at": str(now), "nested": {"at": str(now)}}
        audit.record("invite.created", actor=Actor.cli(), now=now, tenant_id=tenant_id, **old)
        db.session.commit()
    (event,) = json.loads(signed_in.get("/admin/audit?format=json&action=invite.created").data)
    assert event["details"]["expires_at"] == to_unix(now)
    assert event["details"]["nested"]["at"] == to_unix(now)
    key = issue_key(app, scopes=("admin:read",))
    api = signed_in.get(
        "/api/v1/tenant/acme/audit-events?action=invite.created", headers=bearer(key)
    )
    assert api.json["events"][0]["details"]["expires_at"] == to_unix(now)
    assert isinstance(api.json["events"][0]["created_at"], int)
