"""Credit movements and reports (docs/admin.md#credit). Every change of a balance writes exactly one ledger row with the
user row locked; this module is the only writer of `users.credit_balance`.

Services take the caller's session and flush; the entry point (API handler, CLI command, job) commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, Select, and_, case, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from edm.errors import BadInput, EdmError, InsufficientCredit, NotFound
from edm.models.users import LedgerKind, QuotaLedgerEntry, User
from edm.system.service import Actor, audit

# `users.credit_balance` and the ledger's amounts are 32-bit INTEGER columns: beyond this PostgreSQL refuses
# the write, so the bound is checked first (a 409/422, never a 500).
MAX_CREDIT = 2**31 - 1
OPERATIONS = ("add", "subtract", "set")
BATCH_MAX = 500


async def lock_user(session: AsyncSession, user_id: int) -> User:
    """The user row, locked until the transaction ends, with the balance re-read from the database.

    The session may already hold this User (the request's caller, a lookup before the lock): its balance must
    be the one read under the lock, not a copy read before another transaction committed, or the ledger goes
    wrong under concurrency. SQLAlchemy refreshes rows loaded FOR UPDATE; `populate_existing` says so
    explicitly (`test_a_user_loaded_before_the_lock_is_re_read`)."""
    user = await session.scalar(
        select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
    )
    if user is None:
        raise NotFound("user not found")
    return user


async def current_balance(session: AsyncSession, user_id: int) -> int:
    """The user's balance as the database holds it now (404 for no such user). Re-read even when the session
    already holds the user: the caller's own row was loaded when the request authenticated."""
    user = await session.get(User, user_id, populate_existing=True)
    if user is None:
        raise NotFound("user not found")
    return user.credit_balance


async def apply_credit(
    session: AsyncSession,
    *,
    user_id: int,
    kind: LedgerKind,
    amount: int,
    reason: str,
    task_id: int | None = None,
    actor_user_id: int | None = None,
) -> QuotaLedgerEntry:
    """Move the balance by `amount` (signed). Refuses to go below zero (no silent floor)."""
    if amount == 0:
        raise BadInput.field("amount", "must not be zero")
    user = await lock_user(session, user_id)
    balance_after = user.credit_balance + amount
    if balance_after < 0:
        raise InsufficientCredit(
            f"insufficient credit: needed {-amount}, available {user.credit_balance}",
            needed=-amount,
            available=user.credit_balance,
        )
    if balance_after > MAX_CREDIT:
        raise BadInput.field("amount", f"would take the balance above {MAX_CREDIT}")
    await session.execute(update(User).where(User.id == user_id).values(credit_balance=balance_after))
    entry = QuotaLedgerEntry(
        user_id=user_id,
        kind=kind,
        amount=amount,
        balance_after=balance_after,
        task_id=task_id,
        actor_user_id=actor_user_id,
        reason=reason[:500],
    )
    session.add(entry)
    await session.flush()
    # The row already holds it: tell the ORM without marking the object dirty (no second UPDATE at next flush).
    set_committed_value(user, "credit_balance", balance_after)
    return entry


async def admin_adjust(
    session: AsyncSession, *, user_id: int, operation: str, amount: int, reason: str, actor_user_id: int | None
) -> QuotaLedgerEntry | None:
    """`add`, `subtract` or `set` (docs/admin.md#credit). `set` to the current balance writes nothing."""
    if operation not in OPERATIONS:
        raise BadInput.field("operation", "must be add, subtract or set")
    if not reason.strip():
        raise BadInput.field("reason", "is required")
    if amount < 0 or (operation != "set" and amount == 0):
        raise BadInput.field("amount", "must be a positive integer" if operation != "set" else "must be ≥ 0")
    if amount > MAX_CREDIT:
        raise BadInput.field("amount", f"must be at most {MAX_CREDIT}")
    reason = reason.strip()
    if operation == "add":
        return await apply_credit(
            session, user_id=user_id, kind=LedgerKind.GRANT, amount=amount, reason=reason, actor_user_id=actor_user_id
        )
    if operation == "subtract":
        return await apply_credit(
            session, user_id=user_id, kind=LedgerKind.REVOKE, amount=-amount, reason=reason, actor_user_id=actor_user_id
        )
    user = await lock_user(session, user_id)
    delta = amount - user.credit_balance
    if delta == 0:
        return None
    return await apply_credit(
        session, user_id=user_id, kind=LedgerKind.SET, amount=delta, reason=reason, actor_user_id=actor_user_id
    )


@dataclass(frozen=True)
class Adjusted:
    user_id: int
    balance: int
    entry: QuotaLedgerEntry | None


async def adjust(
    session: AsyncSession, *, user_id: int, operation: str, amount: int, reason: str, actor: Actor
) -> Adjusted:
    """An admin credit operation with its audit row (`credit.adjust`), in the caller's transaction."""
    entry = await admin_adjust(
        session, user_id=user_id, operation=operation, amount=amount, reason=reason, actor_user_id=actor.user_id
    )
    if entry is not None:
        balance = entry.balance_after
    else:  # `set` to the current balance: admin_adjust locked and read the user in this session
        user = await session.get(User, user_id)
        assert user is not None
        balance = user.credit_balance
    await audit(
        session,
        actor,
        "credit.adjust",
        target_type="user",
        target_id=user_id,
        details={
            "operation": operation,
            "amount": amount,
            "delta": entry.amount if entry else 0,
            "balance_after": balance,
            "reason": reason.strip()[:500],
            "ledger_entry_id": entry.id if entry else None,
        },
    )
    return Adjusted(user_id, balance, entry)


@dataclass(frozen=True)
class BatchItem:
    user_id: int
    operation: str
    amount: int
    reason: str


@dataclass(frozen=True)
class BatchResult:
    """One item of a batch: what it did (`adjusted`), or why it was refused (`error`, nothing written)."""

    user_id: int
    adjusted: Adjusted | None = None
    error: EdmError | None = None


async def batch_adjust(session: AsyncSession, items: Sequence[BatchItem], *, actor: Actor) -> list[BatchResult]:
    """Apply each item on its own (a savepoint per item): a refused item changes nothing and the others still
    apply. Users are locked in id order (two batches naming the same users never deadlock); the answer keeps
    the order of `items`."""
    if not items:
        raise BadInput.field("items", "give at least one user")
    if len(items) > BATCH_MAX:
        raise BadInput.field("items", f"at most {BATCH_MAX} users per batch")
    results: list[BatchResult | None] = [None] * len(items)
    for index in sorted(range(len(items)), key=lambda i: items[i].user_id):
        item = items[index]
        try:
            async with session.begin_nested():
                done = await adjust(
                    session,
                    user_id=item.user_id,
                    operation=item.operation,
                    amount=item.amount,
                    reason=item.reason,
                    actor=actor,
                )
            results[index] = BatchResult(item.user_id, adjusted=done)
        except EdmError as exc:
            results[index] = BatchResult(item.user_id, error=exc)
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------------------------------------
# Ledger and reports
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerFilter:
    user_id: int | None = None
    kinds: tuple[str, ...] = ()
    task_id: int | None = None
    actor_user_id: int | None = None
    since: dt.datetime | None = None  # created_at ≥ since
    until: dt.datetime | None = None  # created_at < until


def ledger_query(filters: LedgerFilter, *, limit: int, before_id: int | None = None) -> Select[Any]:
    """Newest first (by id). With a user the (user_id, id) index serves it; with a task, the task_id index."""
    q = select(QuotaLedgerEntry)
    conditions = []
    if filters.user_id is not None:
        conditions.append(QuotaLedgerEntry.user_id == filters.user_id)
    if filters.kinds:
        conditions.append(QuotaLedgerEntry.kind.in_(filters.kinds))
    if filters.task_id is not None:
        conditions.append(QuotaLedgerEntry.task_id == filters.task_id)
    if filters.actor_user_id is not None:
        conditions.append(QuotaLedgerEntry.actor_user_id == filters.actor_user_id)
    if filters.since is not None:
        conditions.append(QuotaLedgerEntry.created_at >= filters.since)
    if filters.until is not None:
        conditions.append(QuotaLedgerEntry.created_at < filters.until)
    if before_id is not None:
        conditions.append(QuotaLedgerEntry.id < before_id)
    if conditions:
        q = q.where(and_(*conditions))
    return q.order_by(QuotaLedgerEntry.id.desc()).limit(limit)


async def list_ledger(
    session: AsyncSession, filters: LedgerFilter, *, limit: int, before_id: int | None = None
) -> list[QuotaLedgerEntry]:
    return list(await session.scalars(ledger_query(filters, limit=limit, before_id=before_id)))


PERIODS = {
    "24h": (dt.timedelta(hours=24), 3600),
    "7d": (dt.timedelta(days=7), 86400),
    "30d": (dt.timedelta(days=30), 86400),
}
TOTALS = ("granted", "revoked", "reserved", "charged", "refunded")
BUCKETS = (("0", None, 0), ("1-100", 1, 100), ("101-1000", 101, 1000), (">1000", 1001, None))


def _totals_of(kind: str, amount: int) -> tuple[str, int]:
    """Which total a ledger amount counts in, as a positive number. A `set` counts as granted when it
    raised the balance and as revoked when it lowered it."""
    if kind == LedgerKind.GRANT or (kind == LedgerKind.SET and amount > 0):
        return "granted", amount
    if kind == LedgerKind.REVOKE or kind == LedgerKind.SET:
        return "revoked", -amount
    if kind == LedgerKind.RESERVE:
        return "reserved", -amount
    if kind == LedgerKind.CHARGE:
        return "charged", -amount
    return "refunded", amount


def _bucket_start(session: AsyncSession, seconds: int) -> Any:
    """The start of a UTC hour or day of `created_at`, as seconds since the epoch (both databases)."""
    col = QuotaLedgerEntry.created_at
    if session.get_bind().dialect.name == "postgresql":
        epoch = func.floor(func.extract("epoch", col) / seconds) * seconds
    else:  # SQLite stores naive UTC text; strftime('%s') reads it as UTC
        epoch = cast(func.strftime("%s", col), Integer) // seconds * seconds
    return epoch


async def summary(session: AsyncSession, *, period: str, now: dt.datetime) -> dict[str, Any]:
    """Totals for the period, users by balance bucket now, and the trend (hourly for 24h, daily otherwise,
    UTC, one point per bucket including empty ones)."""
    if period not in PERIODS:
        raise BadInput.field("period", "must be 24h, 7d or 30d")
    span, seconds = PERIODS[period]
    start = int(now.timestamp()) // seconds * seconds - (span // dt.timedelta(seconds=seconds) - 1) * seconds
    since = now - span
    sign = case((QuotaLedgerEntry.amount > 0, 1), else_=-1)
    bucket = _bucket_start(session, seconds).label("bucket")
    rows = (
        await session.execute(
            select(bucket, QuotaLedgerEntry.kind, sign.label("sign"), func.sum(QuotaLedgerEntry.amount), func.count())
            .where(QuotaLedgerEntry.created_at >= min(since, dt.datetime.fromtimestamp(start, dt.UTC)))
            .group_by(bucket, QuotaLedgerEntry.kind, sign)
        )
    ).all()
    totals = dict.fromkeys(TOTALS, 0)
    counts = dict.fromkeys(TOTALS, 0)
    trend = {start + i * seconds: dict.fromkeys(TOTALS, 0) for i in range(span // dt.timedelta(seconds=seconds))}
    for at, kind, _sign, amount, _n in rows:
        name, value = _totals_of(kind, int(amount))
        point = trend.get(int(at))
        if point is not None:
            point[name] += value
    # The totals cover exactly [now − period, now]; the trend's first bucket may start a little earlier.
    exact = (
        await session.execute(
            select(QuotaLedgerEntry.kind, sign, func.sum(QuotaLedgerEntry.amount), func.count())
            .where(QuotaLedgerEntry.created_at >= since, QuotaLedgerEntry.created_at <= now)
            .group_by(QuotaLedgerEntry.kind, sign)
        )
    ).all()
    for kind, _sign, amount, n in exact:
        name, value = _totals_of(kind, int(amount))
        totals[name] += value
        counts[name] += int(n)
    buckets = await balance_buckets(session)
    return {
        "period": period,
        "from": since,
        "to": now,
        "totals": totals,
        "entries": counts,
        "users_by_balance": buckets,
        "trend": {
            "unit": "hour" if seconds == 3600 else "day",
            "points": [
                {"start": dt.datetime.fromtimestamp(at, dt.UTC), **values} for at, values in sorted(trend.items())
            ],
        },
    }


async def balance_buckets(session: AsyncSession) -> dict[str, int]:
    b = User.credit_balance
    label = case((b <= 0, "0"), (b <= 100, "1-100"), (b <= 1000, "101-1000"), else_=">1000")
    rows = (await session.execute(select(label, func.count()).group_by(label))).all()
    found = {str(name): int(n) for name, n in rows}
    return {name: found.get(name, 0) for name, _, _ in BUCKETS}
