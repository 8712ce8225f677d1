"""/admin/keys: the inventory's filters, sorting, paging, marks, and (incident) revoke."""

from __future__ import annotations

from datetime import timedelta

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import event, select

from app import audit
from app.accounts import service as accounts
from app.admin import inventory
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import service as keys
from app.models import ApiKey, AuditEvent
from tests.conftest import bearer, create_user, issue_key, login, sqlite_only

DAY = timedelta(days=1)


def make_key(app, email="alice@example.com", name="key", scopes=("api:read",), days=0, **fields):
    """Issue a key through the service, then set fields (times relative to now) directly."""
    with app.app_context():
        user = accounts.get_user_by_email(email)
        row, full = keys.issue_key(
            user=user, name=name, scopes=scopes, expires_in_days=days, now=utcnow(),
            actor=Actor.cli(),
        )  # fmt: skip
        for field, value in fields.items():
            setattr(row, field, value)
        db.session.commit()
        return row.key_id


def listed(client, **params) -> list[str]:
    """Key ids on the /admin/keys page for these query parameters, in page order."""
    response = client.get("/admin/keys", query_string=params)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    soup = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    return [tr["data-key-id"] for tr in soup.select("tr[data-key-id]")]


@pytest.fixture
def zoo(app, signed_in):
    """Alice (admin) and Bob (member) with keys in every status; returns {label: key_id}."""
    create_user(app, "bob@example.com", role="member")
    now = utcnow()
    made = {
        "active": make_key(app, name="Active deploy", scopes=("api:read", "deploy:production")),
        "expiring": make_key(app, name="Expiring soon", days=30, expires_at=now + 3 * DAY),
        "expired": make_key(app, name="Old expired", days=30, expires_at=now - DAY),
        "revoked": make_key(app, name="Revoked one", revoked_at=now - DAY, revoke_reason="revoked"),
        "rotated": make_key(app, name="Rotated", revoked_at=now - DAY, revoke_reason="rotated"),
        "grace": make_key(app, name="In grace", revoked_at=now + DAY, revoke_reason="rotated"),
        "leaked": make_key(app, name="Leaked one", revoked_at=now - DAY, revoke_reason="leaked"),
        "bob": make_key(
            app,
            "bob@example.com",
            name="Bob staging",
            scopes=("deploy:staging",),
            created_at=now - 90 * DAY,
            last_used_at=now - 45 * DAY,
        ),  # fmt: skip
        "bob_fresh": make_key(app, "bob@example.com", name="Bob unused new"),
    }
    return made


def test_every_key_of_the_tenant_is_listed_with_owner_and_details(app, signed_in, zoo):
    create_user(app, "eve@other.example", tenant="other")
    other = make_key(app, "eve@other.example", name="Other tenant key")
    html = signed_in.get("/admin/keys").get_data(as_text=True)
    soup = BeautifulSoup(html, "html.parser")
    ids = [tr["data-key-id"] for tr in soup.select("tr[data-key-id]")]
    assert set(ids) == set(zoo.values()) and other not in ids
    row = soup.select_one(f'tr[data-key-id="{zoo["bob"]}"]').get_text(" ", strip=True)
    assert "bob@example.com" in row and "deploy:staging" in row and "Bob staging" in row
    assert "9 keys" in soup.select_one("#result-count").get_text()


def test_status_filter_matches_status_of_for_every_status(app, signed_in, zoo):
    with app.app_context():
        now = utcnow()
        truth = {k.key_id: keys.status_of(k, now) for k in db.session.scalars(select(ApiKey))}
    assert set(truth.values()) == set(inventory.STATUSES)
    for status in inventory.STATUSES:
        expected = {key_id for key_id, s in truth.items() if s == status}
        assert set(listed(signed_in, status=status)) == expected, status
    # A key in its rotation grace reads `rotated` at once (issue 13.3), not `expiring`.
    assert truth[zoo["grace"]] == "rotated"
    assert zoo["grace"] in listed(signed_in, status="rotated")
    assert zoo["grace"] not in listed(signed_in, status="expiring")


