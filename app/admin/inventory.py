"""The tenant's key inventory: filters as SQL, one page at a time, and incident revoke.

Every filter is a SQL condition over api_keys (no row is loaded to be filtered in
Python), every query starts from `tenant_id = ?`, and each sort order is the
second column of one of the ix_api_keys_tenant_* indexes, so a page of 50 among
100,000 keys is an index range scan that stops after 50 rows (plus the offset).
The status conditions are app/keys/status.py's, which mirror its status_of exactly;
tests hold them to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, update

from app import audit
from app.audit import Actor
from app.errors import InvalidInput
from app.extensions import db
from app.keys.scopes import ALL_SCOPES
from app.keys.service import record_key_revocations
from app.keys.status import (  # noqa: F401 (working: the name the admin pages long used)
    STATUSES,
    end_of,
    needs_renewal,
    status_condition,
    status_of,
    working,
)
from app.keys.tokens import is_api_key
from app.models import ApiKey, User
from app.params import whole_number

PAGE_SIZE = 50
SORTS = {
    "created": ApiKey.created_at,
    "expires": ApiKey.expires_at,
    "last_used": ApiKey.last_used_at,
    "name": ApiKey.name,
}
DEFAULT_DIRECTION = {"created": "desc", "expires": "asc", "last_used": "desc", "name": "asc"}
MARK_EXPIRING_DAYS = 7
MARK_UNUSED_DAYS = 30
MAX_DAYS = 3650


@dataclass(frozen=True)
class KeyFilter:
    status: str | None = None
    owner: str | None = None
    scope: str | None = None
    expiring_within_days: int | None = None
    unused_for_days: int | None = None
    q: str | None = None
    sort: str = "created"
    direction: str = "desc"

    def query_args(self) -> dict[str, str]:
        """The filter as URL query arguments (for links that keep the current view)."""
        out = {
            "status": self.status,
            "owner": self.owner,
            "scope": self.scope,
            "expiring_within_days": self.expiring_within_days,
            "unused_for_days": self.unused_for_days,
            "q": self.q,
        }
        args = {k: str(v) for k, v in out.items() if v is not None}
        if self.sort != "created" or self.direction != "desc":
            args.update(sort=self.sort, dir=self.direction)
        return args

    @property
    def is_empty(self) -> bool:
        return not any(
            v is not None
            for v in (
                self.status,
                self.owner,
                self.scope,
                self.expiring_within_days,
                self.unused_for_days,
                self.q,
            )
        )


# The query parameters parse_filter reads (SPEC's filters plus sorting).
FILTER_NAMES = (
    "status", "owner", "scope", "expiring_within_days", "unused_for_days", "q", "sort", "dir",
)  # fmt: skip
# How /admin/keys labels them: a page's refusal names the field as the page shows it.
PAGE_LABELS = {
    "status": "Status", "owner": "Owner (email)", "scope": "Scope",
    "expiring_within_days": "Expiring within (days)", "unused_for_days": "Unused for (days)",
    "q": "Name contains", "sort": "Sort", "dir": "Sort direction", "page": "Page",
}  # fmt: skip


def _days(args: Mapping[str, str], name: str, label: str) -> int | None:
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    days = whole_number(raw, high=MAX_DAYS)
    if days is None:
        raise InvalidInput(f"{label} must be a whole number of days from 0 to {MAX_DAYS}", name)
    return days


def parse_filter(args: Mapping[str, str], labels: Mapping[str, str] | None = None) -> KeyFilter:
    """Read the SPEC's query filters; InvalidInput names the bad one (its `field` the
    parameter, its message the parameter's label in `labels`, by default its name) and the
    values it takes."""

    def label(name: str) -> str:
        return (labels or {}).get(name, name)

    status = (args.get("status") or "").strip() or None
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"{label('status')} must be one of: {', '.join(STATUSES)}", "status")
    scope = (args.get("scope") or "").strip() or None
    if scope is not None and scope not in ALL_SCOPES:
        raise InvalidInput(
            f"{label('scope')} must be one of: {', '.join(ALL_SCOPES)} (not {scope[:40]})",
            "scope",
        )
    owner = (args.get("owner") or "").strip().lower() or None
    q = (args.get("q") or "").strip()[:100] or None
    sort = (args.get("sort") or "created").strip()
    if sort not in SORTS:
        raise InvalidInput(f"{label('sort')} must be one of: {', '.join(SORTS)}", "sort")
    direction = (args.get("dir") or DEFAULT_DIRECTION[sort]).strip()
    if direction not in ("asc", "desc"):
        raise InvalidInput(f"{label('dir')} must be asc or desc", "dir")
    return KeyFilter(
        status=status,
        owner=owner,
        scope=scope,
        expiring_within_days=_days(args, "expiring_within_days", label("expiring_within_days")),
        unused_for_days=_days(args, "unused_for_days", label("unused_for_days")),
        q=q,
        sort=sort,
        direction=direction,
    )


def parse_page(raw: str | None, label: str = "page") -> int:
    """A page number (1 when absent); InvalidInput naming it otherwise."""
    if raw is None or not raw.strip():
        return 1
    page = whole_number(raw, low=1, high=10**6)
    if page is None:
        raise InvalidInput(f"{label} must be a whole number from 1 to 1000000", "page")
    return page


def _owner_ids(email: str):
    return select(User.id).where(User.email == email).scalar_subquery()


def conditions(*, tenant_id: int, filters: KeyFilter, now: datetime) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [ApiKey.tenant_id == tenant_id, is_api_key()]
    f = filters
    if f.status:
        conds.append(status_condition(f.status, now))
    if f.owner:
        conds.append(ApiKey.user_id == _owner_ids(f.owner))
    if f.scope:
        # Whole-token match in the space-separated column: " api:read " never matches
        # "api:read-only". Scopes are validated against ALL_SCOPES, so no LIKE wildcards.
        padded = literal(" ") + ApiKey.scopes + literal(" ")
        conds.append(padded.like(f"% {f.scope} %"))
    if f.expiring_within_days is not None:
        # The banner's and the reminder's question too: within 7 days, exactly status=expiring.
        conds.append(needs_renewal(now, timedelta(days=f.expiring_within_days)))
    if f.unused_for_days is not None:
        cutoff = now - timedelta(days=f.unused_for_days)
        # A key created yesterday and never used is not "unused for 30 days".
        conds.append(
            or_(
                ApiKey.last_used_at <= cutoff,
                and_(ApiKey.last_used_at.is_(None), ApiKey.created_at <= cutoff),
            )
        )
    if f.q:
        escaped = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(func.lower(ApiKey.name).like(f"%{escaped.lower()}%", escape="\\"))
    return conds


@dataclass
class KeyRow:
    key: ApiKey
    owner: str | None
    status: str
    expiring_soon: bool
    unused: bool


@dataclass
class KeyPage:
    rows: list[KeyRow]
    total: int
    page: int
    pages: int
    filters: KeyFilter
    extra: dict = field(default_factory=dict)

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


# Where "never" sorts: a key that never expires expires after every other one; a key
# never used was last used before every other one. Explicit, because SQLite and
# PostgreSQL disagree on where NULLs go by default.
NULL_IS_LARGEST = {"expires": True, "last_used": False}


def _order_by(filters: KeyFilter):
    column = SORTS[filters.sort]
    asc = filters.direction == "asc"
    ordered = column.asc() if asc else column.desc()
    if filters.sort in NULL_IS_LARGEST:
        nulls_at_end = NULL_IS_LARGEST[filters.sort] == asc
        ordered = ordered.nulls_last() if nulls_at_end else ordered.nulls_first()
    return (ordered, ApiKey.id.asc() if asc else ApiKey.id.desc())


def count_keys(
    *, tenant_id: int, filters: KeyFilter, now: datetime, only_working: bool = False
) -> int:
    """How many keys match; only_working: how many an incident revoke would stop."""
    conds = conditions(tenant_id=tenant_id, filters=filters, now=now)
    if only_working:
        conds.append(working(now))
    return db.session.execute(select(func.count()).select_from(ApiKey).where(*conds)).scalar_one()


def key_page(
    *, tenant_id: int, filters: KeyFilter, now: datetime, page: int = 1, per_page: int = PAGE_SIZE
) -> KeyPage:
    """One page of the tenant's keys with their owners' emails."""
    total = count_keys(tenant_id=tenant_id, filters=filters, now=now)
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    stmt = (
        select(ApiKey, User.email)
        .outerjoin(User, User.id == ApiKey.user_id)
        .where(*conditions(tenant_id=tenant_id, filters=filters, now=now))
        .order_by(*_order_by(filters))
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    soon = now + timedelta(days=MARK_EXPIRING_DAYS)
    stale = now - timedelta(days=MARK_UNUSED_DAYS)
    rows = []
    for key, email in db.session.execute(stmt).all():
        status = status_of(key, now)
        alive = status in ("active", "expiring")
        last = key.last_used_at or key.created_at
        end = end_of(key)
        rows.append(
            KeyRow(
                key=key,
                owner=email,
                status=status,
                expiring_soon=alive and end is not None and end <= soon,
                unused=alive and last <= stale,
            )
        )
    return KeyPage(rows=rows, total=total, page=page, pages=pages, filters=filters)


# --- incident revoke -----------------------------------------------------------------

REVOKE_BATCH = 500


def revoke_matching(
    *, tenant_id: int, filters: KeyFilter, now: datetime, actor: Actor, reason: str = "incident"
) -> int:
    """Revoke every currently working key that matches `filters`; returns how many.

    One audit event per key plus one for the action, all in the caller's transaction.
    Each batch is a conditional UPDATE ... RETURNING, so a key revoked concurrently by
    someone else is neither revoked twice nor audited twice.
    """
    conds = [*conditions(tenant_id=tenant_id, filters=filters, now=now), working(now)]
    ids = list(db.session.execute(select(ApiKey.id).where(*conds).order_by(ApiKey.id)).scalars())
    done: list = []
    for start in range(0, len(ids), REVOKE_BATCH):
        batch = ids[start : start + REVOKE_BATCH]
        done += db.session.execute(
            update(ApiKey)
            .where(ApiKey.id.in_(batch), working(now))
            .values(revoked_at=now, revoke_reason=reason, revoked_by=actor.label)
            .returning(ApiKey.key_id, ApiKey.name)
            .execution_options(synchronize_session=False)
        ).all()
    # The audit chain lock only after every row lock, the order a single revoke takes them
    # too (UPDATE, then audit.record): interleaving them would deadlock on PostgreSQL.
    record_key_revocations(done, tenant_id=tenant_id, now=now, actor=actor, reason=reason)
    revoked = len(done)
    audit.record(
        "keys.bulk_revoked",
        actor=actor,
        now=now,
        tenant_id=tenant_id,
        target_type="tenant_keys",
        target=None,
        filters={k: v for k, v in filters.query_args().items() if k not in ("sort", "dir")},
        count=revoked,
        reason=reason,
    )
    db.session.expire_all()
    return revoked
