"""The `keydesk` command.

    keydesk login --url https://keys.example.com   # sign in through the browser (RFC 8628)
    keydesk keys create --name ci --scope api:read  # prints only the new key

KEYDESK_URL and KEYDESK_TOKEN override the stored sign-in (for CI). Errors are one line on
stderr; exit status 1 for a refusal or failure, 2 for a usage error, 3 when not signed in
(or the sign-in ended). A token is printed only where asked for: the new key of
`keys create` and `keys rotate`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import webbrowser
from collections.abc import Sequence
from datetime import UTC, datetime

from keydesk_client import credentials
from keydesk_client.api import (
    Key,
    Keydesk,
    KeydeskError,
    poll_for_token,
    revoke_token,
    start_device_flow,
)

EXIT_ERROR, EXIT_USAGE, EXIT_SIGNED_OUT = 1, 2, 3


class SignedOut(Exception):
    pass


# --- output helpers ----------------------------------------------------------------------


def _out(text: str = "") -> None:
    print(text, flush=True)


def _when(value: int | None) -> str:
    if value is None:
        return "never"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def _key_json(key: Key) -> dict:
    return dict(key.raw) or {
        "id": key.id,
        "name": key.name,
        "scopes": key.scopes,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used": key.last_used,
        "revoked": key.revoked,
        "status": key.status,
    }


def _show_key(key: Key) -> str:
    lines = [
        ("ID", key.id),
        ("Name", key.name),
        ("Status", key.status or ("revoked" if key.revoked else "active")),
        ("Scopes", " ".join(key.scopes)),
        ("Created", _when(key.created_at)),
        ("Expires", _when(key.expires_at)),
        ("Last used", _when(key.last_used)),
    ]
    if key.description:
        lines.append(("Description", key.description))
    if key.allowed_ips:
        lines.append(("Allowed IPs", " ".join(key.allowed_ips)))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in lines)


# --- sign-in ------------------------------------------------------------------------------


def _signed_in() -> tuple[str, str]:
    """(url, token): KEYDESK_URL / KEYDESK_TOKEN first, then the stored sign-in."""
    stored = credentials.load() or {}
    token = os.environ.get("KEYDESK_TOKEN") or stored.get("token")
    url = os.environ.get("KEYDESK_URL") or stored.get("url")
    if not token:
        raise SignedOut("Not signed in: run `keydesk login --url URL` (or set KEYDESK_TOKEN)")
    if not url:
        raise SignedOut("No Keydesk URL: set KEYDESK_URL or run `keydesk login --url URL`")
    if not os.environ.get("KEYDESK_TOKEN"):
        expires_at = stored.get("expires_at")
        if isinstance(expires_at, int) and expires_at <= time.time():
            raise SignedOut("Your sign-in has ended: run `keydesk login` again")
    return url, token


def _api() -> Keydesk:
    url, token = _signed_in()
    return Keydesk(url, token)


def _can_open_browser() -> bool:
    # On a Linux box without a display, webbrowser would start a text browser in this
    # very terminal; only open one where a graphical browser can be.
    if not sys.stdout.isatty():
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_login(args) -> int:
    url = args.url or os.environ.get("KEYDESK_URL") or (credentials.load() or {}).get("url")
    if not url:
        raise KeydeskError("invalid_request", "Give the Keydesk address: keydesk login --url URL")
    url = url.rstrip("/")
    code = start_device_flow(url, scope=args.scope)
    _out("To sign in, open this page in a browser:")
    _out(f"  {code.verification_uri}")
    _out(f"and enter the code: {code.user_code}")
    _out(f"(or open {code.verification_uri_complete})")
    if not args.no_browser and _can_open_browser():
        # No browser after all: the user opens the link by hand.
        with contextlib.suppress(Exception):
            webbrowser.open(code.verification_uri_complete)
    _out("Waiting for approval…")
    grant = poll_for_token(url, code)
    with Keydesk(url, grant.access_token) as api:
        me = api.me()
    where = credentials.save(
        {
            "url": url,
            "token": grant.access_token,
            "expires_at": int(time.time()) + int(grant.expires_in),
            "email": me.email,
            "tenant": me.tenant_slug,
        }
    )
    hours = max(1, round(grant.expires_in / 3600))
    _out(f"Signed in to {url} as {me.email} ({me.tenant_slug}) for {hours} hours.")
    _out(f"Saved to {where}")
    return 0


def cmd_logout(args) -> int:
    stored = credentials.load()
    if stored is None:
        _out("Not signed in.")
        return 0
    try:
        revoke_token(stored["url"], stored["token"])
    except KeydeskError as exc:
        print(f"keydesk: could not end the sign-in at the server: {exc.error_description}",
              file=sys.stderr)  # fmt: skip
    credentials.delete()
    _out(f"Signed out of {stored['url']}.")
    return 0


def cmd_whoami(args) -> int:
    url, _ = _signed_in()
    with _api() as api:
        me = api.me()
    if args.json:
        _out(json.dumps(me.raw, indent=2))
        return 0
    who = me.email or "a client key"
    role = f" ({me.role})" if me.role else ""
    tenant = f" in {me.tenant_slug} ({me.tenant_name})" if me.tenant_slug else ""
    _out(f"{who}{role}{tenant} at {url}")
    what = "a user access token" if me.kind == "user_token" else "an API key"
    _out(f"Signed in with {what} ({me.key_id}), valid until {_when(me.expires_at)}")
    return 0


# --- keys ---------------------------------------------------------------------------------


def cmd_keys_list(args) -> int:
    with _api() as api:
        keys = api.list_keys()
    if args.json:
        _out(json.dumps([_key_json(k) for k in keys], indent=2))
        return 0
    if not keys:
        _out("No keys yet: keydesk keys create --name NAME --scope SCOPE")
        return 0
    rows = [
        [k.id, k.name, k.status or "", " ".join(k.scopes), _when(k.expires_at), _when(k.last_used)]
        for k in keys
    ]
    _out(_table(rows, ["ID", "NAME", "STATUS", "SCOPES", "EXPIRES", "LAST USED"]))
    return 0


def cmd_keys_show(args) -> int:
    with _api() as api:
        key = api.get_key(args.id)
    _out(json.dumps(_key_json(key), indent=2) if args.json else _show_key(key))
    return 0


def cmd_keys_create(args) -> int:
    if not args.scope:
        raise KeydeskError("invalid_request", "Give at least one --scope (e.g. --scope api:read)")
    with _api() as api:
        new = api.create_key(
            args.name,
            args.scope,
            expires_in_days=args.expires_in_days,
            description=args.description,
            allowed_ips=args.allowed_ip or None,
        )
    _out(new.api_key)  # only the key on stdout: `KEY=$(keydesk keys create ...)`
    return 0


def cmd_keys_edit(args) -> int:
    changes = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.description is not None:
        changes["description"] = args.description
    if args.scope:
        changes["scopes"] = args.scope
    if not changes:
        raise KeydeskError(
            "invalid_request", "Nothing to change: give --name, --scope or --description"
        )
    with _api() as api:
        key = api.edit_key(args.id, **changes)
    _out(json.dumps(_key_json(key), indent=2) if args.json else _show_key(key))
    return 0


def cmd_keys_rotate(args) -> int:
    with _api() as api:
        new = api.rotate_key(args.id, grace_hours=args.grace_hours)
    _out(new.api_key)
    return 0


def cmd_keys_revoke(args) -> int:
    with _api() as api:
        api.revoke_key(args.id)
    _out(f"Revoked {args.id}.")
    return 0


# --- parser -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"keydesk: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="keydesk", description="Keydesk from a terminal.")
    sub = root.add_subparsers(dest="command", required=True, parser_class=_Parser)
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output")

    login = sub.add_parser("login", help="sign in through the browser")
    login.add_argument("--url", help="the Keydesk address, e.g. https://keys.example.com")
    login.add_argument("--no-browser", action="store_true", help="do not open a browser")
    login.add_argument("--scope", help="ask for fewer scopes (space-separated)")
    login.set_defaults(run=cmd_login)
    sub.add_parser("logout", help="end the sign-in").set_defaults(run=cmd_logout)
    sub.add_parser("whoami", parents=[as_json], help="who you are signed in as").set_defaults(
        run=cmd_whoami
    )

    keys = sub.add_parser("keys", help="your API keys").add_subparsers(
        dest="keys_command", required=True, parser_class=_Parser
    )
    keys.add_parser("list", parents=[as_json]).set_defaults(run=cmd_keys_list)
    show = keys.add_parser("show", parents=[as_json])
    show.add_argument("id")
    show.set_defaults(run=cmd_keys_show)
    create = keys.add_parser("create", help="prints only the new key")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", action="append", default=[], help="repeat for more")
    create.add_argument("--expires-in-days", type=int, default=0, help="0 = never (default)")
    create.add_argument("--description")
    create.add_argument("--allowed-ip", action="append", default=[], help="IP or CIDR; repeat")
    create.set_defaults(run=cmd_keys_create)
    edit = keys.add_parser("edit", parents=[as_json])
    edit.add_argument("id")
    edit.add_argument("--name")
    edit.add_argument("--scope", action="append", default=[], help="the new scopes; repeat")
    edit.add_argument("--description")
    edit.set_defaults(run=cmd_keys_edit)
    rotate = keys.add_parser("rotate", help="prints only the new key")
    rotate.add_argument("id")
    rotate.add_argument("--grace-hours", type=int, default=24, help="old key keeps working")
    rotate.set_defaults(run=cmd_keys_rotate)
    revoke = keys.add_parser("revoke")
    revoke.add_argument("id")
    revoke.set_defaults(run=cmd_keys_revoke)
    return root


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except SignedOut as exc:
        print(f"keydesk: {exc}", file=sys.stderr)
        return EXIT_SIGNED_OUT
    except KeydeskError as exc:
        message = _one_line(exc.error_description)
        if exc.status == 401:
            print(f"keydesk: {message}: run `keydesk login` again", file=sys.stderr)
            return EXIT_SIGNED_OUT
        print(f"keydesk: {message} ({exc.error})", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("keydesk: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
