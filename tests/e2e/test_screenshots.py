"""Builds a small, realistic account and takes the README's screenshots (saved to
docs/screenshots/ by `make screenshots`).

The pictures are a by-product; the test itself checks what they are meant to show.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from playwright.sync_api import expect

from tests.e2e.helpers import check_a11y, create_key, invite, join, key_id_of, mark, register


def _db(server):
    return sqlite3.connect(server.db_path, timeout=10)


def seed_usage(server, key_id: str, days: int = 30) -> None:
    """A month of plausible traffic, so the chart has something to show."""
    rng = random.Random(7)
    today = datetime.now(UTC).date()
    with _db(server) as db:
        (pk,) = db.execute("SELECT id FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        for n in range(days):
            day = today - timedelta(days=n)
            weekend = day.weekday() >= 5
            count = rng.randint(40, 120) if weekend else rng.randint(300, 900)
            db.execute(
                "INSERT INTO key_usage_daily (api_key_id, day, count) VALUES (?, ?, ?)"
                " ON CONFLICT (api_key_id, day) DO UPDATE SET count = count + excluded.count",
                (pk, day.isoformat(), count),
            )


def shoot(page, screenshots, name: str, **options) -> None:
    page.mouse.move(0, 0)  # no hover effects in the pictures
    page.screenshot(path=str(screenshots / name), animations="disabled", **options)


@pytest.fixture
def demo(new_context, server):
    page = new_context(viewport={"width": 1280, "height": 800}).new_page()
    register(page, "ada@acme.example", "Acme Robotics")
    keys = {}
    keys["legacy"] = key_id_of(create_key(page, "Legacy importer", ("api:read",), "365 days"))
    keys["staging"] = key_id_of(create_key(page, "Staging bot", ("deploy:staging",), "90 days"))
    keys["laptop"] = key_id_of(create_key(page, "Ada's laptop", ("api:read", "keys:read")))
    keys["backup"] = key_id_of(create_key(page, "Nightly backup", ("api:read",), "7 days"))
    keys["billing"] = key_id_of(create_key(page, "Billing sync", ("billing:manage",), "365 days"))
    page.goto(f"/keys/{keys['billing']}")
    page.get_by_label("Grace period (hours)").fill("0")
    page.get_by_role("button", name="Rotate key").click()
    keys["billing2"] = key_id_of(page.locator("#new-key-secret").input_value())
    ci_secret = create_key(
        page, "CI deploy", ("api:read", "api:write", "deploy:production"), "90 days"
    )
    keys["ci"] = key_id_of(ci_secret)

    now, day = int(time.time()), 86400
    mark(server, keys["legacy"], expires_at=now - 3 * day, created_at=now - 368 * day)
    for key, age in (("staging", 41), ("laptop", 133), ("billing", 200), ("ci", 12)):
        mark(server, keys[key], created_at=now - age * day)
    mark(server, keys["staging"], revoked_at=now - 2 * 3600, revoke_reason="leaked",
         revoked_by="secret scanner")  # fmt: skip
    page.goto(f"/keys/{keys['laptop']}/revoke")
    page.get_by_role("button", name="Revoke key").click()
    # Real calls: the first one records last use, the address and an event.
    for _ in range(3):
        answer = requests.get(
            server.url + "/api/v1/me",
            headers={"Authorization": f"Bearer {ci_secret}"},
            timeout=5,
        )
        assert answer.status_code == 200
    seed_usage(server, keys["ci"])
    return page, keys


def test_screenshots(demo, screenshots, axe_path, new_context, server):
    page, keys = demo

    page.goto("/keys")
    for key, status in (("ci", "active"), ("backup", "expiring"), ("laptop", "revoked"),
                        ("staging", "leaked"), ("legacy", "expired"), ("billing", "rotated"),
                        ("billing2", "active")):  # fmt: skip
        row = page.locator("tr", has=page.locator(f"code:text-is('{keys[key]}')"))
        expect(row.locator(".badge")).to_have_text(status)
    check_a11y(page, axe_path, "key list with every status")
    shoot(page, screenshots, "keys.png")
    page.emulate_media(color_scheme="dark")
    shoot(page, screenshots, "keys-dark.png")
    page.emulate_media(color_scheme="light")

    page.goto(f"/keys/{keys['ci']}")
    expect(page.locator("#usage-summary")).to_contain_text("requests in 30 days; busiest day")
    expect(page.locator(".chart text.tick").last).to_have_text("day (UTC)")
    assert page.locator(".chart rect.bar[height]:not([height='0'])").count() >= 28
    expect(page.locator(".details")).not_to_contain_text("never")  # last used is recorded
    shoot(page, screenshots, "key-detail.png", full_page=True)

    page.goto(f"/keys/{keys['ci']}/edit")
    page.get_by_label("Description (optional)").fill("GitHub Actions: deploys main to production")
    check_a11y(page, axe_path, "edit key")
    shoot(page, screenshots, "key-edit.png", full_page=True)

    create_key(page, "Release bot", ("api:read", "deploy:staging"), "30 days")
    expect(page.get_by_role("heading", name="Where to keep it")).to_be_visible()
    expect(page.locator("#slug-example")).to_contain_text("/api/v1/tenant/")
    shoot(page, screenshots, "reveal-once.png")
    page.reload()  # the browser submits the same form again: nothing new is created
    expect(page.get_by_role("heading", name="This key was already created")).to_be_visible()
    shoot(page, screenshots, "already-created.png")

    page.set_viewport_size({"width": 375, "height": 740})
    page.goto("/keys")
    shoot(page, screenshots, "keys-phone.png")
    create_key(page, "Phone key", ("api:read",), "30 days")
    shoot(page, screenshots, "reveal-phone.png")
    page.set_viewport_size({"width": 1280, "height": 800})

    # The admin's view: a colleague joined by invitation, one of her keys unused for weeks.
    grace = join(new_context, invite(page, "grace@acme.example"), "Acme Robotics")
    export = key_id_of(create_key(grace, "Analytics export", ("api:read",), "90 days"))
    cron = key_id_of(create_key(grace, "Cron report", ("api:read", "api:write"), "365 days"))
    now, day = int(time.time()), 86400
    mark(server, export, created_at=now - 20 * day)
    mark(server, cron, created_at=now - 120 * day, last_used_at=now - 52 * day,
         last_used_ip="10.20.0.14")  # fmt: skip
    page.goto("/admin/policy")
    page.get_by_label("Maximum key lifetime (days)").fill("365")
    page.get_by_label("Every key must expire").check()
    page.get_by_role("button", name="Save policy").click()
    expect(page.get_by_role("status")).to_contain_text("Policy saved")

    page.goto("/admin/keys")
    expect(page.locator("tr.mark-expiring")).to_have_attribute("data-key-id", keys["backup"])
    expect(page.locator("tr.mark-unused")).to_have_attribute("data-key-id", cron)
    expect(page.locator(f"tr[data-key-id='{export}'] td[data-label=Owner]")).to_have_text(
        "grace@acme.example"
    )
    check_a11y(page, axe_path, "admin inventory")
    shoot(page, screenshots, "admin-keys.png", full_page=True)

    page.set_viewport_size({"width": 1280, "height": 1300})  # the filters and a dozen events
    page.goto("/admin/audit")
    actions = page.eval_on_selector_all(
        "tr[data-action]", "rows => rows.map(r => r.dataset.action)"
    )
    assert actions[:3] == ["policy.changed", "key.issued", "key.issued"], actions
    for action in ("invite.created", "invite.accepted", "key.revoked", "key.rotated"):
        assert action in actions, action
    check_a11y(page, axe_path, "audit log")
    shoot(page, screenshots, "admin-audit.png")


def test_two_factor_screenshot(new_context, screenshots, axe_path):
    """The set-up page of an authenticator app: the QR code, the key it holds, the form."""
    page = new_context(viewport={"width": 1280, "height": 900}).new_page()
    register(page, "lin@acme.example", "Acme Analytics")
    page.goto("/account/2fa")
    secret = page.locator("#totp-secret").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret
    box = page.locator(".qr svg").bounding_box()
    assert box and box["width"] >= 120  # large enough to scan from a screen
    check_a11y(page, axe_path, "two-factor set-up")
    shoot(page, screenshots, "two-factor-setup.png", full_page=True)
