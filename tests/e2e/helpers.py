"""What a person does in the portal, as reusable steps, and the axe-core check."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.conftest import PASSWORD

KEY_RE = re.compile(r"kd_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}")
_seq = itertools.count(1)


def unique(word: str) -> str:
    return f"{word}{next(_seq)}"


def register(page: Page, email: str | None = None, organization: str | None = None) -> str:
    email = email or f"{unique('dev')}@example.com"
    page.goto("/register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm").fill(PASSWORD)
    page.get_by_label("Organization").fill(organization or unique("Org "))
    page.get_by_role("button", name="Create organization").click()
    expect(page).to_have_url(re.compile(r"/keys$"))
    return email


def sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(re.compile(r"/keys$"))


def sign_out(page: Page) -> None:
    # The header's button (the sessions page has "Sign out" buttons of its own).
    page.locator("header form[action='/logout'] button").click()
    expect(page).to_have_url(re.compile(r"/login"))


def create_key(page: Page, name: str, scopes=("api:read",), expires: str = "90 days") -> str:
    """Fill the new-key form; returns the secret from the reveal-once page."""
    page.goto("/keys/new")
    page.get_by_label("Name").fill(name)
    for scope in scopes:
        page.locator(f"input[name=scopes][value='{scope}']").check()
    page.get_by_label("Expires in").select_option(label=expires)
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret").input_value()
    assert KEY_RE.fullmatch(secret), secret
    return secret


def key_id_of(secret: str) -> str:
    return secret.split("_")[1]


def assert_no_secret(page: Page, *secrets: str) -> None:
    """Neither the rendered page nor its HTML holds any part of a secret."""
    html = page.content()
    for secret in secrets:
        tail = secret.rsplit("_", 1)[1]
        assert tail not in html, f"secret shown on {page.url}"


NEW_PASSWORD = "a member's own long passphrase 9"


def invite(admin, email: str) -> str:
    """Admin creates an invitation at /admin/members; returns the one-time link."""
    admin.goto("/admin/members")
    admin.get_by_label("Email").fill(email)
    admin.get_by_role("button", name="Create invitation link").click()
    expect(admin.get_by_role("heading", name=f"Invitation for {email}")).to_be_visible()
    return admin.locator("#invite-link").input_value()


def join(new_context, link: str, org: str):
    """The invited person opens the link in their own browser and chooses a password."""
    page = new_context().new_page()
    page.goto(link)
    expect(page.get_by_role("heading", name=f"Join {org}")).to_be_visible()
    page.get_by_label("Choose a password").fill(NEW_PASSWORD)
    page.get_by_label("Confirm password").fill(NEW_PASSWORD)
    page.get_by_role("button", name=f"Join {org}").click()
    expect(page).to_have_url(re.compile(r"/keys$"))
    return page


def mark(server, key_id: str, **columns) -> None:
    """Set columns of a key straight in the server's database (times as Unix seconds), for
    states a test cannot wait for: created months ago, last used weeks ago."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(server.db_path, timeout=10) as db:
        db.execute(
            f"UPDATE api_keys SET {assignments} WHERE key_id = ?",  # noqa: S608 (names are ours)
            (*columns.values(), key_id),
        )


def no_sideways_scroll(page, where: str, width: int = 375) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{where} is {scroll}px wide on a {width}px phone"


AXE_SERIOUS = ("serious", "critical")


def _axe_violations(page: Page, axe: Path) -> list[dict]:
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol, so the page's CSP does not block it.
        page.evaluate(axe.read_text(encoding="utf-8"))
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    return [v for v in result if v.get("impact") in AXE_SERIOUS]


def check_a11y(page: Page, axe: Path, where: str) -> None:
    """No serious or critical axe-core violation, in the light and the dark colour scheme."""
    problems = {}
    for scheme in ("light", "dark"):
        # Reduced motion: colour transitions would otherwise be caught half-way.
        page.emulate_media(color_scheme=scheme, reduced_motion="reduce")
        found = _axe_violations(page, axe)
        if found:
            problems[scheme] = [
                {
                    "rule": v["id"],
                    "impact": v["impact"],
                    "help": v["help"],
                    "nodes": [
                        {"target": n["target"], "summary": n.get("failureSummary", "")}
                        for n in v["nodes"][:5]
                    ],
                }
                for v in found
            ]
    page.emulate_media(color_scheme="light", reduced_motion="no-preference")
    assert not problems, f"axe on {where} ({page.url}):\n" + json.dumps(problems, indent=1)