def test_expiring_this_week_and_status_expiring_count_the_same_keys(app, signed_in, zoo):
    """The quick filter "Expiring this week" and status=expiring: one set, one count."""
    week = set(listed(signed_in, expiring_within_days=7))
    assert week == set(listed(signed_in, status="expiring")) == {zoo["expiring"]}
    html = signed_in.get("/admin/keys?expiring_within_days=7").get_data(as_text=True)
    assert "1 key matches" in BeautifulSoup(html, "html.parser").select_one("#result-count").text


def test_owner_scope_and_name_filters(app, signed_in, zoo):
    assert set(listed(signed_in, owner="BOB@example.com")) == {zoo["bob"], zoo["bob_fresh"]}
    assert listed(signed_in, owner="nobody@example.com") == []
    assert listed(signed_in, scope="deploy:production") == [zoo["active"]]
    # whole tokens only: deploy:staging is not matched by a prefix of another scope
    assert listed(signed_in, scope="deploy:staging") == [zoo["bob"]]
    assert set(listed(signed_in, q="bob")) == {zoo["bob"], zoo["bob_fresh"]}
    assert listed(signed_in, q="EXPIRING") == [zoo["expiring"]]
    assert listed(signed_in, q="100%") == []  # LIKE wildcards are literal
    assert listed(signed_in, owner="bob@example.com", q="staging") == [zoo["bob"]]


def test_expiring_within_and_unused_for_filters(app, signed_in, zoo):
    # working keys only: the already expired key is not "expiring within 7 days"
    assert listed(signed_in, expiring_within_days=7) == [zoo["expiring"]]
    assert listed(signed_in, expiring_within_days=2) == []
    # unused for 30 days: last used 45 days ago; a key created today and never used is not
    assert listed(signed_in, unused_for_days=30) == [zoo["bob"]]
    assert listed(signed_in, unused_for_days=60) == []


def test_bad_filter_values_answer_400_with_a_message(signed_in):
    for params in ({"status": "bogus"}, {"scope": "x:y"}, {"expiring_within_days": "-1"}):
        response = signed_in.get("/admin/keys", query_string=params)
        assert response.status_code == 400
        assert "must be" in response.get_data(as_text=True) or "Unknown scope" in (
            response.get_data(as_text=True)
        )


def test_sorting(app, signed_in):
    now = utcnow()
    a = make_key(app, name="b-key", created_at=now - 3 * DAY, last_used_at=now - DAY, days=9)
    b = make_key(app, name="a-key", created_at=now - 2 * DAY, days=30)
    c = make_key(app, name="c-key", created_at=now - 1 * DAY, last_used_at=now - 5 * DAY)
    assert listed(signed_in) == [c, b, a]  # newest first by default
    assert listed(signed_in, sort="created", dir="asc") == [a, b, c]
    assert listed(signed_in, sort="name") == [b, a, c]
    assert listed(signed_in, sort="name", dir="desc") == [c, a, b]
    assert listed(signed_in, sort="expires")[:2] == [a, b]
    assert listed(signed_in, sort="last_used")[:2] == [a, c]


def test_marks_keys_expiring_this_week_and_unused_for_a_month(app, signed_in, zoo):
    soup = BeautifulSoup(signed_in.get("/admin/keys").get_data(as_text=True), "html.parser")
    expiring = [tr["data-key-id"] for tr in soup.select("tr.mark-expiring")]
    unused = [tr["data-key-id"] for tr in soup.select("tr.mark-unused")]
    assert expiring == [zoo["expiring"]]
    assert unused == [zoo["bob"]]
    row = soup.select_one(f'tr[data-key-id="{zoo["bob"]}"]').get_text(" ", strip=True)
    assert "unused 30+ days" in row


def test_pages_of_fifty(app, signed_in):
    with app.app_context():
        user = accounts.get_user_by_email("alice@example.com")
        now = utcnow()
        for n in range(120):
            db.session.add(
                ApiKey(
                    key_id=f"bulk{n:08d}", digest=b"x" * 32, name=f"bulk {n}", kind="user",
                    tenant_id=user.tenant_id, user_id=user.id, scopes="api:read",
                    created_at=now - n * timedelta(minutes=1),
                )
            )  # fmt: skip
        db.session.commit()
    first, second, third = (listed(signed_in, page=p) for p in (1, 2, 3))
    assert len(first) == 50 and len(second) == 50 and len(third) == 20
    assert first[0] == "bulk00000000" and second[0] == "bulk00000050"
    assert not set(first) & set(second)
    page = signed_in.get("/admin/keys?page=2&q=bulk").get_data(as_text=True)
    assert "page 2 of 3" in page and "page=3" in page and "q=bulk" in page


