"""Races on one key, with real threads (each its own app context and session) and real
processes, on SQLite and PostgreSQL: exactly one winner, and an audit log that agrees.

Concurrent invite acceptance is not here: invites (app/accounts/members.py) are built by
another issue.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter

import pytest
from sqlalchemy import select

from app.accounts import service as accounts
from app.audit import Actor, verify_chain
from app.clock import utcnow
from app.errors import Conflict
from app.extensions import db
from app.keys import service as keys
from app.models import ApiKey, AuditEvent
from tests.conftest import create_user, issue_key

EMAIL = "alice@example.com"


def _act(action: str, key_id: str) -> str:
    """Run one action on a key in the current app context; 'won' or 'conflict'."""
    user = accounts.get_user_by_email(EMAIL)
    key = keys.get_user_key(user=user, key_id=key_id)
    try:
        if action == "revoke":
            keys.revoke_key(key=key, now=utcnow(), actor=Actor("user", f"{action}-actor"))
        elif action == "rotate":
            keys.rotate_key(key=key, grace_hours=0, now=utcnow(), actor=Actor.cli())
        else:  # create
            keys.issue_key(
                user=user, name="parallel", scopes=["api:read"], expires_in_days=0,
                now=utcnow(), actor=Actor.cli(),
            )  # fmt: skip
    except Conflict:
        db.session.rollback()
        return "conflict"
    db.session.commit()
    return "won"


def run_threads(app, actions: list[str], key_id: str) -> list[str]:
    barrier = threading.Barrier(len(actions), timeout=30)
    results: list[str | BaseException] = [""] * len(actions)

    def worker(i: int) -> None:
        try:
            with app.app_context():
                barrier.wait()
                results[i] = _act(actions[i], key_id)
                db.session.remove()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(actions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def _process_main(index: int, url: str, action: str, key_id: str, start, out) -> None:
    from app import create_app
    from tests.conftest import _test_config

    app = create_app(_test_config({"SQLALCHEMY_DATABASE_URI": url}))
    with app.app_context():
        db.session.execute(select(1))  # connect before the start signal
        db.session.rollback()
        start.wait(30)
        out.put((index, _act(action, key_id)))
        db.session.remove()
        db.engine.dispose()


def run_processes(database_url: str, actions: list[str], key_id: str) -> list[str]:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing shared
    start, out = context.Event(), context.Queue()
    procs = [
        context.Process(target=_process_main, args=(i, database_url, a, key_id, start, out))
        for i, a in enumerate(actions)
    ]
    for p in procs:
        p.start()
    results = [""] * len(actions)
    try:
        start.set()
        for _ in actions:
            index, result = out.get(timeout=60)
            results[index] = result
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    return results


def _events(app, key_id: str) -> Counter:
    with app.app_context():
        rows = db.session.execute(
            select(AuditEvent.action).where(AuditEvent.target == key_id)
        ).scalars()
        counts = Counter(rows)
        checked, problem = verify_chain()
        assert problem is None and checked > 0
    return counts


def _key(app, key_id: str) -> ApiKey:
    with app.app_context():
        row = db.session.execute(select(ApiKey).where(ApiKey.key_id == key_id)).scalar_one()
        db.session.expunge(row)
        return row


def _successors(app, key_id: str) -> int:
    with app.app_context():
        return len(db.session.execute(select(ApiKey.id).where(ApiKey.rotated_from == key_id)).all())


@pytest.fixture
def key_id(app) -> str:
    create_user(app)
    return issue_key(app).split("_")[1]


@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_double_revoke_one_winner(app, database_url, key_id, runner):
    actions = ["revoke"] * (4 if runner == "threads" else 2)
    results = (
        run_threads(app, actions, key_id)
        if runner == "threads"
        else run_processes(database_url, actions, key_id)
    )
    assert sorted(results) == ["conflict"] * (len(actions) - 1) + ["won"]
    assert _events(app, key_id)["key.revoked"] == 1
    assert _key(app, key_id).revoke_reason == "revoked"


def test_double_rotate_one_winner_one_successor(app, key_id):
    results = run_threads(app, ["rotate"] * 4, key_id)
    assert results.count("won") == 1 and results.count("conflict") == 3
    assert _successors(app, key_id) == 1
    assert _events(app, key_id)["key.rotated"] == 1


@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_revoke_vs_rotate_one_winner_consistent_state(app, database_url, key_id, runner):
    actions = ["revoke", "rotate"]
    results = (
        run_threads(app, actions, key_id)
        if runner == "threads"
        else run_processes(database_url, actions, key_id)
    )
    assert sorted(results) == ["conflict", "won"]
    winner = actions[results.index("won")]
    events = _events(app, key_id)
    row = _key(app, key_id)
    if winner == "revoke":
        assert row.revoke_reason == "revoked" and row.rotated_to is None
        assert _successors(app, key_id) == 0
        assert events["key.revoked"] == 1 and events["key.rotated"] == 0
    else:
        assert row.revoke_reason == "rotated" and row.rotated_to is not None
        assert _successors(app, key_id) == 1
        assert events["key.rotated"] == 1 and events["key.revoked"] == 0


def test_concurrent_key_creation_all_succeed_with_a_sound_audit_chain(app, key_id):
    results = run_threads(app, ["create"] * 8, key_id)
    assert results == ["won"] * 8
    with app.app_context():
        ids = db.session.execute(select(ApiKey.key_id).where(ApiKey.name == "parallel")).all()
        issued = db.session.execute(
            select(AuditEvent.id).where(AuditEvent.action == "key.issued")
        ).all()
        _, problem = verify_chain()
    assert len({i for (i,) in ids}) == 8
    assert len(issued) == 9  # the fixture's key and the eight
    assert problem is None
