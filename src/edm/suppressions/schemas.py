"""Request and response bodies of the suppression API (SPEC §10.5, §16.3). Unknown fields are refused."""

from __future__ import annotations

import datetime as dt

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


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
    scope: str  # global | user
    user_id: int | None
    kind: str  # address | domain
    value: str
    reason: str
    note: str | None
    expires_at: dt.datetime | None
    expired: bool
    source_task_id: int | None
    source_event_id: int | None
    created_by: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


class EntryPage(BaseModel):
    items: list[EntryOut]
    next_cursor: str | None
    total: int | None = None


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
    errors: list[RowErrorOut]


class BlockingEntry(BaseModel):
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


class ContactFlags(BaseModel):
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
    entries: list[BlockingEntry]
    contact: ContactFlags | None = None