def test_member_gets_403_and_signed_out_is_redirected(app, client, user):
    assert client.get("/admin/keys").status_code == 302
    create_user(app, "bob@example.com", role="member")
    login(client, "bob@example.com")
    assert client.get("/admin/keys").status_code == 403
    assert client.get("/admin/keys/revoke?q=x").status_code == 403


def test_admin_revokes_a_single_key_and_foreign_keys_are_404(app, signed_in, zoo):
    create_user(app, "eve@other.example", tenant="other")
    foreign = make_key(app, "eve@other.example", name="Other")
    assert signed_in.post(f"/admin/keys/{foreign}/revoke").status_code == 404
    assert signed_in.get(f"/admin/keys/{foreign}").status_code == 404

    response = signed_in.post(f"/admin/keys/{zoo['bob']}/revoke", follow_redirects=True)
    assert "is revoked" in response.get_data(as_text=True)
    with app.app_context():
        key = keys.get_tenant_key(tenant_id=1, key_id=zoo["bob"])
        assert keys.status_of(key, utcnow()) == "revoked" and key.revoked_by == "alice@example.com"
        event = db.session.scalars(
            select(AuditEvent).where(AuditEvent.target == zoo["bob"]).order_by(AuditEvent.id)
        ).all()[-1]
        assert event.action == "key.revoked" and event.actor == "alice@example.com"


def test_single_revoke_is_confirmed_on_its_own_page_and_returns_to_the_list(signed_in, zoo):
    listing = BeautifulSoup(signed_in.get("/admin/keys?owner=bob@example.com").data, "html.parser")
    row = listing.select_one(f'tr[data-key-id="{zoo["bob"]}"]')
    assert not row.select("form")  # no one-click revoke
    link = row.select_one("a[href*='/revoke']")["href"]
    assert link.startswith(f"/admin/keys/{zoo['bob']}/revoke?next=")

    page = signed_in.get(link)  # looking does nothing
    assert zoo["bob"] not in listed(signed_in, status="revoked")
    soup = BeautifulSoup(page.get_data(as_text=True), "html.parser")
    assert "Revoke “Bob staging”?" in soup.get_text(" ", strip=True)
    form = soup.select_one("main form[method=post]")
    assert form["action"] == f"/admin/keys/{zoo['bob']}/revoke"
    back = form.select_one("input[name=next]")["value"]
    assert back == "/admin/keys?owner=bob@example.com"
    done = signed_in.post(form["action"], data={"next": back})
    assert done.status_code == 302 and done.headers["Location"] == back
    assert zoo["bob"] in listed(signed_in, status="revoked")
    # an outside `next` is not followed
    evil = signed_in.get(f"/admin/keys/{zoo['expiring']}/revoke?next=//evil.example/admin/")
    evil_form = BeautifulSoup(evil.get_data(as_text=True), "html.parser")
    assert evil_form.select_one("input[name=next]")["value"] == f"/admin/keys/{zoo['expiring']}"


def test_incident_revoke_confirms_the_count_then_revokes_only_working_matches(app, signed_in):
    create_user(app, "bob@example.com", role="member")
    now = utcnow()
    working = [make_key(app, "bob@example.com", name=f"bob {n}") for n in range(3)]
    already = make_key(app, "bob@example.com", name="bob old", revoked_at=now - DAY)
    expired = make_key(app, "bob@example.com", name="bob gone", days=9, expires_at=now - DAY)
    alice = make_key(app, name="alice keeps this")
    before_events = _event_count(app)

    confirm = signed_in.get("/admin/keys/revoke?owner=bob@example.com")
    assert confirm.status_code == 200
    text = BeautifulSoup(confirm.get_data(as_text=True), "html.parser").get_text(" ", strip=True)
    assert "This will revoke 3 keys" in text
    soup = BeautifulSoup(confirm.get_data(as_text=True), "html.parser")
    form = soup.select_one("main form[method=post]")
    assert "owner=bob" in form["action"]

    done = signed_in.post(form["action"], follow_redirects=True)
    assert "Revoked 3 keys" in done.get_data(as_text=True)
    with app.app_context():
        rows = {k.key_id: k for k in db.session.scalars(select(ApiKey))}
        for key_id in working:
            assert rows[key_id].revoke_reason == "incident"
            assert keys.status_of(rows[key_id], utcnow()) == "revoked"
        assert rows[already].revoke_reason is None and rows[already].revoked_at < now
        assert rows[expired].revoked_at is None
        assert rows[alice].revoked_at is None
        new = db.session.scalars(select(AuditEvent).where(AuditEvent.id > before_events)).all()
    assert sorted(e.target for e in new if e.action == "key.revoked") == sorted(working)
    bulk = [e for e in new if e.action == "keys.bulk_revoked"]
    assert len(bulk) == 1 and '"count":3' in bulk[0].details and len(new) == 4
    with app.app_context():  # the batch-written events extend the hash chain correctly
        assert audit.verify_chain()[1] is None


