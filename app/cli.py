"""Operator commands: `flask --app app users|keys|client-keys|seed|audit ...`.

Every command prints one clear line and exits non-zero on bad input.
"""

from __future__ import annotations

import random
import time

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext

from app import audit
from app.accounts import service as accounts
from app.accounts.passwords import check_password_rules
from app.audit import Actor
from app.clock import utcnow
from app.errors import Conflict, InvalidInput, KeydeskError
from app.extensions import db
from app.keys import format as keyformat
from app.keys import service as keys
from app.models import Tenant, User


class OneLineCommand(click.Command):
    """Usage errors (missing option, not a number...) as one line, like every other refusal,
    instead of Click's usage block."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise click.ClickException(f"{exc.format_message()} (see --help)") from None


class CommandGroup(AppGroup):
    command_class = OneLineCommand


users_cli = CommandGroup("users", help="Manage user accounts.")
keys_cli = CommandGroup("keys", help="Issue user keys.")
client_keys_cli = CommandGroup("client-keys", help="Platform-wide client keys (server-to-server).")
audit_cli = CommandGroup("audit", help="The audit log.")


def fail(message: str) -> None:
    db.session.rollback()
    raise click.ClickException(message)


@users_cli.command("create")
@click.argument("email")
@click.option("--password", required=True, help="The user's password.")
@click.option("--tenant", "slug", required=True, help="Tenant slug; created if missing.")
@click.option("--tenant-name", default=None, help="Name for a new tenant (default: the slug).")
@click.option("--admin", is_flag=True, help="Make the user a tenant admin.")
def users_create(email: str, password: str, slug: str, tenant_name: str | None, admin: bool):
    """Create a user (and the tenant if it does not exist)."""
    now = utcnow()
    try:
        slug = accounts.validate_slug(slug)
        tenant = accounts.get_tenant_by_slug(slug)
        if tenant is None:
            tenant = accounts.create_tenant(name=tenant_name or slug, slug=slug, now=now)
        try:
            check_password_rules(password, email=email)
        except InvalidInput as exc:
            click.echo(f"Warning: weak password ({exc}); created anyway.", err=True)
        user = accounts.create_user(
            tenant=tenant,
            email=email,
            password=password,
            role="admin" if admin else "member",
            now=now,
            actor=Actor.cli(),
            check_rules=False,
        )
    except KeydeskError as exc:
        fail(str(exc))
    db.session.commit()
    click.echo(f"Created {user.role} {user.email} in tenant {tenant.slug}")


@users_cli.command("set-password")
@click.argument("email")
@click.option("--password", required=True, help="The new password.")
def users_set_password(email: str, password: str):
    """Set a user's password; every session of the user ends (audited)."""
    from app.accounts import credentials

    user = accounts.get_user_by_email(email)
    if user is None:
        fail(f"No user with email {email}")
    try:
        check_password_rules(password, email=user.email)
    except InvalidInput as exc:
        # The operator may need a temporary password now; say so, as `users create` does.
        click.echo(f"Warning: weak password ({exc}); set anyway.", err=True)
    try:
        password.encode()
    except UnicodeError:
        fail("--password must be valid text")
    if not password:
        fail("--password must not be empty")
    try:
        ended = credentials.set_password_by_operator(
            email=user.email, password=password, actor=Actor.cli(), now=utcnow()
        )
    except KeydeskError as exc:
        fail(str(exc))
    db.session.commit()
    click.echo(f"Password set for {user.email}; {ended} session{'' if ended == 1 else 's'} ended")


@users_cli.command("reset-2fa")
@click.argument("email")
def users_reset_2fa(email: str):
    """Remove a user's TOTP, recovery codes and passkeys (they lost them); ends their sessions."""
    from app.accounts import twofactor

    user = accounts.get_user_by_email(email)
    if user is None:
        fail(f"No user with email {email}")
    removed = twofactor.reset_second_factors(user=user, now=utcnow(), actor=Actor.cli())
    db.session.commit()
    click.echo(
        f"Reset two-factor authentication for {user.email}: "
        f"authenticator app {'removed' if removed['totp'] else 'not set up'}, "
        f"{removed['recovery_codes']} recovery codes and {removed['passkeys']} passkeys removed; "
        "their sessions have ended."
    )


