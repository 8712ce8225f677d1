"""Helpers for the terminal sign-in tests: start a device flow, approve it, poll."""

from __future__ import annotations

GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def start(client, **extra) -> dict:
    response = client.post(
        "/api/v1/oauth/device_authorization", data={"client_id": "keydesk-cli", **extra}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def poll(client, device_code: str | None, **overrides):
    data = {"grant_type": GRANT, "device_code": device_code, "client_id": "keydesk-cli"}
    data.update(overrides)
    return client.post("/api/v1/oauth/token", data={k: v for k, v in data.items() if v is not None})


def decide(browser, user_code: str, decision: str = "approve"):
    return browser.post("/device", data={"user_code": user_code, "decision": decision})


def sign_in_terminal(client, browser) -> str:
    """A full device flow: returns the user access token."""
    flow = start(client)
    assert decide(browser, flow["user_code"]).status_code == 200
    response = poll(client, flow["device_code"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]
