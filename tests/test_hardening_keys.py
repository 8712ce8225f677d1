"""Leak reports store no encoding of a key (issue 12, point 7); /keys/verify is an
authority for its own tenant only, names the allow-list, and refuses a foreign prefix
before any lookup (point 8)."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import select, update

from app.accounts import service as accounts
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import ApiKey, AuditEvent
from tests.conftest import bearer, create_user, issue_key


def _encodings(key: str) -> dict[str, str]:
    once = quote(key, safe="")  # "_" stays as is: quote every character instead
    every = "".join(f"%{b:02X}" for b in key.encode())
    return {
        "underscores": key.replace("_", "%5F"),
        "every character": every,
        "twice": quote(every, safe=""),
        "three times": quote(quote(every, safe=""), safe=""),
        "lowercase hex": key.replace("_", "%5f"),
        "html entity": key.replace("_", "&#95;"),
        "entity then percent": quote(key.replace("_", "&#95;"), safe=""),
        "plain": once,
    }


@pytest.mark.parametrize("encoding", list(_encodings("kd_x_y")))
def test_no_encoding_of_a_reported_key_reaches_the_database(app, client, user, encoding):
    key = issue_key(app)
    secret = keyformat.parse(key).secret
    url = f"https://paste.example/raw?token={_encodings(key)[encoding]}&x=1"
    response = client.post("/api/v1/keys/report-leak", json={"key": key, "source_url": url})
    assert response.status_code == 202
    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "key.leaked")
        ).scalar_one()
        stored = event.details
        rows = db.session.execute(select(AuditEvent.details)).scalars().all()
    assert secret not in stored and "[redacted" in stored, stored
    assert "paste.example/raw" in stored
    assert not any(secret in details for details in rows)
    export = client.get("/admin/audit?format=json")  # user is the tenant's admin
    assert export.status_code in (200, 302)
    assert secret not in export.get_data(as_text=True)


def test_a_long_source_url_is_cut_without_leaving_part_of_a_secret(app, client, user):
    key = issue_key(app)
    secret = keyformat.parse(key).secret
    url = "https://paste.example/" + "a" * 480 + "/" + secret  # the cut lands in the secret
    client.post("/api/v1/keys/report-leak", json={"key": key, "source_url": url})
    with app.app_context():
        details = db.session.execute(
            select(AuditEvent.details).where(AuditEvent.action == "key.leaked")
        ).scalar_one()
    assert secret[:10] not in details


# -- verify -------------------------------------------------------------------------------


def verify(client, caller, token):
    return client.post("/api/v1/keys/verify", json={"key": token}, headers=bearer(caller))


def _expire_and_revoke(app, expired: str, revoked: str) -> None:
    with app.app_context():
        db.session.execute(
            update(ApiKey)
            .where(ApiKey.key_id == expired.split("_")[1])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        row = db.session.execute(
            select(ApiKey).where(ApiKey.key_id == revoked.split("_")[1])
        ).scalar_one()
        keys.revoke_key(key=row, now=utcnow(), actor=Actor.cli())
        db.session.commit()


def test_other_tenants_keys_read_invalid_whatever_their_state(app, client, user):
    verifier = issue_key(app, scopes=("keys:verify",))
    create_user(app, "eve@other.example", tenant="other")
    expired = issue_key(app, "eve@other.example", days=5)
    revoked = issue_key(app, "eve@other.example")
    valid = issue_key(app, "eve@other.example")
    _expire_and_revoke(app, expired, revoked)
    for token in (expired, revoked, valid):
        assert verify(client, verifier, token).json == {"valid": False, "reason": "invalid"}
    # Own tenant: the real reason.
    mine_expired, mine_revoked = issue_key(app, days=5), issue_key(app)
    _expire_and_revoke(app, mine_expired, mine_revoked)
    assert verify(client, verifier, mine_expired).json["reason"] == "expired"
    assert verify(client, verifier, mine_revoked).json["reason"] == "revoked"


def test_a_client_key_sees_every_tenants_reasons(app, client, runner, user):
    issued = runner.invoke(args=["client-keys", "issue", "--name", "gateway"])
    client_key = issued.output.strip().splitlines()[-1]
    create_user(app, "eve@other.example", tenant="other")
    expired, revoked = (
        issue_key(app, "eve@other.example", days=5),
        issue_key(app, "eve@other.example"),
    )
    _expire_and_revoke(app, expired, revoked)
    assert verify(client, client_key, expired).json == {"valid": False, "reason": "expired"}
    assert verify(client, client_key, revoked).json == {"valid": False, "reason": "revoked"}


def test_a_valid_answer_names_the_allow_list(app, client, user):
    verifier = issue_key(app, scopes=("keys:verify",))
    with app.app_context():
        _, fenced = keys.issue_key(
            user=accounts.get_user_by_email(user), name="office", scopes=("api:read",),
            expires_in_days=0, allowed_ips="203.0.113.0/24 2001:db8::/32", now=utcnow(),
            actor=Actor.cli(),
        )  # fmt: skip
        db.session.commit()
    body = verify(client, verifier, fenced).json
    assert body["valid"] is True and body["allowed_ips"] == ["203.0.113.0/24", "2001:db8::/32"]
    assert verify(client, verifier, issue_key(app)).json["allowed_ips"] is None


def test_another_prefix_is_refused_before_the_lookup(app, client, user):
    key = issue_key(app, scopes=("keys:verify", "api:read"))
    parsed = keyformat.parse(key)
    foreign = keyformat.assemble("zz", parsed.key_id, parsed.secret)  # checksum recomputed
    authenticator = app.extensions["keydesk.authenticator"]
    looked_up: list[str] = []
    real_lookup = authenticator.lookup

    def counting_lookup(key_id):
        looked_up.append(key_id)
        return real_lookup(key_id)

    authenticator.lookup = counting_lookup
    try:
        response = client.get("/api/v1/me", headers=bearer(foreign))
        assert response.status_code == 401 and response.json["error"] == "invalid_token"
        assert looked_up == []
        assert verify(client, key, foreign).json == {"valid": False, "reason": "invalid"}
        assert looked_up == [parsed.key_id]  # the caller's own key, never the foreign token
    finally:
        authenticator.lookup = real_lookup