@keys_cli.command("issue")
@click.option("--email", required=True, help="Owner of the key.")
@click.option("--name", required=True, help="Key name (1-100 characters).")
@click.option(
    "--scope", "scopes", multiple=True, help="A scope; repeat for more (default api:read)."
)
@click.option("--expires-in-days", type=int, default=0, show_default=True, help="0 = never.")
def keys_issue(email: str, name: str, scopes: tuple[str, ...], expires_in_days: int):
    """Issue a key for a user; prints only the full key."""
    user = accounts.get_user_by_email(email)
    if user is None:
        fail(f"No user with email {email}")
    if not user.is_active:
        fail(f"User {email} is deactivated")
    try:
        _, full_key = keys.issue_key(
            user=user,
            name=name,
            scopes=scopes or ("api:read",),
            expires_in_days=expires_in_days,
            now=utcnow(),
            actor=Actor.cli(),
        )
    except KeydeskError as exc:
        fail(str(exc))
    db.session.commit()
    click.echo(full_key)


@client_keys_cli.command("issue")
@click.option("--name", required=True)
def client_keys_issue(name: str):
    """Issue a client key; prints only the full key."""
    try:
        _, full_key = keys.issue_client_key(name=name, now=utcnow(), actor=Actor.cli())
    except KeydeskError as exc:
        fail(str(exc))
    db.session.commit()
    click.echo(full_key)


@client_keys_cli.command("list")
def client_keys_list():
    """List client keys: id, status, created, last used, name."""
    now = utcnow()
    rows = keys.list_client_keys()
    if not rows:
        click.echo("No client keys.")
    for key in rows:
        last = key.last_used_at.isoformat() if key.last_used_at else "never"
        status, created = keys.status_of(key, now), key.created_at.isoformat()
        click.echo(f"{key.key_id}\t{status}\t{created}\t{last}\t{key.name}")


@client_keys_cli.command("revoke")
@click.argument("key_id")
def client_keys_revoke(key_id: str):
    """Revoke a client key at once."""
    try:
        key = keys.get_client_key(key_id)
        keys.revoke_key(key=key, now=utcnow(), actor=Actor.cli())
    except (KeydeskError, Conflict) as exc:
        fail(str(exc))
    db.session.commit()
    click.echo(f"Revoked client key {key_id}")


@audit_cli.command("verify")
def audit_verify():
    """Check the audit log's hash chain; names the first altered or missing event."""
    checked, problem = audit.verify_chain()
    if problem:
        fail(f"Audit log tampered: {problem} ({checked} events before it are intact)")
    click.echo(f"Audit log intact: {checked} events verified")


@click.command("seed", cls=OneLineCommand)
@with_appcontext  # AppGroup commands get this implicitly; a bare click command does not
@click.option("--keys", "count", type=int, required=True, help="How many keys to create.")
@click.option("--tenant", "slug", default="demo", show_default=True)
def seed(count: int, slug: str):
    """Bulk-create COUNT keys fast for demos and load tests.

    The last line printed is a usable key with scopes `api:read api:write`.
    """
    if count < 1 or count > 10_000_000:
        fail("--keys must be between 1 and 10000000")
    try:
        slug = accounts.validate_slug(slug)
    except InvalidInput as exc:
        fail(str(exc))
    started = time.monotonic()
    now = utcnow()
    tenant, owners = _seed_tenant(slug, now)
    full_key = _bulk_insert_keys(tenant, owners, count, now)
    audit.record(
        "seed.keys_created",
        actor=Actor.cli(),
        now=now,
        tenant_id=tenant.id,
        target_type="tenant",
        target=tenant.slug,
        count=count,
    )
    db.session.commit()
    elapsed = time.monotonic() - started
    click.echo(f"Seeded {count} keys into tenant {slug} in {elapsed:.1f}s", err=True)
    click.echo(full_key)


