"""Signing in a terminal, as a person does it: the CLI's code, /device in a real browser,
the token, and signing that terminal out again from the portal."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect

from tests.e2e.helpers import check_a11y, register

GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def test_approve_a_terminal_and_sign_it_out(page, server, axe_path):
    email = register(page)
    flow = requests.post(
        server.url + "/api/v1/oauth/device_authorization",
        data={"client_id": "keydesk-cli"},
        timeout=10,
    ).json()

    page.goto("/device")
    check_a11y(page, axe_path, "device code form")
    page.get_by_label("Code shown in your terminal").fill("BCDF-GHJK")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#user_code-error")).to_contain_text("not valid")
    check_a11y(page, axe_path, "device code form with an error")

    page.goto(flow["verification_uri_complete"].replace(server.url, ""))
    expect(page.get_by_label("Code shown in your terminal")).to_have_value(flow["user_code"])
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#device-client")).to_have_text("keydesk-cli")
    expect(page.locator("#device-address")).to_have_text("127.0.0.1")
    expect(page.locator("#device-access")).to_contain_text("keys:write")
    check_a11y(page, axe_path, "device approval")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("heading", name="Your terminal is signed in")).to_be_visible()
    check_a11y(page, axe_path, "device approved")

    token = requests.post(
        server.url + "/api/v1/oauth/token",
        data={"grant_type": GRANT, "device_code": flow["device_code"], "client_id": "keydesk-cli"},
        timeout=10,
    ).json()["access_token"]
    me = requests.get(server.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"},
                      timeout=10)  # fmt: skip
    assert me.json()["user"]["email"] == email

    page.goto("/account/tokens")
    row = page.locator(f"#user-token-{token.split('_')[1]}")
    expect(row).to_contain_text("keydesk-cli")
    check_a11y(page, axe_path, "signed-in terminals")
    row.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("That terminal is signed out.")).to_be_visible()
    me = requests.get(server.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"},
                      timeout=10)  # fmt: skip
    assert me.status_code == 401
    assert not re.search(r"kdu_", page.content())
