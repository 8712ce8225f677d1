"""Print JSON with the tokens the benchmark drives: valid, revoked, expired, unknown, bad checksum.

Run inside the benchmark's environment (KEYDESK_DATABASE_URL etc.) after `flask seed`:
    python -m bench.fixtures --valid 200
Keys are made through the services, so they are exactly what a user would get.
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta

from app import create_app
from app.accounts import service as accounts
from app.audit import Actor
from app.clock import utcnow
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--valid", type=int, default=1, help="how many valid keys to issue")
    parser.add_argument("--email", default="seed-2@demo.example.com")
    args = parser.parse_args()
    app = create_app()
    with app.app_context():
        user = accounts.get_user_by_email(args.email)
        now, actor = utcnow(), Actor.cli()
        slug = user.tenant.slug

        def issue(name: str):
            return keys.issue_key(
                user=user, name=name, scopes=("api:read",), expires_in_days=0, now=now,
                actor=actor,
            )  # fmt: skip

        valid = [issue(f"bench valid {n}")[1] for n in range(args.valid)]
        # For the propagation measurement: a key that may revoke the others through the API.
        _, manager = keys.issue_key(
            user=user, name="bench manager", scopes=("keys:write", "keys:read"),
            expires_in_days=0, now=now, actor=actor,
        )  # fmt: skip
        revoked_row, revoked = issue("bench revoked")
        expired_row, expired = issue("bench expired")
        db.session.flush()
        keys.revoke_key(key=revoked_row, now=now, actor=actor)
        expired_row.expires_at = now - timedelta(days=1)
        db.session.commit()
        unknown = keyformat.assemble(
            keys.key_prefix(), keyformat.new_key_id(), keyformat.new_secret()
        )
        last = valid[0][-1]
        bad_checksum = valid[0][:-1] + ("A" if last != "A" else "B")
    print(
        json.dumps(
            {
                "valid": valid,
                "revoked": revoked,
                "expired": expired,
                "unknown": unknown,
                "bad_checksum": bad_checksum,
                "manager": manager,
                "tenant": slug,
            }
        )
    )


if __name__ == "__main__":
    main()
