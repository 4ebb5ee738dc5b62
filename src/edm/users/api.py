"""Account routes: /me, personal tokens, admin users and credit (SPEC §16.3)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update

from edm.api.deps import Admin, AdminWriter, CurrentCaller, IdPath, Paging, Session, page_of
from edm.clock import utc_now
from edm.errors import LastAdmin, NotFound
from edm.users.credit import admin_adjust
from edm.users.models import ApiToken, QuotaLedgerEntry, Role, TokenScope, User
from edm.users.service import create_token, create_user

router = APIRouter(prefix="/api/v1", tags=["users"])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCreate(Strict):
    name: str = Field(..., min_length=1, max_length=100)
    scope: Literal["read", "write"] = "write"
    expires_at: AwareDatetime | None = None


class UserCreate(Strict):
    username: str = Field(..., min_length=3, max_length=64)
    email: str = Field(..., max_length=320)
    password: str = Field(..., min_length=10, max_length=128)
    role: Literal["admin", "user", "read_only"] = "user"
    credit: int = Field(0, ge=0)
    credit_reason: str = Field("initial credit", min_length=1, max_length=500)
    timezone: str = "UTC"


class UserPatch(Strict):
    role: Literal["admin", "user", "read_only"] | None = None
    is_active: bool | None = None
    timezone: str | None = None
    low_credit_threshold: int | None = Field(None, ge=0)


class CreditOperation(Strict):
    operation: Literal["add", "subtract", "set"]
    amount: int = Field(..., ge=0)
    reason: str = Field(..., min_length=1, max_length=500)


def user_view(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "email": user.email, "role": user.role,
            "is_active": user.is_active, "timezone": user.timezone, "credit_balance": user.credit_balance,
            "low_credit_threshold": user.low_credit_threshold, "created_at": user.created_at}


def ledger_view(e: QuotaLedgerEntry) -> dict[str, Any]:
    return {"id": e.id, "user_id": e.user_id, "kind": e.kind, "amount": e.amount, "balance_after": e.balance_after,
            "task_id": e.task_id, "actor_user_id": e.actor_user_id, "reason": e.reason, "created_at": e.created_at}


@router.get("/me")
async def me(caller: CurrentCaller) -> dict[str, Any]:
    return {**user_view(caller.user), "token_scope": caller.scope}


@router.get("/me/credit")
async def my_credit(session: Session, caller: CurrentCaller, page: Paging) -> dict[str, Any]:
    return {"balance": caller.user.credit_balance, "ledger": await _ledger(session, caller.id, page)}


async def _ledger(session: Session, user_id: int, page: Any) -> dict[str, Any]:
    query = select(QuotaLedgerEntry).where(QuotaLedgerEntry.user_id == user_id).order_by(QuotaLedgerEntry.id.desc())
    if page.after_id:
        query = query.where(QuotaLedgerEntry.id < page.after_id)
    return page_of([ledger_view(e) for e in await session.scalars(query.limit(page.limit + 1))], page)


@router.get("/me/tokens")
async def my_tokens(session: Session, caller: CurrentCaller) -> list[dict[str, Any]]:
    rows = await session.scalars(select(ApiToken).where(ApiToken.user_id == caller.id, ApiToken.revoked_at.is_(None)))
    return [{"id": t.id, "name": t.name, "scope": t.scope, "prefix": t.token_prefix, "expires_at": t.expires_at,
             "last_used_at": t.last_used_at, "created_at": t.created_at} for t in rows]


@router.post("/me/tokens", status_code=201)
async def new_token(body: TokenCreate, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """The token is returned once; only its hash is stored. Read-only users get read tokens only."""
    scope = TokenScope.READ if caller.user.role == Role.READ_ONLY or caller.scope == TokenScope.READ else body.scope
    token, row = await create_token(session, user_id=caller.id, name=body.name, scope=scope,
                                    expires_at=body.expires_at)
    return {"id": row.id, "name": row.name, "scope": row.scope, "token": token}


@router.delete("/me/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: IdPath, session: Session, caller: CurrentCaller) -> Response:
    row = await session.get(ApiToken, token_id)
    if row is None or row.user_id != caller.id:
        raise NotFound("token not found")
    row.revoked_at = utc_now()
    return Response(status_code=204)


@router.get("/admin/users")
async def list_users(session: Session, caller: Admin, page: Paging) -> dict[str, Any]:
    query = select(User).order_by(User.id).limit(page.limit + 1)
    if page.after_id:
        query = query.where(User.id > page.after_id)
    return page_of([user_view(u) for u in await session.scalars(query)], page)


@router.post("/admin/users", status_code=201)
async def admin_create_user(body: UserCreate, session: Session, caller: AdminWriter) -> dict[str, Any]:
    user = await create_user(session, username=body.username, email=body.email, password=body.password,
                             role=body.role, credit=body.credit, credit_reason=body.credit_reason,
                             timezone=body.timezone, actor_user_id=caller.id)
    return user_view(user)


async def _user(session: Session, user_id: IdPath) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("user not found")
    return user


@router.get("/admin/users/{user_id}")
async def admin_get_user(user_id: IdPath, session: Session, caller: Admin) -> dict[str, Any]:
    return user_view(await _user(session, user_id))


@router.patch("/admin/users/{user_id}")
async def admin_patch_user(user_id: IdPath, body: UserPatch, session: Session, caller: AdminWriter) -> dict[str, Any]:
    user = await _user(session, user_id)
    changes = body.model_dump(exclude_unset=True)
    demoting = user.role == Role.ADMIN and (changes.get("role", Role.ADMIN) != Role.ADMIN
                                           or changes.get("is_active") is False)
    if demoting and await _active_admins(session) <= 1:
        raise LastAdmin("the last active admin cannot be demoted or deactivated")
    for key, value in changes.items():
        setattr(user, key, value)
    if changes.get("is_active") is False:
        await session.execute(update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                              .values(revoked_at=utc_now()))
    await session.flush()
    return user_view(user)


async def _active_admins(session: Session) -> int:
    return int(await session.scalar(select(func.count()).where(User.role == Role.ADMIN, User.is_active.is_(True)))
               or 0)


@router.get("/admin/users/{user_id}/credit")
async def admin_user_credit(user_id: IdPath, session: Session, caller: Admin, page: Paging) -> dict[str, Any]:
    user = await _user(session, user_id)
    return {"balance": user.credit_balance, "ledger": await _ledger(session, user.id, page)}


@router.post("/admin/users/{user_id}/credit")
async def admin_adjust_credit(user_id: IdPath, body: CreditOperation, session: Session,
                              caller: AdminWriter) -> dict[str, Any]:
    user = await _user(session, user_id)
    entry = await admin_adjust(session, user_id=user.id, operation=body.operation, amount=body.amount,
                               reason=body.reason, actor_user_id=caller.id)
    return {"balance": user.credit_balance, "entry": ledger_view(entry) if entry else None}
