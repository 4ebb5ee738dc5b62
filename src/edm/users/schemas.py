"""Request and response bodies of the account and credit API: login and sessions, the caller's own account and
tokens, admin user management, credit operations and reports. Unknown request fields are refused."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from edm.errors import EdmError
from edm.models.users import ConsoleSession
from edm.paging import MAX_ID, PageOut
from edm.users.credit import BATCH_MAX, MAX_CREDIT, BatchItem, BatchResult
from edm.users.sessions import expiry_of

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
RoleName = Literal["admin", "user", "read_only"]
LocaleName = Literal["en", "zh_Hans"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------------


class LoginBody(Strict):
    username: str = Field(..., min_length=1, max_length=320, description="username or email, any case")
    password: str = Field(..., min_length=1, max_length=1024)


class PasswordChange(Strict):
    current_password: str = Field(..., min_length=1, max_length=1024)
    new_password: str = Field(..., min_length=10, max_length=128)


class TokenCreate(Strict):
    name: str = Field(..., min_length=1, max_length=100)
    scope: Literal["read", "write"] = "write"
    expires_at: AwareDatetime | None = None


class UserCreate(Strict):
    username: str = Field(..., min_length=3, max_length=64)
    email: str = Field(..., max_length=320)
    password: str = Field(..., min_length=10, max_length=128)
    role: RoleName = "user"
    credit: int = Field(0, ge=0)
    credit_reason: str = Field("initial credit", min_length=1, max_length=500)
    timezone: str = "UTC"


class UserPatch(Strict):
    email: str | None = Field(None, max_length=320)
    role: RoleName | None = None
    is_active: bool | None = None
    timezone: str | None = None
    low_credit_threshold: int | None = Field(None, ge=0)
    locale: LocaleName | None = Field(None, description="the console's language; null: the browser's")


class ProfilePatch(Strict):
    """What users change of their own account."""

    timezone: str | None = Field(None, description="IANA time zone name: how times are shown")
    locale: LocaleName | None = Field(None, description="the console's language; null: the browser's")


class PasswordReset(Strict):
    password: str = Field(..., min_length=10, max_length=128)
    must_change_password: bool = False


LedgerKindName = Literal["grant", "revoke", "set", "reserve", "charge", "refund"]
Operation = Literal["add", "subtract", "set"]
Amount = Annotated[int, Field(ge=0, le=MAX_CREDIT, description="≥ 0; > 0 for add and subtract")]
Reason = Annotated[str, Field(min_length=1, max_length=500)]


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


# --------------------------------------------------------------------------------------------------------
# Accounts, sessions and tokens
# --------------------------------------------------------------------------------------------------------


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str
    role: str = Field(description="admin, user or read_only")
    is_active: bool
    timezone: str = Field(description="IANA time zone name")
    locale: str | None = Field(description="the console's language (en, zh_Hans); null: the browser's")
    credit_balance: int
    low_credit_threshold: int | None = Field(description="the dashboard warns below this balance")
    must_change_password: bool
    last_login_at: dt.datetime | None
    created_at: dt.datetime


class MeOut(UserOut):
    token_scope: str = Field(description="read or write: what this request's credentials may do")


class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str = Field(description="send it in X-CSRF-Token with every write made with the session cookie")
    must_change_password: bool


class PasswordChangedOut(BaseModel):
    changed: bool
    sessions_revoked: int = Field(description="the caller's other console sessions that were ended")


class PasswordResetOut(UserOut):
    sessions_revoked: int


class SessionOut(BaseModel):
    id: int
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime = Field(description="when the session ends unless used again (idle or absolute limit)")
    ip: str | None
    user_agent: str | None
    current: bool = Field(description="the session making this request")

    @classmethod
    def of(cls, row: ConsoleSession, current: int | None) -> SessionOut:
        return cls(
            id=row.id,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            expires_at=expiry_of(row),
            ip=row.ip,
            user_agent=row.user_agent,
            current=row.id == current,
        )


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    scope: str = Field(description="read or write")
    prefix: str = Field(validation_alias="token_prefix", description="the token's first characters, to recognise it")
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    created_at: dt.datetime


class TokenCreatedOut(BaseModel):
    id: int
    name: str
    scope: str
    token: str = Field(description="the token itself, shown this once (only its hash is stored)")


# --------------------------------------------------------------------------------------------------------
# Credit
# --------------------------------------------------------------------------------------------------------


class LedgerEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    kind: str = Field(description="grant, revoke, set, reserve, charge or refund")
    amount: int = Field(description="the change of the balance (negative: taken)")
    balance_after: int
    task_id: int | None
    actor_user_id: int | None = Field(description="the admin who made it (null: the CLI or the system)")
    reason: str
    created_at: dt.datetime


class CreditOut(BaseModel):
    balance: int
    ledger: PageOut[LedgerEntryOut] = Field(description="newest first")


class AdjustedOut(BaseModel):
    balance: int
    entry: LedgerEntryOut | None = Field(description="null when `set` named the current balance")


class BatchErrorOut(BaseModel):
    """What a single operation would have answered; refusals may carry more fields (e.g. `needed`,
    `available` for insufficient_credit)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class BatchAppliedOut(BaseModel):
    user_id: int
    ok: Literal[True]
    balance: int
    entry: LedgerEntryOut | None


class BatchRefusedOut(BaseModel):
    user_id: int
    ok: Literal[False]
    error: BatchErrorOut


def batch_result_out(result: BatchResult) -> BatchAppliedOut | BatchRefusedOut:
    if result.error is not None:
        return BatchRefusedOut(user_id=result.user_id, ok=False, error=batch_error_out(result.error))
    assert result.adjusted is not None
    entry = result.adjusted.entry
    return BatchAppliedOut(
        user_id=result.user_id,
        ok=True,
        balance=result.adjusted.balance,
        entry=LedgerEntryOut.model_validate(entry) if entry is not None else None,
    )


def batch_error_out(error: EdmError) -> BatchErrorOut:
    return BatchErrorOut(code=error.code, message=error.message, **error.extra)


class BatchOut(BaseModel):
    applied: int
    failed: int
    results: list[BatchAppliedOut | BatchRefusedOut] = Field(description="one per item, in request order")


class CreditTotalsOut(BaseModel):
    """Credits moved, as positive numbers (a `set` counts as granted or revoked by its direction)."""

    granted: int
    revoked: int
    reserved: int
    charged: int
    refunded: int


class TrendPointOut(BaseModel):
    start: dt.datetime = Field(description="the hour or day (UTC) the point covers")
    granted: int
    revoked: int
    reserved: int
    charged: int
    refunded: int


class TrendOut(BaseModel):
    unit: str = Field(description="hour or day")
    points: list[TrendPointOut]


class BalanceBucketsOut(BaseModel):
    """How many users hold a balance in each range."""

    model_config = ConfigDict(populate_by_name=True)

    zero: int = Field(alias="0")
    up_to_100: int = Field(alias="1-100")
    up_to_1000: int = Field(alias="101-1000")
    above_1000: int = Field(alias=">1000")


class CreditSummaryOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    period: str = Field(description="24h, 7d or 30d")
    since: dt.datetime = Field(alias="from")
    to: dt.datetime
    totals: CreditTotalsOut
    entries: CreditTotalsOut = Field(description="the number of ledger entries behind each total")
    users_by_balance: BalanceBucketsOut
    trend: TrendOut