def test_incident_revoke_by_scope_stops_api_access(app, client, user):
    leaky = issue_key(app, scopes=("api:read", "deploy:production"))
    safe = issue_key(app, scopes=("api:read",))
    login(client)
    confirm = client.get("/admin/keys/revoke?scope=deploy:production").get_data(as_text=True)
    assert "This will revoke 1 key." in BeautifulSoup(confirm, "html.parser").get_text(" ")
    client.post("/admin/keys/revoke?scope=deploy:production")
    assert client.get("/api/v1/me", headers=bearer(leaky)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(safe)).status_code == 200


@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}])
def test_incident_revoke_needs_a_filter_and_csrf(app, client, user):
    page = client.get("/login").get_data(as_text=True)
    token = BeautifulSoup(page, "html.parser").find("input", {"name": "csrf_token"})["value"]
    client.post(
        "/login",
        data={"email": "alice@example.com", "password": "a long test passphrase 42",
              "csrf_token": token},
    )  # fmt: skip
    issue_key(app, name="victim")
    assert client.post("/admin/keys/revoke?q=victim").status_code == 400  # no CSRF token
    no_filter = client.get("/admin/keys/revoke", follow_redirects=True)
    assert "Choose a filter first" in no_filter.get_data(as_text=True)
    page = client.get("/admin/keys/revoke?q=victim").get_data(as_text=True)
    token = BeautifulSoup(page, "html.parser").find("input", {"name": "csrf_token"})["value"]
    assert client.post("/admin/keys/revoke?q=victim", data={"csrf_token": token}).status_code == 302
    with app.app_context():
        assert db.session.scalar(select(ApiKey.revoke_reason)) == "incident"


def _event_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1))


def _plan(app, filters: inventory.KeyFilter) -> str:
    """SQLite's EXPLAIN QUERY PLAN for the page query of these filters."""
    with app.app_context():
        stmt = (
            select(ApiKey.id)
            .where(*inventory.conditions(tenant_id=1, filters=filters, now=utcnow()))
            .order_by(*inventory._order_by(filters))
            .limit(50)
        )
        sql = str(stmt.compile(db.engine, compile_kwargs={"literal_binds": True}))
        rows = db.session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
        return " | ".join(row[-1] for row in rows)


@sqlite_only  # EXPLAIN QUERY PLAN
def test_page_queries_use_the_tenant_indexes(app, user):
    for sort, index in (
        ("created", "ix_api_keys_tenant_created"),
        ("expires", "ix_api_keys_tenant_expires"),
        ("last_used", "ix_api_keys_tenant_last_used"),
    ):
        plan = _plan(app, inventory.KeyFilter(sort=sort, direction="desc"))
        assert index in plan and "TEMP B-TREE" not in plan, plan
    plan = _plan(app, inventory.KeyFilter(status="leaked", scope="deploy:production"))
    assert "ix_api_keys_tenant_" in plan and "SCAN api_keys" not in plan.replace("USING", "")


def test_inventory_pages_of_twenty_thousand_keys_cost_a_few_queries(app, runner, client):
    """No N+1: a page of the inventory costs the same few statements whatever the tenant
    holds (work counted, not seconds timed: the machine's speed is no test's business)."""
    with app.app_context():  # `seed` is a plain click command: `flask` pushes this context
        result = runner.invoke(args=["seed", "--keys", "20000", "--tenant", "big"])
    assert result.exit_code == 0, result.output
    create_user(app, "boss@big.example", tenant="big", role="admin")
    login(client, "boss@big.example")
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for query in (
            "",
            "?sort=name",
            "?sort=expires&dir=asc",
            "?status=active&scope=deploy:production",
            "?unused_for_days=30&page=40",
            "?expiring_within_days=7",
            "?owner=seed-3@big.example.com",
            "?q=key 1999",
        ):
            statements.clear()
            response = client.get("/admin/keys" + query)
            assert response.status_code == 200
            assert len(statements) <= 20, (query, len(statements))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert "20000 keys" in client.get("/admin/keys").get_data(as_text=True)


