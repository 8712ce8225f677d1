"""keys.service called directly: HMAC storage, instance secrets, status, expiry and grace."""

import hashlib
import hmac
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select, text

from app.accounts import service as accounts
from app.audit import Actor
from app.config import instance_secret, load_config
from app.errors import Conflict, InvalidInput, KeyInvalid, KeyRevoked
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import ApiKey, AuditEvent
from tests.conftest import create_user

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLI = Actor.cli()


@pytest.fixture
def owner(app, ctx):
    create_user(app)
    return accounts.get_user_by_email("alice@example.com")


def issue(owner, *, days=0, now=NOW, scopes=("api:read", "keys:read"), name="ci"):
    row, full = keys.issue_key(
        user=owner, name=name, scopes=scopes, expires_in_days=days, now=now, actor=CLI
    )
    db.session.commit()
    return row, full


# --- HMAC storage -------------------------------------------------------------------------


def test_row_holds_hmac_sha256_of_the_secret_under_the_pepper(app, owner):
    row, full = issue(owner)
    parsed = keyformat.parse(full)
    pepper = app.config["KEYDESK_KEY_PEPPER"].encode()
    assert row.key_id == parsed.key_id
    assert row.digest == hmac.new(pepper, parsed.secret.encode(), hashlib.sha256).digest()
    assert len(row.digest) == 32


def test_no_column_of_any_table_holds_the_secret_or_the_full_key(app, owner):
    _, full = issue(owner)
    secret = keyformat.parse(full).secret
    with db.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608
                for value in row:
                    as_text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    assert secret not in as_text, table
                    assert full not in as_text, table
    # the audit event of the issue exists and names only the public id
    event = db.session.execute(
        select(AuditEvent).where(AuditEvent.action == "key.issued")
    ).scalar_one()
    assert event.target == keyformat.parse(full).key_id


def test_pepper_is_not_the_session_secret_key(app, tmp_path):
    assert app.config["KEYDESK_KEY_PEPPER"] != app.config["SECRET_KEY"]
    config = load_config(str(tmp_path / "inst"), env={})
    assert config["KEYDESK_KEY_PEPPER"] != config["SECRET_KEY"]
    assert len(config["KEYDESK_KEY_PEPPER"]) >= 64


def test_digest_depends_on_the_pepper(app, owner):
    row, full = issue(owner)
    secret = keyformat.parse(full).secret
    assert row.digest != keyformat.digest(app.config["SECRET_KEY"].encode(), secret)
    assert row.digest != hashlib.sha256(secret.encode()).digest()


def test_instance_secrets_are_created_0600_and_reused(tmp_path):
    inst = tmp_path / "instance"
    first = load_config(str(inst), env={})
    for name in ("secret_key", "key_pepper"):
        path = inst / name
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_config(str(inst), env={})
    assert again["SECRET_KEY"] == first["SECRET_KEY"]
    assert again["KEYDESK_KEY_PEPPER"] == first["KEYDESK_KEY_PEPPER"]
    assert instance_secret(str(inst), "key_pepper") == first["KEYDESK_KEY_PEPPER"]
    # a fresh instance folder gets fresh secrets
    other = load_config(str(tmp_path / "other"), env={})
    assert other["KEYDESK_KEY_PEPPER"] != first["KEYDESK_KEY_PEPPER"]


def test_environment_wins_over_instance_files(tmp_path):
    env = {"KEYDESK_SECRET_KEY": "from-env", "KEYDESK_KEY_PEPPER": "pepper-env"}
    config = load_config(str(tmp_path / "inst"), env=env)
    assert config["SECRET_KEY"] == "from-env"
    assert config["KEYDESK_KEY_PEPPER"] == "pepper-env"
    assert not (tmp_path / "inst" / "key_pepper").exists()


def test_issued_key_carries_configured_prefix(tmp_path):
    from tests.conftest import make_app

    app = make_app(tmp_path, KEYDESK_KEY_PREFIX="acme")
    create_user(app)
    with app.app_context():
        user = accounts.get_user_by_email("alice@example.com")
        _, full = keys.issue_key(
            user=user, name="x", scopes=["api:read"], expires_in_days=0, now=NOW, actor=CLI
        )
        assert keyformat.parse(full).prefix == "acme"
        db.session.remove()
        db.engine.dispose()


# --- status and expiry arithmetic -----------------------------------------------------------


def test_status_active_expiring_expired(owner):
    row, _ = issue(owner, days=30)
    assert row.expires_at == NOW + timedelta(days=30)
    assert keys.status_of(row, NOW) == "active"
    assert keys.status_of(row, NOW + timedelta(days=22, seconds=-1)) == "active"
    assert keys.status_of(row, NOW + timedelta(days=23)) == "expiring"  # 7 days left
    assert keys.status_of(row, NOW + timedelta(days=30, seconds=-1)) == "expiring"
    assert keys.status_of(row, NOW + timedelta(days=30)) == "expired"
    assert keys.status_of(row, NOW + timedelta(days=400)) == "expired"


