"""Request and response bodies of the suppression API. Unknown fields are refused."""

from __future__ import annotations

import datetime as dt

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from edm.models.suppressions import Suppression
from edm.suppressions.csvio import ImportReport
from edm.suppressions.service import CheckResult


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EntryCreate(Strict):
    """Exactly one of `email` (an address) or `domain` (every address at that domain)."""

    email: str | None = Field(None, max_length=320, examples=["ann@example.com"])
    domain: str | None = Field(None, max_length=253, examples=["example.org"])
    note: str | None = Field(None, max_length=500)
    expires_at: AwareDatetime | None = Field(None, description="in the future; the entry stops blocking then")


class EntryOut(BaseModel):
    id: int
    scope: str = Field(description="global | user")
    user_id: int | None
    kind: str = Field(description="address | domain")
    value: str
    reason: str
    note: str | None
    expires_at: dt.datetime | None
    expired: bool = Field(description="past `expires_at`: the entry no longer blocks")
    source_task_id: int | None
    source_event_id: int | None
    created_by: int | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, entry: Suppression, now: dt.datetime) -> EntryOut:
        fields = {name: getattr(entry, name) for name in cls.model_fields if name != "expired"}
        return cls(**fields, expired=entry.expires_at is not None and entry.expires_at <= now)


class RemovedOut(BaseModel):
    removed: int
    contacts_cleared: int


class RowErrorOut(BaseModel):
    row: int
    column: str
    message: str


class ImportReportOut(BaseModel):
    total: int
    added: int
    existing: int
    error_count: int
    errors: list[RowErrorOut] = Field(description="the first rows with errors")

    @classmethod
    def of(cls, report: ImportReport) -> ImportReportOut:
        return cls.model_validate(report.to_dict())


class BlockingEntryOut(BaseModel):
    """An entry that blocks the address. A user sees only scope, kind and reason of a global entry."""

    scope: str
    kind: str
    reason: str
    message: str
    id: int | None = None
    value: str | None = None
    note: str | None = None
    expires_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


class ContactFlagsOut(BaseModel):
    id: int
    status: str
    unsubscribed_at: dt.datetime | None
    hard_bounced_at: dt.datetime | None
    complained_at: dt.datetime | None
    blocking: list[str] = Field(
        description="the exclusions generation would apply: contact_inactive, unsubscribed, hard_bounced, complained"
    )


class CheckOut(BaseModel):
    email: str
    blocked: bool
    entries: list[BlockingEntryOut]
    contact: ContactFlagsOut | None = None

    @classmethod
    def of(cls, result: CheckResult, *, full_global: bool) -> CheckOut:
        """A user sees only the scope, kind and reason of a global entry; admins (`full_global`) see it all."""
        contact = result.contact
        flags = None
        if contact is not None:
            flags = ContactFlagsOut(
                id=contact.id,
                status=contact.status,
                unsubscribed_at=contact.unsubscribed_at,
                hard_bounced_at=contact.hard_bounced_at,
                complained_at=contact.complained_at,
                blocking=result.contact_reasons,
            )
        entries = [_blocking_entry(entry, shown=entry.scope == "user" or full_global) for entry in result.entries]
        return cls(email=result.email, blocked=result.blocked, entries=entries, contact=flags)


def _blocking_entry(entry: Suppression, *, shown: bool) -> BlockingEntryOut:
    message = "blocked by your list" if entry.scope == "user" else "blocked by the global list"
    if not shown:
        return BlockingEntryOut(scope=entry.scope, kind=entry.kind, reason=entry.reason, message=message)
    return BlockingEntryOut(
        scope=entry.scope,
        kind=entry.kind,
        reason=entry.reason,
        message=message,
        id=entry.id,
        value=entry.value,
        note=entry.note,
        expires_at=entry.expires_at,
        created_at=entry.created_at,
    )