def _seed_tenant(slug: str, now) -> tuple[Tenant, list[User]]:
    tenant = accounts.get_tenant_by_slug(slug) or accounts.create_tenant(
        name=f"{slug} (seeded)", slug=slug, now=now
    )
    owners = []
    for n in range(1, 11):
        email = f"seed-{n}@{slug}.example.com"
        user = accounts.get_user_by_email(email)
        if user is None:
            user = User(
                tenant=tenant,
                email=email,
                password_hash=None,
                created_at=now,
                role="admin" if n == 1 else "member",
            )
            db.session.add(user)
        owners.append(user)
    db.session.flush()
    return tenant, owners


def _bulk_insert_keys(tenant: Tenant, owners: list[User], count: int, now) -> str:
    """Insert with executemany on the raw DBAPI connection: no ORM object per key."""
    pepper, prefix = keys.pepper(), keys.key_prefix()
    rng = random.Random()  # demo data shape only; ids and secrets come from os.urandom
    now_s = int(now.timestamp())
    scope_sets = [
        "api:read",
        "api:read api:write",
        "keys:read keys:write",
        "deploy:staging",
        "deploy:staging deploy:production",
        "admin:read",
        "api:read keys:verify",
        "billing:manage",
    ]
    # Constant text; only the driver's placeholders are interpolated.
    sql = (
        "INSERT INTO api_keys (key_id, digest, name, kind, tenant_id, user_id, scopes,"  # noqa: S608
        " created_at, created_by, expires_at, revoked_at, revoke_reason, last_used_at)"
        " VALUES ({p})".format(p=", ".join(["?" if _qmark() else "%s"] * 13))
    )
    conn = db.session.connection().connection  # the DBAPI connection of this transaction
    cursor = conn.cursor()
    batch: list[tuple] = []
    full_key = ""
    id_len, secret_len = keyformat.KEY_ID_LENGTH, keyformat.SECRET_LENGTH
    per_key = id_len + secret_len
    randomness, offset = "", 0
    for i in range(count):
        if offset == len(randomness):
            randomness, offset = keyformat.random_base62(per_key * 5000), 0
        key_id = randomness[offset : offset + id_len]
        secret = randomness[offset + id_len : offset + per_key]
        offset += per_key
        owner = owners[i % len(owners)]
        if i == count - 1:  # the usable one printed last
            scopes, expires, revoked, reason, last = "api:read api:write", None, None, None, None
            full_key = keyformat.assemble(prefix, key_id, secret)
        else:
            scopes = scope_sets[i % len(scope_sets)]
            created = now_s - rng.randrange(0, 400 * 86400)
            expires = None if i % 3 == 0 else created + rng.choice((30, 90, 365)) * 86400
            revoked = created + 86400 if i % 17 == 0 else None
            reason = "revoked" if revoked else None
            last = None if i % 5 == 0 else min(now_s, created + rng.randrange(0, 60 * 86400))
        created_at = now_s if i == count - 1 else created
        batch.append((
            key_id, keyformat.digest(pepper, secret), f"seed key {i + 1}", "user", tenant.id,
            owner.id, scopes, created_at, "seed", expires, revoked, reason, last,
        ))  # fmt: skip
        if len(batch) >= 5000:
            cursor.executemany(sql, batch)
            batch.clear()
    if batch:
        cursor.executemany(sql, batch)
    cursor.close()
    return full_key


def _qmark() -> bool:
    return db.engine.dialect.paramstyle == "qmark"


def register_cli(app: Flask) -> None:
    from app.admin.cli import remind

    keys_cli.add_command(remind)
    for group in (users_cli, keys_cli, client_keys_cli, audit_cli):
        app.cli.add_command(group)
    app.cli.add_command(seed)
    from app import ops_cli

    ops_cli.register(app)  # backup, doctor
