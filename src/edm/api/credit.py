"""Credit routes (docs/admin.md#credit): own balance and ledger; admin operations, batch, ledger and summary.

Thin: parse, call `users.credit`, shape the answer. Reads of another user's credit are admin-only; writes need
an admin with a write token (`AdminWriter`). Every admin operation is audited as `credit.adjust`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime

from edm.api.deps import Admin, AdminWriter, CurrentCaller, IdPath, Paging, Session
from edm.clock import utc_now
from edm.errors import BadInput, NotFound
from edm.paging import MAX_ID, Page, PageOut, page_of
from edm.users import credit
from edm.users.credit import LedgerFilter
from edm.users.schemas import (
    AdjustedOut,
    BatchOut,
    CreditBatch,
    CreditOperation,
    CreditOut,
    CreditSummaryOut,
    LedgerEntryOut,
    LedgerKindName,
    batch_result_out,
)

router = APIRouter(prefix="/api/v1", tags=["credit"])

OptId = Annotated[int | None, Query(ge=1, le=MAX_ID)]


async def _ledger_page(session: Session, filters: LedgerFilter, page: Page) -> PageOut[LedgerEntryOut]:
    rows = await credit.list_ledger(session, filters, limit=page.limit + 1, before_id=page.after_id)
    return PageOut[LedgerEntryOut].model_validate(page_of(rows, page), from_attributes=True)


async def _statement(session: Session, user_id: int, kinds: list[LedgerKindName] | None, page: Page) -> CreditOut:
    balance = await credit.current_balance(session, user_id)
    ledger = await _ledger_page(session, _filters(user_id=user_id, kinds=tuple(kinds or ())), page)
    return CreditOut(balance=balance, ledger=ledger)


def _filters(**values: Any) -> LedgerFilter:
    since, until = values.get("since"), values.get("until")
    if since is not None and until is not None and until <= since:
        raise BadInput.field("to", "must be after from")
    return LedgerFilter(**values)


@router.get("/me/credit")
async def my_credit(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    kind: Annotated[list[LedgerKindName] | None, Query()] = None,
    user_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="admins: another user")] = None,
) -> CreditOut:
    """Own balance and ledger (newest first). Another user's `user_id` is 404 unless the caller is an admin."""
    target = caller.id
    if user_id is not None and user_id != caller.id:
        if not caller.is_admin:
            raise NotFound("user not found")
        target = user_id
    return await _statement(session, target, kind, page)


@router.get("/admin/users/{user_id}/credit")
async def admin_user_credit(
    user_id: IdPath,
    session: Session,
    caller: Admin,
    page: Paging,
    kind: Annotated[list[LedgerKindName] | None, Query()] = None,
) -> CreditOut:
    return await _statement(session, user_id, kind, page)


@router.post("/admin/users/{user_id}/credit")
async def admin_adjust_credit(
    user_id: IdPath, body: CreditOperation, session: Session, caller: AdminWriter, request: Request
) -> AdjustedOut:
    """add / subtract / set with a reason: one transaction, the user row locked, one ledger entry (none when
    `set` names the current balance). Subtracting more than the balance is 409 `insufficient_credit`."""
    done = await credit.adjust(
        session,
        user_id=user_id,
        operation=body.operation,
        amount=body.amount,
        reason=body.reason,
        actor=caller.actor(request),
    )
    entry = LedgerEntryOut.model_validate(done.entry) if done.entry else None
    return AdjustedOut(balance=done.balance, entry=entry)


@router.post("/admin/credit/batch")
async def admin_credit_batch(body: CreditBatch, session: Session, caller: AdminWriter, request: Request) -> BatchOut:
    """Up to 500 users, each applied atomically on its own; the answer lists the result per user in request
    order (`ok`, `balance`, `entry`, or `error` with the code and message a single operation would give)."""
    results = await credit.batch_adjust(session, body.resolved(), actor=caller.actor(request))
    applied = sum(1 for r in results if r.error is None)
    return BatchOut(applied=applied, failed=len(results) - applied, results=[batch_result_out(r) for r in results])


@router.get("/admin/credit/ledger")
async def admin_ledger(
    session: Session,
    caller: Admin,
    page: Paging,
    user_id: OptId = None,
    task_id: OptId = None,
    actor_user_id: OptId = None,
    kind: Annotated[list[LedgerKindName] | None, Query()] = None,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: Annotated[AwareDatetime | None, Query()] = None,
) -> PageOut[LedgerEntryOut]:
    """Every ledger entry, newest first, filtered by user, kind (repeatable), task, actor and created_at
    (`from` inclusive, `to` exclusive)."""
    filters = _filters(
        user_id=user_id, kinds=tuple(kind or ()), task_id=task_id, actor_user_id=actor_user_id, since=from_, until=to
    )
    return await _ledger_page(session, filters, page)


@router.get("/admin/credit/summary")
async def admin_credit_summary(
    session: Session, caller: Admin, period: Literal["24h", "7d", "30d"] = "7d"
) -> CreditSummaryOut:
    """Totals granted, revoked, reserved, charged and refunded in the period, users by balance bucket, and the
    trend (hourly for 24h, daily for 7d and 30d; UTC)."""
    return CreditSummaryOut.model_validate(await credit.summary(session, period=period, now=utc_now()))
