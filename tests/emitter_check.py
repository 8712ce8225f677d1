"""A check over the whole test run: every statement that writes api_keys, users or tenants
was classified by the invalidation emitter (app/keys/feed.py), and every one that can
change an auth decision emitted a target. tests/conftest.py imports the fixture, so each
run of any test file is checked; a violation fails the run at its end.

The detector here is independent of the emitter's SQL parsing where it can be: for
statements SQLAlchemy compiled, the table and the SET columns come from the compiled
statement, not from its text."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.keys.feed import IGNORED, WATCHED

_WRITE_TEXT = re.compile(
    r"\b(UPDATE|DELETE\s+FROM|INSERT\s+INTO|TRUNCATE(?:\s+TABLE)?|MERGE\s+INTO)\s+(?:ONLY\s+)?"
    r'"?(api_keys|users|tenants)"?(?:\s|,|$)',
    re.I,
)
_SET_TEXT = re.compile(r"\bSET\s+(.*?)(?:\s+WHERE\b|$)", re.I | re.S)
violations: list[str] = []


def _needs_target(statement: str, context) -> bool | None:
    """True: must emit; False: may stay silent; None: not a write to a watched table."""
    compiled = getattr(context, "compiled", None)
    table = getattr(getattr(compiled, "statement", None), "table", None)
    name = getattr(table, "name", None)
    if compiled is not None and name is not None and (context.isupdate or context.isdelete):
        if name not in WATCHED:
            return None
        if context.isdelete:
            return True
        values = getattr(compiled.statement, "_values", None) or {}
        columns = {getattr(c, "key", c) for c in values} | {
            b for b in compiled.binds if b in table.c
        }
        return not columns <= IGNORED[name]
    if compiled is not None and context.isinsert:
        return None  # a new row changes no cached decision (unknown keys are never cached)
    found = _WRITE_TEXT.search(statement)
    if not found:
        return None
    verb, table_name = found.group(1).upper(), found.group(2).lower()
    if verb.startswith("INSERT") and not re.search(r"\bON\s+CONFLICT\b", statement, re.I):
        return False
    if verb == "UPDATE":
        set_clause = _SET_TEXT.search(statement[found.start() :])
        columns = (
            set(re.findall(r'(?:^|,)\s*"?(\w+)"?\s*=', set_clause.group(1)))
            if set_clause
            else set()
        )
        if columns and {c.lower() for c in columns} <= IGNORED[table_name]:
            return False
    return True


def _after(conn, cursor, statement, parameters, context, executemany) -> None:
    if context is None:
        return
    need = _needs_target(statement, context)
    if need is None:
        return
    stamp = getattr(context, "_keydesk_auth", None)
    if stamp is None:
        violations.append(f"not seen by the emitter: {statement[:200]}")
    elif need and not stamp:
        violations.append(f"changed auth data without an invalidation: {statement[:200]}")


@pytest.fixture(autouse=True, scope="session")
def emitter_check():
    event.listen(Engine, "after_cursor_execute", _after)
    yield violations
    event.remove(Engine, "after_cursor_execute", _after)
    assert not violations, "writes that bypassed the auth cache invalidation:\n" + "\n".join(
        dict.fromkeys(violations)
    )
