"""A developer's day in the portal, in a real browser against a real gunicorn."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD
from tests.e2e.helpers import (
    KEY_RE,
    assert_no_secret,
    check_a11y,
    create_key,
    key_id_of,
    register,
    sign_in,
    sign_out,
    unique,
)


def me(server, secret: str) -> requests.Response:
    return requests.get(
        server.url + "/api/v1/me", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    )


def badge(page, key_id: str):
    return page.locator("tr", has=page.locator(f"code:text-is('{key_id}')")).locator(".badge")


def test_key_lifecycle(page, context, server, axe_path):
    email = register(page)
    expect(page.get_by_role("heading", name="No keys yet")).to_be_visible()
    expect(page.get_by_role("link", name="Create your first key")).to_be_visible()
    check_a11y(page, axe_path, "empty key list")

    page.get_by_role("link", name="Create your first key").click()
    expect(page.get_by_role("heading", name="New API key")).to_be_visible()
    check_a11y(page, axe_path, "new key form")

    # An empty form: each error is announced next to its field and tied to it.
    page.get_by_label("Name").fill("")
    page.get_by_role("button", name="Create key").click()
    name_error = page.locator("#name-error")
    expect(name_error).to_have_text("Give the key a name")
    expect(name_error).to_have_attribute("role", "alert")
    expect(page.get_by_label("Name")).to_have_attribute("aria-invalid", "true")
    assert "name-error" in page.get_by_label("Name").get_attribute("aria-describedby")
    expect(page.locator("#scopes-error")).to_have_text("Choose at least one scope")
    expect(page.get_by_role("group", name="Scopes")).to_have_attribute(
        "aria-describedby", re.compile("scopes-error")
    )
    check_a11y(page, axe_path, "new key form with errors")

    # Create: name, two scopes, 30 days.
    page.get_by_label("Name").fill("CI deploy")
    page.get_by_label(re.compile(r"^api:read")).check()
    page.get_by_label(re.compile(r"^keys:read")).check()
    page.get_by_label("Expires in").select_option(label="30 days")
    with page.expect_response(lambda r: r.request.method == "POST") as created:
        page.get_by_role("button", name="Create key").click()
    assert created.value.status == 200
    assert "no-store" in created.value.headers["cache-control"]
    secret = page.locator("#new-key-secret").input_value()
    assert KEY_RE.fullmatch(secret)
    key_id = key_id_of(secret)
    expect(page.get_by_role("heading", name="Where to keep it")).to_be_visible()
    expect(page.locator("#new-key-secret")).to_have_attribute("readonly", "")
    check_a11y(page, axe_path, "reveal-once page")

    # The copy button puts exactly the key on the clipboard and says so.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.get_by_role("button", name="Copy").click()
    expect(page.locator(".copy-status")).to_have_text(re.compile("Copied"))
    assert page.evaluate("navigator.clipboard.readText()") == secret

    # The key works against the API, with the scopes chosen in the browser.
    answer = me(server, secret)
    assert answer.status_code == 200
    assert answer.json()["key"]["id"] == key_id
    assert sorted(answer.json()["key"]["scopes"]) == ["api:read", "keys:read"]
    assert answer.json()["user"]["email"] == email

    # From here on the secret is nowhere: not on the key page, the list, or a reload.
    page.get_by_role("link", name=re.compile("I have stored it")).click()
    expect(page.get_by_role("heading", name="CI deploy")).to_be_visible()
    assert_no_secret(page, secret)
    check_a11y(page, axe_path, "key detail")
    page.reload()
    assert_no_secret(page, secret)
    page.goto("/keys")
    assert_no_secret(page, secret)
    expect(badge(page, key_id)).to_have_text("active")
    created = page.locator("td[data-label=Created] time").first
    expect(created).to_have_text("just now")  # relative, with the exact time on hover
    expect(created).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$"))
    check_a11y(page, axe_path, "key list")

    # Rotate with a two-hour grace: a new key, shown once; the old one still works.
    page.get_by_role("link", name="CI deploy").click()
    page.get_by_label("Grace period (hours)").fill("2")
    page.get_by_role("button", name="Rotate key").click()
    expect(page.get_by_role("heading", name=re.compile("Key rotated"))).to_be_visible()
    new_secret = page.locator("#new-key-secret").input_value()
    assert KEY_RE.fullmatch(new_secret) and new_secret != secret
    new_id = key_id_of(new_secret)
    expect(page.locator(".reveal")).to_contain_text(f"{key_id} keeps working until")
    assert me(server, secret).status_code == 200
    assert me(server, new_secret).json()["key"]["id"] == new_id
    page.goto("/keys")
    assert_no_secret(page, secret, new_secret)
    expect(badge(page, key_id)).to_have_text("rotated")  # at once, still working in grace
    expect(badge(page, new_id)).to_have_text("active")

    # Revoke the new key, confirmed on its own page.
    page.get_by_role("link", name="CI deploy").and_(
        page.locator(f"[href$='/keys/{new_id}']")
    ).click()
    page.get_by_role("link", name="Revoke…").click()
    expect(page).to_have_url(re.compile(f"/keys/{new_id}/revoke$"))
    expect(page.get_by_role("heading", name="Revoke “CI deploy”?")).to_be_visible()
    check_a11y(page, axe_path, "revoke confirmation")
    page.get_by_role("button", name="Revoke key").click()
    expect(page).to_have_url(re.compile(f"/keys/{new_id}$"))
    expect(page.get_by_role("status")).to_contain_text("is revoked")
    expect(page.locator("h1 .badge")).to_have_text("revoked")
    answer = me(server, new_secret)
    assert answer.status_code == 401
    assert answer.json()["error_description"] == "API key has been revoked"
    page.goto("/keys")
    expect(badge(page, new_id)).to_have_text("revoked")


def test_sign_out_and_sign_in(page, axe_path):
    email = register(page)
    sign_out(page)
    page.goto("/keys")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fkeys"))
    check_a11y(page, axe_path, "login")

    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_have_text("Incorrect email or password.")
    check_a11y(page, axe_path, "login with an error")

    sign_in(page, email)
    expect(page.get_by_role("navigation", name="Main")).to_contain_text(email)


def test_register_errors_are_announced(page, axe_path):
    page.goto("/register")
    check_a11y(page, axe_path, "register")
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_label("Confirm").fill("different")
    page.get_by_role("button", name="Create organization").click()
    errors = page.locator(".field .error[role=alert]")
    expect(errors.first).to_be_visible()
    for i in range(errors.count()):
        error_id = errors.nth(i).get_attribute("id")
        field = page.locator(f"[aria-describedby~='{error_id}']")
        expect(field).to_have_attribute("aria-invalid", "true")
    check_a11y(page, axe_path, "register with errors")


def test_error_page(page, axe_path):
    register(page)
    response = page.goto("/keys/doesnotexist0")
    assert response.status == 404
    expect(page.get_by_role("heading", level=1)).to_contain_text("404")
    check_a11y(page, axe_path, "404 page")
    response = page.goto("/no/such/page")
    assert response.status == 404


def test_member_is_not_an_admin(page, server):
    slug = unique("team").lower()
    admin, member = f"{unique('boss')}@example.com", f"{unique('dev')}@example.com"
    for email, extra in ((admin, ["--admin"]), (member, [])):
        made = server.flask(
            "users", "create", email, "--password", PASSWORD, "--tenant", slug, *extra
        )
        assert made.returncode == 0, made.stderr

    sign_in(page, member)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="All keys")).to_have_count(0)
    # Members may still create keys of their own.
    create_key(page, "member key")
    sign_out(page)

    sign_in(page, admin)
    nav = page.get_by_role("navigation", name="Main")
    for label, path in ADMIN_PAGES:
        nav.get_by_role("link", name=label).click()
        expect(page).to_have_url(re.compile(f"{path}$"))
    page.goto("/admin/keys")
    expect(page.locator("tr", has=page.get_by_text("member key"))).to_contain_text(member)
    sign_out(page)

    sign_in(page, member)
    for _label, path in ADMIN_PAGES:
        response = page.goto(path)
        assert response.status == 403, path
        expect(page.get_by_role("heading", level=1)).to_contain_text("403")
    # Nor can a member act through an admin form.
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = page.request.post(
        "/admin/policy", form={"csrf_token": token, "max_key_lifetime_days": "1"}
    )
    assert answer.status == 403


ADMIN_PAGES = [
    ("All keys", "/admin/keys"),
    ("Members", "/admin/members"),
    ("Policy", "/admin/policy"),
    ("Audit log", "/admin/audit"),
]


def test_keyboard_only_new_key(page):
    register(page)
    page.goto("/keys/new")

    def tab_to(selector: str, limit: int = 40) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(f"document.activeElement.matches({selector!r})"):
                outline = page.evaluate(
                    "() => { const s = getComputedStyle(document.activeElement);"
                    " return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
                )
                assert outline[0] != "none" and outline[1] >= 2, f"no visible focus: {outline}"
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("#name")
    page.keyboard.type("keyboard key")
    tab_to("input[name=scopes][value='api:read']")
    page.keyboard.press("Space")
    tab_to("input[name=scopes][value='api:write']")
    page.keyboard.press("Space")
    tab_to("#expires_in_days")
    page.keyboard.press("ArrowDown")  # 90 days -> 365 days
    tab_to("button[type=submit].primary")
    page.keyboard.press("Enter")

    secret = page.locator("#new-key-secret").input_value()
    assert KEY_RE.fullmatch(secret)
    expect(page.locator(".reveal")).to_contain_text("api:write")
    # The copy button is reachable by keyboard too.
    tab_to("button.copy")


def test_without_javascript(new_context, axe_path):
    page = new_context(java_script_enabled=False).new_page()
    register(page)
    secret = create_key(page, "no-js key")
    field = page.locator("#new-key-secret")
    expect(field).to_be_visible()
    expect(field).to_be_editable(editable=False)
    assert field.input_value() == secret
    # No script: no copy button that would do nothing; the field is there to select.
    expect(page.get_by_role("button", name="Copy")).to_be_hidden()

    page.get_by_role("link", name=re.compile("I have stored it")).click()
    page.get_by_role("link", name="Revoke…").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.locator("h1 .badge")).to_have_text("revoked")


@pytest.mark.parametrize("path", ["reveal", "/keys", "/keys/new", "key detail", "/login"])
def test_phone_width_does_not_scroll_sideways(new_context, path):
    page = new_context(viewport={"width": 375, "height": 740}).new_page()
    register(page)
    secret = create_key(
        page, "a key with a rather long descriptive name", scopes=("api:read", "api:write")
    )
    if path == "key detail":
        page.goto(f"/keys/{key_id_of(secret)}")
    elif path == "/login":
        sign_out(page)
        page.goto(path)
    elif path != "reveal":
        page.goto(path)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{path} is {width}px wide on a 375px phone"


def test_the_axe_check_can_fail(page, axe_path):
    """Guard against a check that passes because axe never ran."""
    page.goto("/login")
    page.evaluate(
        "document.querySelector('main').insertAdjacentHTML('beforeend',"
        " '<p style=\"color:#bbb;background:#fff\">faint</p><input type=text>')"
    )
    with pytest.raises(AssertionError, match="color-contrast|label"):
        check_a11y(page, axe_path, "a deliberately broken page")
