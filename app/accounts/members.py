"""Members of a tenant: listing, invitations, role changes and deactivation. The caller commits.

Invite tokens are shown once to the inviting admin; only their SHA-256 is stored,
so a leaked database does not hand out working invitations. Acceptance is one
conditional UPDATE (`... WHERE accepted_at IS NULL`): of two concurrent
acceptances exactly one matches the row.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlalchemy import func, select, update

from app import audit
from app.accounts import service as accounts
from app.accounts import sessions
from app.accounts.passwords import check_password_rules
from app.audit import Actor
from app.errors import Conflict, InvalidInput, NotFound
from app.extensions import db
from app.keys.tokens import end_user_tokens
from app.models import ApiKey, Invite, Tenant, User

INVITE_VALID_FOR = timedelta(days=7)
ROLES = ("admin", "member")


@dataclass
class MemberRow:
    user: User
    key_count: int  # keys that work right now
    total_keys: int


def list_members(*, tenant: Tenant, now: datetime) -> list[MemberRow]:
    from app.keys.status import working

    working_keys = (
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.user_id == User.id, working(now))
        .correlate(User)
        .scalar_subquery()
    )
    all_keys = (
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.user_id == User.id, ApiKey.kind != "user_token")
        .correlate(User)
        .scalar_subquery()
    )
    rows = db.session.execute(
        select(User, working_keys, all_keys)
        .where(User.tenant_id == tenant.id)
        .order_by(User.deactivated_at.is_not(None), User.email)
    ).all()
    return [MemberRow(user=u, key_count=w, total_keys=t) for u, w, t in rows]


def count_working_keys(*, user: User, now: datetime) -> int:
    """How many of the user's keys work right now (what deactivating them would revoke)."""
    from app.keys.status import working

    return db.session.execute(
        select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user.id, working(now))
    ).scalar_one()


def get_member(*, tenant: Tenant, user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None or user.tenant_id != tenant.id:
        raise NotFound("No such member")
    return user


def _active_admins(tenant: Tenant) -> int:
    # Lock the tenant row (PostgreSQL) so two admins demoting each other at the same
    # moment cannot both pass this check; SQLite's BEGIN IMMEDIATE already serializes.
    db.session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    return db.session.execute(
        select(func.count())
        .select_from(User)
        .where(User.tenant_id == tenant.id, User.role == "admin", User.deactivated_at.is_(None))
    ).scalar_one()


def _guard_last_admin(tenant: Tenant, user: User, doing: str) -> None:
    if user.role == "admin" and user.is_active and _active_admins(tenant) <= 1:
        raise Conflict(f"{user.email} is the last active admin and cannot be {doing}")


def change_role(*, tenant: Tenant, user: User, role: str, actor: Actor, now: datetime) -> bool:
    """Returns False when nothing changed."""
    if role not in ROLES:
        raise InvalidInput("Role must be admin or member", field="role")
    if user.tenant_id != tenant.id:
        raise NotFound("No such member")
    if user.role == role:
        return False
    if not user.is_active:
        raise Conflict(f"{user.email} is deactivated")
    if role == "member":
        _guard_last_admin(tenant, user, "demoted")
        # Terminal sign-ins carry the scopes an admin may grant: a demotion ends them.
        end_user_tokens(user, now=now, reason="role_changed", actor=actor)
    before = user.role
    user.role = role
    audit.record(
        "member.role_changed",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="user",
        target=user.email,
        before=before,
        after=role,
    )
    if role != "admin":  # an invitation works with its inviter's rights: they are gone
        end_invites_of(user, reason="inviter_demoted", actor=actor, now=now)
    return True


def deactivate(*, tenant: Tenant, user: User, actor: Actor, now: datetime) -> int:
    """Block sign-in, end the member's sessions and revoke their working keys.

    Returns how many keys were revoked.
    """
    from app.keys.service import record_key_revocations
    from app.keys.status import working

    if user.tenant_id != tenant.id:
        raise NotFound("No such member")
    if not user.is_active:
        raise Conflict(f"{user.email} is already deactivated")
    _guard_last_admin(tenant, user, "deactivated")
    user.deactivated_at = now
    sessions_ended = sessions.end_user_sessions(user=user, reason="deactivated", now=now)
    revoked = db.session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user.id, working(now))
        .values(revoked_at=now, revoke_reason="member_deactivated", revoked_by=actor.label)
        .returning(ApiKey.key_id, ApiKey.name)
        .execution_options(synchronize_session=False)
    ).all()
    record_key_revocations(
        revoked, tenant_id=tenant.id, now=now, actor=actor, reason="member_deactivated"
    )
    audit.record(
        "member.deactivated",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="user",
        target=user.email,
        keys_revoked=len(revoked),
        sessions_ended=sessions_ended,
    )
    end_invites_of(user, reason="inviter_deactivated", actor=actor, now=now)
    db.session.flush()
    db.session.expire_all()
    return len(revoked)