def test_a_7_day_key_is_expiring_from_the_start(owner):
    row, _ = issue(owner, days=7)
    assert keys.status_of(row, NOW) == "expiring"


def test_never_expiring_key_stays_active(owner):
    row, _ = issue(owner, days=0)
    assert row.expires_at is None
    assert keys.status_of(row, NOW + timedelta(days=10_000)) == "active"


def test_revoked_key_reads_revoked(owner):
    row, _ = issue(owner, days=30)
    later = NOW + timedelta(hours=1)
    keys.revoke_key(key=row, now=later, actor=CLI)
    db.session.commit()
    assert row.revoked_at == later and row.revoke_reason == "revoked"
    assert keys.status_of(row, later) == "revoked"
    # revoked wins over expired
    assert keys.status_of(row, NOW + timedelta(days=60)) == "revoked"


def test_revoke_twice_is_a_conflict(owner):
    row, _ = issue(owner)
    keys.revoke_key(key=row, now=NOW, actor=CLI)
    db.session.commit()
    with pytest.raises(Conflict):
        keys.revoke_key(key=row, now=NOW + timedelta(minutes=1), actor=CLI)


def test_rotate_keeps_name_scopes_owner_and_lifetime(owner):
    old, _ = issue(owner, days=90, scopes=("api:read", "deploy:staging"), name="deployer")
    at = NOW + timedelta(days=10)
    new, full = keys.rotate_key(key=old, grace_hours=24, now=at, actor=CLI)
    db.session.commit()
    assert keyformat.parse(full).key_id == new.key_id != old.key_id
    assert (new.name, new.scopes, new.user_id, new.tenant_id) == (
        "deployer",
        "api:read deploy:staging",
        old.user_id,
        old.tenant_id,
    )
    assert new.expires_at == at + timedelta(days=90)
    assert new.rotated_from == old.key_id and old.rotated_to == new.key_id
    assert keys.status_of(new, at) == "active"


def test_rotated_key_works_in_grace_then_reads_rotated(app, owner):
    from app.keys import authn

    old, old_full = issue(owner)
    keys.rotate_key(key=old, grace_hours=2, now=NOW, actor=CLI)
    db.session.commit()
    assert old.revoked_at == NOW + timedelta(hours=2)
    # rotated from the moment of rotation (issue 13.3), still working until its grace ends
    assert keys.status_of(old, NOW) == "rotated"
    assert keys.status_of(old, NOW + timedelta(hours=1)) == "rotated"
    assert keys.status_of(old, NOW + timedelta(hours=2)) == "rotated"
    # its effective end of life is the grace end, not its old expiry
    assert keys.key_json(old, NOW)["expires_at"] == int((NOW + timedelta(hours=2)).timestamp())
    assert keys.status_of(old, NOW + timedelta(days=3)) == "rotated"
    assert keys.key_json(old, NOW + timedelta(hours=1))["revoked"] is False
    assert keys.key_json(old, NOW + timedelta(hours=3))["revoked"] is True
    # the hot path agrees: the old key authenticates during the grace period only
    auth = authn.Authenticator(db.engine, app.config["KEYDESK_KEY_PEPPER"].encode(), "kd")
    in_grace = int((NOW + timedelta(hours=1)).timestamp())
    assert auth.authenticate(old_full, now=in_grace).key_id == old.key_id
    with pytest.raises(KeyRevoked):
        auth.authenticate(old_full, now=int((NOW + timedelta(hours=2)).timestamp()))


def test_rotate_with_zero_grace_ends_the_old_key_at_once(owner):
    old, _ = issue(owner)
    keys.rotate_key(key=old, grace_hours=0, now=NOW, actor=CLI)
    db.session.commit()
    assert keys.status_of(old, NOW) == "rotated"


@pytest.mark.parametrize("grace", [-1, 169, 1.5, "24", None, True])
def test_rotate_refuses_bad_grace_hours(owner, grace):
    old, _ = issue(owner)
    with pytest.raises(InvalidInput) as info:
        keys.rotate_key(key=old, grace_hours=grace, now=NOW, actor=CLI)
    assert info.value.field == "grace_hours"
    assert old.revoked_at is None


def test_double_rotate_is_a_conflict(owner):
    old, _ = issue(owner)
    keys.rotate_key(key=old, grace_hours=24, now=NOW, actor=CLI)
    db.session.commit()
    with pytest.raises(Conflict):
        keys.rotate_key(key=old, grace_hours=24, now=NOW + timedelta(minutes=5), actor=CLI)
    db.session.rollback()
    # only one successor exists
    successors = db.session.execute(
        select(ApiKey).where(ApiKey.rotated_from == old.key_id)
    ).scalars()
    assert len(list(successors)) == 1


