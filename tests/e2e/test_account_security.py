"""Sudo mode and the sessions page in a real browser, with axe on the new pages and the
README's picture of /account/sessions."""

from __future__ import annotations

import re
import sqlite3
import time

from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD
from tests.e2e.helpers import KEY_RE, check_a11y, register, sign_in, unique

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)
EDGE_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0"
)


def age_sessions(server, email: str, **seconds_ago: int) -> None:
    """Move the user's session times into the past, straight in the server's database."""
    now = int(time.time())
    assignments = ", ".join(f"{name} = ?" for name in seconds_ago)
    with sqlite3.connect(server.db_path, timeout=10) as db:
        db.execute(
            f"UPDATE user_sessions SET {assignments} "  # noqa: S608 (names are ours)
            "WHERE user_id = (SELECT id FROM users WHERE email = ?)",
            (*(now - s for s in seconds_ago.values()), email),
        )


def test_sudo_mode_returns_to_the_form(page, server, axe_path):
    email = register(page)
    age_sessions(server, email, sudo_at=3 * 3600)  # signed in three hours ago

    page.goto("/keys/new")
    expect(page).to_have_url(re.compile(r"/sudo\?next=/keys/new$"))
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    check_a11y(page, axe_path, "sudo page")
    page.get_by_label("Password").fill("not my password at all")
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("alert")).to_contain_text("did not match")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()

    expect(page).to_have_url(re.compile(r"/keys/new$"))  # back at the form, empty
    expect(page.get_by_label("Name")).to_have_value("")
    page.get_by_label("Name").fill("after sudo")
    page.locator("input[name=scopes][value='api:read']").check()
    page.get_by_role("button", name="Create key").click()
    assert KEY_RE.fullmatch(page.locator("#new-key-secret").input_value())


def test_a_form_submitted_outside_sudo_mode_is_not_replayed(page, server):
    email = register(page)
    page.goto("/keys/new")
    page.get_by_label("Name").fill("submitted late")
    page.locator("input[name=scopes][value='api:read']").check()
    age_sessions(server, email, sudo_at=3 * 3600)  # the form sat open for hours
    page.get_by_role("button", name="Create key").click()
    expect(page).to_have_url(re.compile(r"/sudo\?next=/keys/new$"))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/keys/new$"))
    page.goto("/keys")
    expect(page.get_by_text("submitted late")).to_have_count(0)


def test_sessions_page_ends_another_browser(new_context, server, axe_path, screenshots):
    laptop = new_context(user_agent=FIREFOX_LINUX).new_page()
    email = register(laptop, f"{unique('ada')}@acme.example", unique("Acme "))
    phone = new_context(user_agent=SAFARI_IPHONE).new_page()
    sign_in(phone, email)
    desktop = new_context(user_agent=EDGE_WINDOWS).new_page()
    sign_in(desktop, email)
    # Realistic addresses and ages for the picture; the page shows what the rows say.
    with sqlite3.connect(server.db_path, timeout=10) as db:
        now = int(time.time())
        user = "(SELECT id FROM users WHERE email = ?)"
        for agent, ip, signed_in, seen in (
            (SAFARI_IPHONE, "198.51.100.23", 5 * 3600, 40 * 60),
            (EDGE_WINDOWS, "203.0.113.80", 20 * 3600, 3 * 60),
            (FIREFOX_LINUX, "192.0.2.14", 2 * 3600, 0),
        ):
            db.execute(
                "UPDATE user_sessions SET ip = ?, created_at = ?, last_seen_at = ? "  # noqa: S608
                f"WHERE user_agent = ? AND user_id = {user}",
                (ip, now - signed_in, now - seen, agent, email),
            )

    laptop.goto("/account/sessions")
    rows = laptop.locator("tr[data-session-id]")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("Firefox on Linux")
    expect(rows.first).to_contain_text("this session")
    expect(laptop.locator("table.sessions")).to_contain_text("Safari on iOS")
    expect(laptop.locator("table.sessions")).to_contain_text("Edge on Windows")
    expect(laptop.locator("table.sessions")).to_contain_text("198.51.100.23")
    check_a11y(laptop, axe_path, "sessions page")
    laptop.set_viewport_size({"width": 1280, "height": 640})
    laptop.mouse.move(0, 0)
    laptop.screenshot(path=str(screenshots / "sessions.png"), animations="disabled")

    laptop.get_by_role("button", name=re.compile("End the session on Safari on iOS")).click()
    expect(laptop.get_by_role("status")).to_contain_text("Safari on iOS ended")
    expect(rows).to_have_count(2)
    phone.goto("/keys")
    expect(phone).to_have_url(re.compile(r"/login"))  # signed out at its next request

    laptop.get_by_role("button", name="Sign out all other sessions").click()
    expect(rows).to_have_count(1)
    desktop.goto("/keys")
    expect(desktop).to_have_url(re.compile(r"/login"))
    laptop.goto("/keys")
    expect(laptop).to_have_url(re.compile(r"/keys$"))

    laptop.goto("/account")
    expect(laptop.get_by_role("heading", name="Your account")).to_be_visible()
    check_a11y(laptop, axe_path, "account page")


def test_password_change_signs_out_the_other_browser(new_context, axe_path):
    first = new_context().new_page()
    email = register(first)
    second = new_context().new_page()
    sign_in(second, email)
    first.goto("/account")
    first.get_by_label("Current password").fill(PASSWORD)
    first.get_by_label("New password").fill("a completely new passphrase 5")
    first.get_by_label("Confirm password").fill("a completely new passphrase 5")
    first.get_by_role("button", name="Change password").click()
    expect(first.locator(".flashes")).to_contain_text("Password changed")
    second.goto("/keys")
    expect(second).to_have_url(re.compile(r"/login"))
    sign_in(second, email, "a completely new passphrase 5")

    anonymous = new_context().new_page()
    anonymous.goto("/forgot-password")
    expect(anonymous.get_by_role("heading", name="Forgot your password?")).to_be_visible()
    check_a11y(anonymous, axe_path, "forgot password page")
