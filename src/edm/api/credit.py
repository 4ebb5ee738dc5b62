"""Credit routes (SPEC §15.2, §16.3): own balance and ledger; admin operations, batch, ledger and summary.

Thin: parse, call `users.credit`, shape the answer. Reads of another user's credit are admin-only; writes need
an admin with a write token (`AdminWriter`). Every admin operation is audited as `credit.adjust`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from edm.api.deps import Admin, AdminWriter, Caller, CurrentCaller, Id, IdPath, Paging, Session
from edm.clock import utc_now
from edm.errors import BadInput, NotFound
from edm.models.users import User
from edm.paging import MAX_ID, Page, page_of
from edm.system.service import Actor
from edm.users import credit
from edm.users.credit import BATCH_MAX, MAX_CREDIT, BatchItem, LedgerFilter, ledger_view

router = APIRouter(prefix="/api/v1", tags=["credit"])

Kind = Literal["grant", "revoke", "set", "reserve", "charge", "refund"]
Operation = Literal["add", "subtract", "set"]
Amount = Annotated[int, Field(ge=0, le=MAX_CREDIT, description="≥ 0; > 0 for add and subtract")]
Reason = Annotated[str, Field(min_length=1, max_length=500)]
OptId = Annotated[int | None, Query(ge=1, le=MAX_ID)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreditOperation(Strict):
    operation: Operation
    amount: Amount
    reason: Reason


class BatchEntry(Strict):
    user_id: Id
    operation: Operation | None = None
    amount: Amount | None = None
    reason: Reason | None = None


class CreditBatch(Strict):
    """Defaults for every item (`operation`, `amount`, `reason`), which an item may override."""

    operation: Operation | None = None
    amount: Amount | None = None
    reason: Reason | None = None
    items: list[BatchEntry] = Field(..., min_length=1, max_length=BATCH_MAX)

    @model_validator(mode="after")
    def _complete(self) -> CreditBatch:
        for i, item in enumerate(self.items):
            for name in ("operation", "amount", "reason"):
                if getattr(item, name) is None and getattr(self, name) is None:
                    raise ValueError(f"items[{i}]: {name} is required (on the item or for the whole batch)")
        return self

    def resolved(self) -> list[BatchItem]:
        return [
            BatchItem(
                user_id=i.user_id,
                operation=str(i.operation or self.operation),
                amount=int(i.amount if i.amount is not None else self.amount or 0),
                reason=str(i.reason or self.reason),
            )
            for i in self.items
        ]


def _actor(caller: Caller, request: Request) -> Actor:
    return Actor(caller.id, "token", request.client.host if request.client else None)


async def _ledger_page(session: Session, filters: LedgerFilter, page: Page) -> dict[str, Any]:
    rows = await credit.list_ledger(session, filters, limit=page.limit + 1, before_id=page.after_id)
    return page_of([ledger_view(e) for e in rows], page)


async def _balance(session: Session, user_id: int) -> User:
    user = await session.get(User, user_id, populate_existing=True)
    if user is None:
        raise NotFound("user not found")
    return user


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
    kind: Annotated[list[Kind] | None, Query()] = None,
    user_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="admins: another user")] = None,
) -> dict[str, Any]:
    """Own balance and ledger (newest first). Another user's `user_id` is 404 unless the caller is an admin."""
    target = caller.id
    if user_id is not None and user_id != caller.id:
        if not caller.is_admin:
            raise NotFound("user not found")
        target = user_id
    user = await _balance(session, target)
    ledger = await _ledger_page(session, _filters(user_id=target, kinds=tuple(kind or ())), page)
    return {"balance": user.credit_balance, "ledger": ledger}


@router.get("/admin/users/{user_id}/credit")
async def admin_user_credit(
    user_id: IdPath, session: Session, caller: Admin, page: Paging, kind: Annotated[list[Kind] | None, Query()] = None
) -> dict[str, Any]:
    user = await _balance(session, user_id)
    ledger = await _ledger_page(session, _filters(user_id=user.id, kinds=tuple(kind or ())), page)
    return {"balance": user.credit_balance, "ledger": ledger}


@router.post("/admin/users/{user_id}/credit")
async def admin_adjust_credit(
    user_id: IdPath, body: CreditOperation, session: Session, caller: AdminWriter, request: Request
) -> dict[str, Any]:
    """add / subtract / set with a reason: one transaction, the user row locked, one ledger entry (none when
    `set` names the current balance). Subtracting more than the balance is 409 `insufficient_credit`."""
    done = await credit.adjust(
        session,
        user_id=user_id,
        operation=body.operation,
        amount=body.amount,
        reason=body.reason,
        actor=_actor(caller, request),
    )
    return {"balance": done.balance, "entry": ledger_view(done.entry) if done.entry else None}


@router.post("/admin/credit/batch")
async def admin_credit_batch(
    body: CreditBatch, session: Session, caller: AdminWriter, request: Request
) -> dict[str, Any]:
    """Up to 500 users, each applied atomically on its own; the answer lists the result per user in request
    order (`ok`, `balance`, `entry`, or `error` with the code and message a single operation would give)."""
    results = await credit.batch_adjust(session, body.resolved(), actor=_actor(caller, request))
    applied = sum(1 for r in results if r["ok"])
    return {"applied": applied, "failed": len(results) - applied, "results": results}


@router.get("/admin/credit/ledger")
async def admin_ledger(
    session: Session,
    caller: Admin,
    page: Paging,
    user_id: OptId = None,
    task_id: OptId = None,
    actor_user_id: OptId = None,
    kind: Annotated[list[Kind] | None, Query()] = None,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: Annotated[AwareDatetime | None, Query()] = None,
) -> dict[str, Any]:
    """Every ledger entry, newest first, filtered by user, kind (repeatable), task, actor and created_at
    (`from` inclusive, `to` exclusive)."""
    filters = _filters(
        user_id=user_id, kinds=tuple(kind or ()), task_id=task_id, actor_user_id=actor_user_id, since=from_, until=to
    )
    return await _ledger_page(session, filters, page)


@router.get("/admin/credit/summary")
async def admin_credit_summary(
    session: Session, caller: Admin, period: Literal["24h", "7d", "30d"] = "7d"
) -> dict[str, Any]:
    """Totals granted, revoked, reserved, charged and refunded in the period, users by balance bucket, and the
    trend (hourly for 24h, daily for 7d and 30d; UTC)."""
    return await credit.summary(session, period=period, now=utc_now())