def test_rotate_after_revoke_is_a_conflict(owner):
    old, _ = issue(owner)
    keys.revoke_key(key=old, now=NOW, actor=CLI)
    db.session.commit()
    with pytest.raises(Conflict):
        keys.rotate_key(key=old, grace_hours=24, now=NOW + timedelta(minutes=1), actor=CLI)


def test_rotate_an_expired_key_is_a_conflict(owner):
    old, _ = issue(owner, days=7)
    with pytest.raises(Conflict):
        keys.rotate_key(key=old, grace_hours=1, now=NOW + timedelta(days=8), actor=CLI)


def test_revoke_during_grace_ends_it(owner):
    old, _ = issue(owner)
    keys.rotate_key(key=old, grace_hours=48, now=NOW, actor=CLI)
    db.session.commit()
    cut = NOW + timedelta(hours=1)
    keys.revoke_key(key=old, now=cut, actor=CLI)
    db.session.commit()
    assert old.revoked_at == cut
    assert keys.status_of(old, cut) == "revoked"
    assert keys.status_of(old, NOW + timedelta(minutes=30)) != "revoked"  # before the cut
    # after grace would have ended it still reads revoked, not rotated
    assert keys.status_of(old, NOW + timedelta(hours=49)) == "revoked"


def test_revoke_after_grace_has_ended_is_a_conflict(owner):
    old, _ = issue(owner)
    keys.rotate_key(key=old, grace_hours=1, now=NOW, actor=CLI)
    db.session.commit()
    with pytest.raises(Conflict):
        keys.revoke_key(key=old, now=NOW + timedelta(hours=2), actor=CLI)


def test_state_changes_write_audit_events_without_secrets(owner):
    old, full = issue(owner)
    new, new_full = keys.rotate_key(key=old, grace_hours=1, now=NOW, actor=CLI)
    keys.revoke_key(key=new, now=NOW, actor=CLI)
    db.session.commit()
    events = db.session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
    actions = [e.action for e in events]
    assert actions[-3:] == ["key.issued", "key.rotated", "key.revoked"]
    for event in events:
        for secret in (keyformat.parse(full).secret, keyformat.parse(new_full).secret):
            assert secret not in event.details


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("name", {"name": ""}),
        ("name", {"name": "   "}),
        ("name", {"name": "x" * 101}),
        ("name", {"name": "tab\there"}),
        ("scopes", {"scopes": []}),
        ("scopes", {"scopes": ["api:read", "nope"]}),
        ("expires_in_days", {"expires_in_days": -1}),
        ("expires_in_days", {"expires_in_days": "30"}),
        ("expires_in_days", {"expires_in_days": 100_000}),
    ],
)
def test_issue_refuses_bad_input_naming_the_field(owner, field, kwargs):
    args = {"name": "ok", "scopes": ["api:read"], "expires_in_days": 0} | kwargs
    with pytest.raises(InvalidInput) as info:
        keys.issue_key(user=owner, now=NOW, actor=CLI, **args)
    assert info.value.field == field


def test_name_of_100_characters_is_accepted(owner):
    row, _ = issue(owner, name="n" * 100)
    assert row.name == "n" * 100


def test_get_user_key_is_not_found_for_other_users(app, owner):
    from app.errors import NotFound

    row, _ = issue(owner)
    create_user(app, "bob@example.com", tenant="acme", role="member")
    create_user(app, "eve@example.com", tenant="evil")
    for email in ("bob@example.com", "eve@example.com"):
        other = accounts.get_user_by_email(email)
        with pytest.raises(NotFound):
            keys.get_user_key(user=other, key_id=row.key_id)
    assert keys.get_user_key(user=owner, key_id=row.key_id).id == row.id


def test_wrong_secret_with_valid_checksum_is_refused_by_the_hot_path(app, owner, client):
    _, full = issue(owner, now=datetime.now(UTC))
    parsed = keyformat.parse(full)
    forged = keyformat.assemble("kd", parsed.key_id, keyformat.new_secret())
    keyformat.parse(forged)  # well-formed
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    with pytest.raises(KeyInvalid):
        keyformat.parse(forged[:-1] + ("A" if forged[-1] != "A" else "B"))


def test_instance_secret_is_never_read_half_written_by_concurrent_starts(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    for attempt in range(20):
        inst = str(tmp_path / f"race{attempt}")
        with ThreadPoolExecutor(8) as pool:
            values = list(pool.map(instance_secret, [inst] * 8, ["key_pepper"] * 8))
        assert len(set(values)) == 1 and len(values[0]) == 64
        assert sorted(os.listdir(inst)) == ["key_pepper"]  # no temporary files left


def test_empty_instance_secret_is_refused(tmp_path):
    (tmp_path / "key_pepper").write_text("")
    with pytest.raises(RuntimeError, match="empty"):
        instance_secret(str(tmp_path), "key_pepper")
