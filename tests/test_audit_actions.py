"""The audit log's ?action= filter (app/admin/auditlog.py ACTIONS) knows every action
Keydesk records: each literal action passed to audit.record / record_many, or to a helper
that hands its first argument on to them (passkeys' and twofactor's _audit, ...), found by
walking app/'s source. A new audit.record("x.y", ...) without an ACTIONS entry fails here."""

from __future__ import annotations

import ast
from pathlib import Path

from app.admin.auditlog import ACTIONS

APP = Path(__file__).resolve().parent.parent / "app"
RECORDERS = {"record", "record_many"}


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    if isinstance(call.func, ast.Name):
        return call.func.id
    return None


def _trees() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), filename=str(p))) for p in sorted(APP.rglob("*.py"))]


def _wrappers(trees) -> set[str]:
    """Functions whose first parameter goes straight on as a recorder's first argument."""
    names: set[str] = set()
    for _, tree in trees:
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            params = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
            if not params:
                continue
            first = params[0].arg
            for call in ast.walk(fn):
                if (
                    isinstance(call, ast.Call)
                    and _called_name(call) in RECORDERS
                    and call.args
                    and isinstance(call.args[0], ast.Name)
                    and call.args[0].id == first
                ):
                    names.add(fn.name)
    return names - RECORDERS


def _literals(node: ast.expr, fn: ast.AST | None) -> set[str] | None:
    """The strings an action argument can be: a literal, either side of `a if c else b`, or
    a local name assigned only such values in the enclosing function. None: not known."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = _literals(node.body, fn), _literals(node.orelse, fn)
        return None if body is None or orelse is None else body | orelse
    if isinstance(node, ast.Name) and fn is not None:
        values: set[str] = set()
        assigned = False
        for stmt in ast.walk(fn):
            if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == node.id for t in stmt.targets
            ):
                assigned = True
                got = _literals(stmt.value, None)
                if got is None:
                    return None
                values |= got
        return values if assigned else None
    return None


def _calls(trees, callers):
    """(path, call, enclosing function) for every call of a recorder or wrapper."""
    for path, tree in trees:
        functions = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        owner: dict[int, ast.AST] = {}
        for fn in functions:  # innermost last: ast.walk is breadth first
            for node in ast.walk(fn):
                owner[id(node)] = fn
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and _called_name(call) in callers and call.args:
                yield path, call, owner.get(id(call))


def _scan() -> tuple[dict[str, str], list[str]]:
    trees = _trees()
    wrappers = _wrappers(trees)
    found: dict[str, str] = {}
    unknown: list[str] = []
    for path, call, fn in _calls(trees, RECORDERS | wrappers):
        where = f"{path.relative_to(APP.parent)}:{call.lineno}"
        first = call.args[0]
        if (
            isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            and fn.name in wrappers
            and isinstance(first, ast.Name)
            and first.id == (fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs)[0].arg
        ):
            continue  # the wrapper itself: its callers are checked
        values = _literals(first, fn)
        if values is None:
            unknown.append(where)
            continue
        for value in values:
            found.setdefault(value, where)
    return found, unknown


def recorded_actions() -> dict[str, str]:
    return _scan()[0]


def test_every_action_argument_is_readable_from_the_source():
    # An action computed some other way would escape the next test; spell it out instead.
    assert _scan()[1] == []


def test_the_walk_finds_the_known_recorders():
    found = recorded_actions()
    # Direct calls, record_many, and the second-factor modules' _audit helpers.
    assert {"auth.login", "keys.bulk_revoked", "2fa.passkey_added", "key.leaked"} <= set(found)


def test_every_recorded_action_is_in_the_filter_list():
    missing = {a: where for a, where in recorded_actions().items() if a not in ACTIONS}
    assert not missing, f"add to app/admin/auditlog.py ACTIONS: {missing}"


def test_the_filter_list_is_sorted_and_has_no_duplicates():
    assert list(ACTIONS) == sorted(set(ACTIONS))
