"""Issue 13.3 and 12.4: one function decides a key's status and its effective end of life
(expiry or grace end, whichever comes first); the key list, the detail page, the admin
filters and counts, the banner, the reminder email, the API and the "a key cannot create
a key that outlives it" rule all agree with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select

from app.admin import reminders
from app.audit import Actor
from app.clock import to_unix, utcnow
from app.extensions import db
from app.keys import service as keys
from app.keys import status as key_status
from app.models import ApiKey, User
from tests.conftest import bearer, issue_key

CLI = Actor.cli()


def key_row(app, key_id: str) -> ApiKey:
    with app.app_context():
        row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()
        db.session.expunge(row)
        return row


def rotate(app, key_id: str, grace_hours: int) -> str:
    with app.app_context():
        row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()
        new, _ = keys.rotate_key(key=row, grace_hours=grace_hours, now=utcnow(), actor=CLI)
        db.session.commit()
        return new.key_id


@pytest.fixture
def rotated(app, user):
    """A 90-day key rotated with a 24-hour grace: it stops in a day, not in 89 days."""
    full = issue_key(app, days=90, scopes=("keys:read", "keys:write", "api:read"), name="ci")
    old = full.split("_")[1]
    new = rotate(app, old, 24)
    return {"full": full, "old": old, "new": new}


def test_effective_end_is_the_earlier_of_expiry_and_grace_end():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    assert key_status.effective_end(None, None) is None
    assert key_status.effective_end(t, None) == t
    assert key_status.effective_end(None, t) == t
    assert key_status.effective_end(t, t + timedelta(hours=1)) == t
    assert key_status.effective_end(t + timedelta(days=9), t) == t
    assert key_status.effective_end(100, 50) == 50  # Unix seconds, as the hot path holds


def test_a_rotated_key_reads_rotated_and_ends_at_its_grace_end_everywhere(app, signed_in, rotated):
    old = key_row(app, rotated["old"])
    grace_end = old.revoked_at
    assert key_status.status_of(old, utcnow()) == "rotated"
    assert key_status.end_of(old) == grace_end < old.expires_at
    # the key list
    page = BeautifulSoup(signed_in.get("/keys").get_data(as_text=True), "html.parser")
    tr = page.find("a", string="ci", href=f"/keys/{rotated['old']}").find_parent("tr")
    assert tr.find(class_="badge").text == "rotated"
    expires = tr.find("td", attrs={"data-label": "Expires"}).find("time")
    assert expires.text == "in 24 hours" and expires["datetime"] == grace_end.isoformat()
    # the detail page
    detail = BeautifulSoup(
        signed_in.get(f"/keys/{rotated['old']}").get_data(as_text=True), "html.parser"
    )
    assert detail.find("h1").find(class_="badge").text == "rotated"
    dt = detail.find("dt", string="Expires")
    assert dt.find_next("dd").find("time")["datetime"] == grace_end.isoformat()
    assert detail.find("a", string="Revoke…") is not None  # still working: can be cut short
    # the admin inventory: status=rotated finds it right after rotating
    admin = BeautifulSoup(
        signed_in.get("/admin/keys?status=rotated").get_data(as_text=True), "html.parser"
    )
    assert [tr["data-key-id"] for tr in admin.select("tr[data-key-id]")] == [rotated["old"]]
    # the API: expires_at is the effective end, status rotated, on list, one key and /me
    manager = rotated["full"]
    one = signed_in.get(f"/api/v1/tenant/acme/api-keys/{rotated['old']}", headers=bearer(manager))
    assert one.json["status"] == "rotated" and one.json["expires_at"] == to_unix(grace_end)
    me = signed_in.get("/api/v1/me", headers=bearer(manager))
    assert me.json["key"]["expires_at"] == to_unix(grace_end)


def test_a_key_in_grace_cannot_create_keys_that_outlive_its_grace(app, client, rotated):
    """Issue 12.4: the parent rule reads the effective end of life, not expires_at."""
    base = "/api/v1/tenant/acme/api-keys"
    for days in (0, 2, 30):
        body = {"name": "child", "scopes": ["api:read"], "expires_in_days": days}
        response = client.post(f"{base}/create", headers=bearer(rotated["full"]), json=body)
        assert response.status_code == 400, days
        assert response.json["field"] == "expires_in_days"
        assert "no later than itself" in response.json["error_description"]
    # nor stretch another key past its own end by PATCH, nor rotate one to outlive it
    other = issue_key(client.application, days=0).split("_")[1]
    later = to_unix(utcnow() + timedelta(days=2))
    patched = client.patch(f"{base}/{rotated['new']}", headers=bearer(rotated["full"]),
                           json={"expires_at": later})  # fmt: skip
    assert patched.status_code == 400 and patched.json["field"] == "expires_at"
    rotated_again = client.post(f"{base}/{other}/rotate", headers=bearer(rotated["full"]), json={})
    assert rotated_again.status_code == 400


def test_banner_reminder_and_filters_count_the_same_keys(app, signed_in, rotated, user):
    """Keys of status `expiring`: the banner, the email, status=expiring and "Expiring this
    week" (expiring_within_days=7) list the same ones; a rotated key is in none of them, and
    the email gives the effective end."""
    soon = issue_key(app, days=3, name="soon").split("_")[1]
    issue_key(app, days=30, name="later")
    now = utcnow()
    with app.app_context():
        truth = {k.key_id for k in db.session.scalars(select(ApiKey))
                 if key_status.status_of(k, now) == "expiring"}  # fmt: skip
        mails = reminders.due_reminders(within_days=7, now=now)
        emailed = {k.key_id for r in mails for k in r.keys}
        text = mails[0].message(sender="keydesk@example.com", now=now).get_content()
    assert truth == emailed == {soon}
    assert key_row(app, soon).expires_at.strftime("%Y-%m-%d %H:%M UTC") in text
    assert "in 3 days" in text
    page = BeautifulSoup(signed_in.get("/keys").get_data(as_text=True), "html.parser")
    banner = page.find(id="expiring-title").find_parent("section")
    assert "1 key expiring within 7 days" in banner.text
    assert [a["href"] for a in banner.find_all("a")] == [f"/keys/{soon}"]
    for query in ("status=expiring", "expiring_within_days=7"):
        admin = BeautifulSoup(
            signed_in.get(f"/admin/keys?{query}").get_data(as_text=True), "html.parser"
        )
        assert [tr["data-key-id"] for tr in admin.select("tr[data-key-id]")] == [soon], query
    chip = BeautifulSoup(signed_in.get("/admin/keys").get_data(as_text=True), "html.parser")
    assert "status=expiring" in chip.find("a", string="Expiring this week")["href"]


def test_reminder_names_the_effective_end_when_it_comes_first(app, user):
    """A key revoked for the future by something other than rotation (none today, but the
    rule is general): the email says when it really stops."""
    key_id = issue_key(app, days=30).split("_")[1]
    with app.app_context():
        row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()
        row.revoked_at, row.revoke_reason = utcnow() + timedelta(days=2), "incident"
        db.session.commit()
        now = utcnow()
        (mail,) = reminders.due_reminders(within_days=7, now=now)
        text = mail.message(sender="k@example.com", now=now).get_content()
    assert (
        "in 2 days" in text and key_row(app, key_id).revoked_at.strftime("%Y-%m-%d %H:%M") in text
    )


def test_sql_status_matches_status_of_through_a_grace_period(app, user):
    """The inventory's SQL conditions and status_of agree before, during and after a grace
    period and an expiry that falls inside it."""
    from app.admin import inventory

    full = issue_key(app, days=1)
    rotate(app, full.split("_")[1], 48)  # expiry (1 day) comes before the grace end (2 days)
    issue_key(app, days=0)
    with app.app_context():
        tenant_id = db.session.execute(select(User.tenant_id)).scalar()
        for offset in (timedelta(0), timedelta(hours=30), timedelta(days=3), timedelta(days=400)):
            at = utcnow() + offset
            rows = list(db.session.scalars(select(ApiKey)))
            for status in key_status.STATUSES:
                filters = inventory.KeyFilter(status=status)
                page = inventory.key_page(tenant_id=tenant_id, filters=filters, now=at)
                expected = {k.key_id for k in rows if key_status.status_of(k, at) == status}
                assert {r.key.key_id for r in page.rows} == expected, (offset, status)
            working = {k.key_id for k in rows if key_status.is_working(k, at)}
            sql = set(db.session.scalars(select(ApiKey.key_id).where(key_status.working(at))))
            assert sql == working, offset