# --- invitations ---------------------------------------------------------------------


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class IssuedInvite:
    invite: Invite
    token: str  # exists only here: shown or mailed once, never stored
    resent: bool  # an open invitation for the address was renewed instead of a new one


def create_invite(
    *, tenant: Tenant, email: str, invited_by: User, actor: Actor, now: datetime
) -> IssuedInvite:
    """One open invitation per address and tenant: inviting an address that has one renews
    it (a new token, so the old link stops working, and a new expiry) instead of adding a
    second one."""
    email = accounts.normalize_email(email)
    existing = accounts.get_user_by_email(email)
    if existing is not None and existing.tenant_id == tenant.id:
        raise InvalidInput("This address already belongs to a member", field="email")
    # An account in another organization is not revealed to this admin: the invitation is
    # made as for anyone, and accepting it reads as for any taken address (admin/invites.py).
    # Lock the tenant row (PostgreSQL) so that two admins inviting one address at the same
    # moment renew one row instead of making two; SQLite's BEGIN IMMEDIATE serializes anyway.
    db.session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    token = secrets.token_urlsafe(32)
    invite = db.session.execute(
        select(Invite)
        .where(*_open(tenant_id=tenant.id), Invite.email == email)
        .order_by(Invite.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    if invite is not None:
        invite.token_digest = token_digest(token)
        invite.invited_by_id = invited_by.id
        invite.expires_at = now + INVITE_VALID_FOR
        db.session.flush()
        audit.record(
            "invite.resent",
            actor=actor,
            now=now,
            tenant_id=tenant.id,
            target_type="invite",
            target=email,
            invite_id=invite.id,
            expires_at=invite.expires_at,
        )
        return IssuedInvite(invite, token, resent=True)
    invite = Invite(
        tenant_id=tenant.id,
        email=email,
        token_digest=token_digest(token),
        invited_by_id=invited_by.id,
        created_at=now,
        expires_at=now + INVITE_VALID_FOR,
    )
    db.session.add(invite)
    db.session.flush()
    audit.record(
        "invite.created",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="invite",
        target=email,
        invite_id=invite.id,
        expires_at=invite.expires_at,
    )
    return IssuedInvite(invite, token, resent=False)


def _open(*, tenant_id: int) -> tuple:
    """Invitations not accepted or withdrawn (expired ones included: renewing one reopens it)."""
    return (
        Invite.tenant_id == tenant_id,
        Invite.accepted_at.is_(None),
        Invite.revoked_at.is_(None),
    )


def end_invites_of(user: User, *, reason: str, actor: Actor, now: datetime) -> int:
    """Withdraw the open invitations `user` made (they were deactivated or are no longer an
    admin: an invitation must not outlive its inviter's rights). One audit event each."""
    ended = db.session.execute(
        update(Invite)
        .where(*_open(tenant_id=user.tenant_id), Invite.invited_by_id == user.id)
        .values(revoked_at=now)
        .returning(Invite.id, Invite.email)
        .execution_options(synchronize_session=False)
    ).all()
    for invite_id, email in ended:
        audit.record(
            "invite.revoked",
            actor=actor,
            now=now,
            tenant_id=user.tenant_id,
            target_type="invite",
            target=email,
            invite_id=invite_id,
            reason=reason,
            invited_by=user.email,
        )
    return len(ended)


def invitation_message(*, invite: Invite, link: str, invited_by: User, sender: str) -> EmailMessage:
    """The email that carries an invitation link to the invited address (and only there)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = invite.email
    msg["Subject"] = f"You are invited to {invite.tenant.name} on Keydesk"
    msg.set_content(
        f"{invited_by.email} invited you to join {invite.tenant.name} on Keydesk.\n\n"
        f"Open this link to choose a password and join (it works once, until "
        f"{invite.expires_at.strftime('%Y-%m-%d %H:%M UTC')}):\n\n{link}\n\n"
        "If you did not expect this, ignore this email: nothing happens without the link.\n"
    )
    return msg


def pending_invites(*, tenant: Tenant, now: datetime) -> list[Invite]:
    """Open, unexpired invitations, less those of addresses that are members by now (made
    with `users create`, say): they can never be accepted. An address with an account in
    another tenant stays listed, or the list would reveal that account to this admin."""
    joined = select(User.id).where(User.tenant_id == tenant.id, User.email == Invite.email)
    return list(
        db.session.execute(
            select(Invite)
            .where(*_open(tenant_id=tenant.id), Invite.expires_at > now, ~joined.exists())
            .order_by(Invite.created_at.desc())
        ).scalars()
    )


def revoke_invite(*, tenant: Tenant, invite_id: int, actor: Actor, now: datetime) -> Invite:
    invite = db.session.get(Invite, invite_id)
    if invite is None or invite.tenant_id != tenant.id:
        raise NotFound("No such invitation")
    done = db.session.execute(
        update(Invite)
        .where(Invite.id == invite.id, Invite.accepted_at.is_(None), Invite.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
        raise Conflict("This invitation was already used or withdrawn")
    audit.record(
        "invite.revoked",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="invite",
        target=invite.email,
        invite_id=invite.id,
    )
    db.session.refresh(invite)
    return invite


class InviteUnusable(InvalidInput):
    """The token is unknown, expired, used or withdrawn; the message says which."""


def find_invite(*, token: str, now: datetime) -> Invite:
    """The invite for a token, if it can still be accepted; InviteUnusable otherwise."""
    invite = db.session.execute(
        select(Invite).where(Invite.token_digest == token_digest(token or ""))
    ).scalar_one_or_none()
    if invite is None:
        raise InviteUnusable("This invitation link is not valid. Ask your admin for a new one.")
    if invite.accepted_at is not None:
        raise InviteUnusable("This invitation was already used. Sign in instead.")
    if invite.revoked_at is not None:
        raise InviteUnusable("This invitation was withdrawn. Ask your admin for a new one.")
    if invite.expires_at <= now:
        raise InviteUnusable("This invitation has expired. Ask your admin for a new one.")
    inviter = db.session.get(User, invite.invited_by_id) if invite.invited_by_id else None
    if inviter is not None and not (inviter.is_active and inviter.is_admin):
        # Withdrawn when the inviter lost their rights (end_invites_of); this holds for any
        # path that took them away without going through it.
        raise InviteUnusable("This invitation was withdrawn. Ask your admin for a new one.")
    return invite


def accept_invite(*, token: str, password: str, actor: Actor, now: datetime) -> User:
    """Set the password and join the tenant as a member. One winner per invite."""
    invite = find_invite(token=token, now=now)
    check_password_rules(password, email=invite.email)
    won = db.session.execute(
        update(Invite)
        .where(
            Invite.id == invite.id,
            Invite.accepted_at.is_(None),
            Invite.revoked_at.is_(None),
            Invite.expires_at > now,
        )
        .values(accepted_at=now)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:
        raise InviteUnusable("This invitation was already used. Sign in instead.")
    joined = Actor("user", invite.email, actor.ip, actor.user_agent)
    user = accounts.create_user(
        tenant=invite.tenant,
        email=invite.email,
        password=password,
        role="member",
        now=now,
        actor=joined,
        check_rules=False,
    )
    user.last_login_at = now
    audit.record(
        "invite.accepted",
        actor=joined,
        now=now,
        tenant_id=invite.tenant_id,
        target_type="invite",
        target=invite.email,
        invite_id=invite.id,
    )
    # Any other open invitation of this address here is done with: tidy it away.
    db.session.execute(
        update(Invite)
        .where(*_open(tenant_id=invite.tenant_id), Invite.email == invite.email)
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return user