# --- the admin API -------------------------------------------------------------------


def test_admin_api_lists_the_tenant_keys_with_filters(app, client, zoo):
    admin_key = issue_key(app, scopes=("admin:read",), name="admin reader")
    response = client.get("/api/v1/tenant/acme/admin/api-keys", headers=bearer(admin_key))
    assert response.status_code == 200
    body = response.json
    assert isinstance(body, list) and len(body) == len(zoo) + 1
    bob = next(k for k in body if k["id"] == zoo["bob"])
    assert bob["owner"] == "bob@example.com" and bob["scopes"] == ["deploy:staging"]
    assert set(bob) >= {"id", "name", "scopes", "created_at", "expires_at", "last_used", "revoked"}
    assert "api_key" not in bob and isinstance(bob["created_at"], int)

    scoped = client.get(
        "/api/v1/tenant/acme/admin/api-keys?scope=deploy:production", headers=bearer(admin_key)
    ).json
    assert [k["id"] for k in scoped] == [zoo["active"]]
    paged = client.get("/api/v1/tenant/acme/admin/api-keys?per_page=4", headers=bearer(admin_key))
    assert len(paged.json) == 4 and 'rel="next"' in paged.headers["Link"]
    bad = client.get("/api/v1/tenant/acme/admin/api-keys?status=x", headers=bearer(admin_key))
    assert bad.status_code == 400 and bad.json["error"] == "invalid_request"


def test_admin_api_requires_scope_admin_role_and_own_tenant(app, client, zoo):
    url = "/api/v1/tenant/acme/admin/api-keys"
    no_scope = issue_key(app, scopes=("api:read",))
    assert client.get(url, headers=bearer(no_scope)).status_code == 403
    member_key = issue_key(app, "bob@example.com", scopes=("admin:read",))
    response = client.get(url, headers=bearer(member_key))
    assert response.status_code == 403 and response.json["error"] == "forbidden"
    create_user(app, "eve@other.example", tenant="other")
    foreign = issue_key(app, "eve@other.example", scopes=("admin:read", "admin:write"))
    assert client.get(url, headers=bearer(foreign)).status_code == 404
    revoke = f"/api/v1/tenant/acme/admin/api-keys/{zoo['active']}/revoke"
    assert client.post(revoke, headers=bearer(foreign)).status_code == 404
    reader = issue_key(app, scopes=("admin:read",))
    assert client.post(revoke, headers=bearer(reader)).status_code == 403


def test_admin_api_revokes_a_tenant_key(app, client, zoo):
    writer = issue_key(app, scopes=("admin:write",))
    url = f"/api/v1/tenant/acme/admin/api-keys/{zoo['bob_fresh']}/revoke"
    response = client.post(url, headers=bearer(writer))
    assert response.status_code == 200
    assert response.json == {"success": True, "message": "API key revoked successfully"}
    assert client.post(url, headers=bearer(writer)).status_code == 409
    missing = client.post(
        "/api/v1/tenant/acme/admin/api-keys/AAAAAAAAAAAA/revoke", headers=bearer(writer)
    )
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    with app.app_context():
        event = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "key.revoked")
        ).all()[-1]
        assert event.target == zoo["bob_fresh"] and event.actor_type == "key"


def test_client_key_may_administer_any_existing_tenant(app, client, runner, zoo):
    with app.app_context():  # the platform's server-to-server key: unscoped, every tenant
        full = runner.invoke(args=["client-keys", "issue", "--name", "ops"]).output.strip()
    listing = client.get("/api/v1/tenant/acme/admin/api-keys", headers=bearer(full))
    assert listing.status_code == 200 and len(listing.json) == len(zoo)
    missing = client.get("/api/v1/tenant/nope/audit-events", headers=bearer(full))
    assert missing.status_code == 404
