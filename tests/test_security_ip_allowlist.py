"""Per-key IP allow-lists: set at creation or later (audited), validated, enforced with 403
`forbidden`; X-Forwarded-For counts only for KEYDESK_TRUSTED_PROXIES hops."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import db
from app.keys.authn import ip_allowed, validate_allowed_ips
from app.models import ApiKey, AuditEvent
from tests.conftest import bearer, create_user, issue_key, login, secret_from_page

ALLOW = "10.0.0.0/8\n2001:db8::/32"


def _new_key(client, allowed_ips: str):
    return client.post(
        "/keys/new",
        data={
            "name": "fenced",
            "scopes": ["api:read"],
            "expires_in_days": 30,
            "allowed_ips": allowed_ips,
        },
    )


def _me(client, key: str, ip: str, xff: str | None = None):
    headers = bearer(key)
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    return client.get("/api/v1/me", headers=headers, environ_base={"REMOTE_ADDR": ip})


def test_allow_list_set_at_creation_is_enforced_for_ipv4_and_ipv6(signed_in):
    key = secret_from_page(_new_key(signed_in, ALLOW).get_data(as_text=True))
    assert _me(signed_in, key, "10.1.2.3").status_code == 200
    assert _me(signed_in, key, "2001:db8::42").status_code == 200
    assert _me(signed_in, key, "::ffff:10.9.9.9").status_code == 200  # IPv4-mapped IPv6
    for outside in ("192.0.2.1", "11.0.0.1", "2001:db9::1", "::1"):
        refused = _me(signed_in, key, outside)
        assert refused.status_code == 403
        assert refused.json["error"] == "forbidden"


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-ip", "10.0.0.1 nonsense", "1.2.3.4/-1"])
def test_bad_allow_list_at_creation_is_a_form_error(signed_in, bad):
    response = _new_key(signed_in, bad)
    assert response.status_code == 400
    assert "Not an IP address or CIDR range" in response.get_data(as_text=True)
    with signed_in.application.app_context():
        assert db.session.execute(select(ApiKey)).first() is None


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(signed_in):
    key = secret_from_page(_new_key(signed_in, ALLOW).get_data(as_text=True))
    assert _me(signed_in, key, "192.0.2.1", xff="10.1.2.3").status_code == 403
    assert _me(signed_in, key, "10.1.2.3", xff="192.0.2.1").status_code == 200


@pytest.mark.parametrize("app_config", [{"KEYDESK_TRUSTED_PROXIES": 1}], indirect=True)
def test_forwarded_for_honoured_for_one_trusted_hop_only(app, client, user):
    key = issue_key(app)
    with app.app_context():
        row = db.session.execute(select(ApiKey)).scalar_one()
        row.allowed_ips = validate_allowed_ips(ALLOW)
        db.session.commit()
    proxy = "127.0.0.1"
    assert _me(client, key, proxy, xff="10.1.2.3").status_code == 200
    assert _me(client, key, proxy, xff="192.0.2.1").status_code == 403
    # The client prepends a fake address; only the hop our proxy added counts.
    assert _me(client, key, proxy, xff="10.1.2.3, 192.0.2.1").status_code == 403
    assert _me(client, key, proxy, xff="192.0.2.1, 10.1.2.3").status_code == 200


def test_change_allow_list_later_is_audited_and_enforced(app, signed_in):
    key = issue_key(app)
    key_id = key.split("_")[1]
    assert _me(signed_in, key, "192.0.2.1").status_code == 200

    page = signed_in.get(f"/keys/{key_id}").get_data(as_text=True)
    assert f"/keys/{key_id}/allowed-ips" in page
    saved = signed_in.post(f"/keys/{key_id}/allowed-ips", data={"allowed_ips": ALLOW})
    assert saved.status_code == 302
    assert _me(signed_in, key, "192.0.2.1").status_code == 403
    assert _me(signed_in, key, "10.0.0.1").status_code == 200
    assert "2001:db8::/32" in signed_in.get(f"/keys/{key_id}").get_data(as_text=True)

    bad = signed_in.post(
        f"/keys/{key_id}/allowed-ips", data={"allowed_ips": "300.1.1.1"}, follow_redirects=True
    )
    assert "Not an IP address or CIDR range" in bad.get_data(as_text=True)
    assert _me(signed_in, key, "10.0.0.1").status_code == 200  # unchanged

    cleared = signed_in.post(f"/keys/{key_id}/allowed-ips", data={"allowed_ips": ""})
    assert cleared.status_code == 302
    assert _me(signed_in, key, "192.0.2.1").status_code == 200

    with app.app_context():
        events = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "key.allowed_ips_changed")
        ).scalars()
        changes = [(e.target, e.actor, e.details) for e in events]
    assert len(changes) == 2
    assert changes[0][0] == key_id and changes[0][1] == "alice@example.com"
    assert "10.0.0.0/8" in changes[0][2]


def test_cannot_change_another_users_allow_list(app, client, user):
    create_user(app, "mallory@example.com", tenant="evil")
    key_id = issue_key(app).split("_")[1]
    assert login(client, "mallory@example.com").status_code == 302
    response = client.post(f"/keys/{key_id}/allowed-ips", data={"allowed_ips": "10.0.0.0/8"})
    assert response.status_code == 404


def test_revoked_key_allow_list_cannot_change(app, signed_in):
    key_id = issue_key(app).split("_")[1]
    signed_in.post(f"/keys/{key_id}/revoke")
    response = signed_in.post(
        f"/keys/{key_id}/allowed-ips", data={"allowed_ips": "10.0.0.0/8"}, follow_redirects=True
    )
    assert "Only an active key" in response.get_data(as_text=True)


def test_ip_allowed_rules():
    assert ip_allowed(None, "anything")
    assert ip_allowed("10.0.0.0/8", "10.255.0.1")
    assert not ip_allowed("10.0.0.0/8", "unknown")
    assert not ip_allowed("2001:db8::/32", "10.0.0.1")
    assert validate_allowed_ips("10.0.0.5/8, 10.0.0.0/8") == "10.0.0.0/8"
    assert validate_allowed_ips("") is None
    with pytest.raises(ValueError):
        validate_allowed_ips(["10.0.0.0/8", 5])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        validate_allowed_ips(" ".join(f"10.0.{i}.0/24" for i in range(51)))
