"""Issue 13 in a real browser: create once on reload and Back/Forward, the secret in a
monospace face and whole on a phone, editing a key, the usage chart, the policy question,
and the new pages at 1280 and 375 px in light and dark."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.e2e.helpers import (
    assert_no_secret,
    check_a11y,
    create_key,
    invite,
    key_id_of,
    no_sideways_scroll,
    register,
)


def key_count(server, name: str) -> int:
    with sqlite3.connect(server.db_path, timeout=10) as db:
        return db.execute("SELECT count(*) FROM api_keys WHERE name = ?", (name,)).fetchone()[0]


def invite_count(server, email: str) -> int:
    with sqlite3.connect(server.db_path, timeout=10) as db:
        return db.execute("SELECT count(*) FROM invites WHERE email = ?", (email,)).fetchone()[0]


def test_reload_and_back_forward_on_the_reveal_page_create_nothing(page, server, axe_path):
    register(page)
    secret = create_key(page, "once only")
    page.reload()  # Chromium submits the same POST again
    expect(page.get_by_role("heading", name="This key was already created")).to_be_visible()
    expect(page.locator("#already-created")).to_contain_text(key_id_of(secret))
    assert_no_secret(page, secret)
    check_a11y(page, axe_path, "already created")
    page.goto("/keys")
    try:  # Back to the POST's page: no-store, so Chromium asks to submit the form again...
        page.go_back(wait_until="commit")
    except PlaywrightError as exc:
        assert "ERR_CACHE_MISS" in str(exc)
    # Chromium shows its "Confirm form resubmission" page for the no-store POST response.
    expect(page).to_have_url(re.compile(r"^chrome-error://"))
    assert key_count(server, "once only") == 1  # going Back re-sent nothing
    page.reload()  # ...and the person confirms
    expect(page.get_by_role("heading", name="This key was already created")).to_be_visible()
    assert_no_secret(page, secret)
    assert key_count(server, "once only") == 1


def test_reloading_a_rotation_rotates_once(page, server):
    register(page)
    secret = create_key(page, "rotate once")
    page.goto(f"/keys/{key_id_of(secret)}")
    page.get_by_role("button", name="Rotate key").click()
    new_secret = page.locator("#new-key-secret").input_value()
    page.reload()
    expect(page.get_by_role("heading", name="This key was already rotated")).to_be_visible()
    expect(page.locator("#already-created")).to_contain_text(key_id_of(new_secret))
    assert_no_secret(page, secret, new_secret)
    assert key_count(server, "rotate once") == 2  # the old key and one successor


def test_reloading_an_invitation_invites_once(page, server):
    register(page)
    email = "once-invited@example.com"
    link = invite(page, email)
    page.reload()
    expect(page.get_by_role("heading", name="This invitation was already created")).to_be_visible()
    assert link.split("/")[-1] not in page.content()
    assert invite_count(server, email) == 1


@pytest.mark.parametrize("width", [1280, 375])
def test_the_secret_is_monospace_and_whole(new_context, width):
    page = new_context(viewport={"width": width, "height": 800}).new_page()
    register(page)
    secret = create_key(page, "mono")
    box = page.locator("#new-key-secret")
    font = box.evaluate("e => getComputedStyle(e).fontFamily")
    assert "mono" in font.lower(), font
    # Every character is visible: nothing scrolled out of the field, the field in the page.
    fits = box.evaluate(
        "e => [e.scrollWidth <= e.clientWidth, e.scrollHeight <= e.clientHeight + 1]"
    )
    assert fits == [True, True], fits
    rect = box.bounding_box()
    assert rect["x"] >= 0 and rect["x"] + rect["width"] <= width
    assert box.input_value() == secret
    # A monospace face really loaded: every glyph as wide as the next.
    widths = page.evaluate(
        """(font) => { const c = document.createElement('canvas').getContext('2d');
             c.font = '16px ' + font;
             return ['I', 'l', 'W', '1'].map(g => c.measureText(g).width); }""",
        font,
    )
    assert len(set(round(w, 1) for w in widths)) == 1, widths
    no_sideways_scroll(page, "reveal page", width)


def test_edit_a_key_in_the_browser(page, axe_path):
    register(page)
    secret = create_key(page, "editable", ("api:read",), "30 days")
    key_id = key_id_of(secret)
    page.goto(f"/keys/{key_id}")
    page.get_by_role("link", name="Edit key").click()
    expect(page.get_by_role("heading", name=re.compile("Edit “editable”"))).to_be_visible()
    check_a11y(page, axe_path, "edit key")
    page.get_by_label("Name").fill("edited")
    page.get_by_label("Description (optional)").fill("for the nightly export")
    page.get_by_label(re.compile(r"^api:write")).check()
    day = (datetime.now(UTC) + timedelta(days=12)).date()
    page.get_by_label("Expires on").fill(day.isoformat())
    page.get_by_role("button", name="Save changes").click()
    expect(page).to_have_url(re.compile(f"/keys/{key_id}$"))
    expect(page.get_by_role("status")).to_contain_text("Key saved")
    expect(page.get_by_role("heading", level=1)).to_contain_text("edited")
    expect(page.locator(".details")).to_contain_text("for the nightly export")
    expect(page.locator(".details")).to_contain_text("api:write")
    expires = page.locator("dt:text-is('Expires') + dd time")
    expect(expires).to_have_text("in 12 days")
    # An error is shown beside its field.
    page.goto(f"/keys/{key_id}/edit")
    page.get_by_label("Expires on").fill("2001-01-01")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#expires_on-error")).to_contain_text("future")
    check_a11y(page, axe_path, "edit key with an error")
    page.goto("/admin/audit?action=key.updated")
    expect(page.locator("table.audit")).to_contain_text("editable → edited")


def test_custom_expiry_date_on_new_key(page):
    register(page)
    page.goto("/keys/new")
    page.get_by_label("Name").fill("dated")
    page.locator("input[name=scopes][value='api:read']").check()
    page.get_by_label("Expires in").select_option(label="A date of your choice")
    day = (datetime.now(UTC) + timedelta(days=40)).date()
    page.get_by_label("Expiry date").fill(day.isoformat())
    page.get_by_role("button", name="Create key").click()
    expect(page.locator(".reveal .details")).to_contain_text("in 40 days")


def test_usage_chart_speaks_to_screen_readers(page, axe_path):
    register(page)
    secret = create_key(page, "charted")
    page.goto(f"/keys/{key_id_of(secret)}")
    expect(page.locator("#usage-summary")).to_contain_text("0 requests in 30 days")
    page.get_by_text("Show the numbers").click()
    table = page.get_by_role("table", name="Requests per day, last 30 days")
    expect(table.locator("tbody tr")).to_have_count(30)
    check_a11y(page, axe_path, "key detail with the numbers open")


def test_policy_with_no_member_scopes_asks_first(page, axe_path):
    register(page)
    page.goto("/admin/policy")
    scopes = page.get_by_role("group", name="Scopes members may grant")
    for box in scopes.get_by_role("checkbox").all():
        box.uncheck()
    page.get_by_role("button", name="Save policy").click()
    expect(page.locator("#confirm-empty")).to_contain_text("Members then cannot create any key")
    check_a11y(page, axe_path, "policy confirmation")
    page.get_by_role("button", name="Save: members may grant no scope").click()
    expect(page.get_by_role("status")).to_contain_text("cannot create keys")


@pytest.mark.parametrize("width", [1280, 375])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_new_pages_read_well_at_both_widths_and_schemes(new_context, axe_path, width, scheme):
    page = new_context(viewport={"width": width, "height": 800}, color_scheme=scheme).new_page()
    register(page)
    secret = create_key(page, "a key with a rather long descriptive name")
    key_id = key_id_of(secret)
    for path in ("/keys", f"/keys/{key_id}", f"/keys/{key_id}/edit", "/keys/new", "/admin/policy"):
        page.goto(path)
        no_sideways_scroll(page, path, width)
    page.goto("/keys")
    slug = page.locator("#tenant-slug")
    expect(slug).to_be_visible()
    assert slug.bounding_box()["width"] <= width
    check_a11y(page, axe_path, f"key list with the slug at {width}px")
