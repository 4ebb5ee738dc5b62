"""Credit movements. Every change of a balance writes exactly one ledger row with the user row locked."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.errors import BadInput, InsufficientCredit, NotFound
from edm.users.models import LedgerKind, QuotaLedgerEntry, User


async def lock_user(session: AsyncSession, user_id: int) -> User:
    user = await session.scalar(select(User).where(User.id == user_id).with_for_update())
    if user is None:
        raise NotFound("user not found")
    return user


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
    user.credit_balance = balance_after
    return entry


async def admin_adjust(
    session: AsyncSession, *, user_id: int, operation: str, amount: int, reason: str, actor_user_id: int | None
) -> QuotaLedgerEntry | None:
    """`add`, `subtract` or `set` (SPEC §15.2). `set` to the current balance writes nothing."""
    if not reason.strip():
        raise BadInput.field("reason", "is required")
    if amount < 0 or (operation != "set" and amount == 0):
        raise BadInput.field("amount", "must be a positive integer")
    if operation == "add":
        return await apply_credit(session, user_id=user_id, kind=LedgerKind.GRANT, amount=amount,
                                  reason=reason, actor_user_id=actor_user_id)
    if operation == "subtract":
        return await apply_credit(session, user_id=user_id, kind=LedgerKind.REVOKE, amount=-amount,
                                  reason=reason, actor_user_id=actor_user_id)
    if operation == "set":
        user = await lock_user(session, user_id)
        delta = amount - user.credit_balance
        if delta == 0:
            return None
        return await apply_credit(session, user_id=user_id, kind=LedgerKind.SET, amount=delta,
                                  reason=reason, actor_user_id=actor_user_id)
    raise BadInput.field("operation", "must be add, subtract or set")
