"""Request and response bodies of the contacts, tags and import routes.

Request models reject unknown fields (422 naming the field). Limits repeat the service rules so the
OpenAPI document shows them; the services check again for callers that are not HTTP (CLI, importer).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from edm.models.contacts import ContactStatus
from edm.paging import MAX_ID

Id = Annotated[int, Field(ge=1, le=MAX_ID)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


NoNul = AfterValidator(_no_nul)
Str7 = Annotated[str, Field(max_length=7), NoNul]
Str64 = Annotated[str, Field(max_length=64), NoNul]
Name64 = Annotated[str, Field(min_length=1, max_length=64), NoNul]
Str100 = Annotated[str, Field(max_length=100), NoNul]
Str200 = Annotated[str, Field(max_length=200), NoNul]
Email = Annotated[str, Field(min_length=1, max_length=320), NoNul]
Str500 = Annotated[str, Field(max_length=500), NoNul]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------------
# Contacts
# --------------------------------------------------------------------------------------------------------


class ContactFields(Body):
    name: Str200 | None = None
    first_name: Str200 | None = None
    last_name: Str200 | None = None
    username: Str200 | None = None
    phone: Str200 | None = None
    company: Str200 | None = None
    position: Str200 | None = None
    tiktok_unique_id: Str200 | None = None
    instagram_id: Str200 | None = None
    youtube_id: Str200 | None = None
    timezone: Str64 | None = None
    custom_attributes: dict[str, Any] | None = None


class ContactCreate(ContactFields):
    email: Email
    source: Str100 | None = "api"
    status: ContactStatus = ContactStatus.ACTIVE
    tag_ids: list[Id] = Field(default_factory=list, max_length=1000)


class ContactUpdate(ContactFields):
    """Only the fields sent are changed; `custom_attributes` replaces the whole object."""

    email: Email | None = None
    source: Str100 | None = None
    status: ContactStatus | None = None


class TagRefOut(BaseModel):
    id: int
    name: str
    parent_id: int | None
    implied: bool = Field(description="a parent implied by a child membership (never stored)")


class ContactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    email_normalized: str
    name: str | None
    first_name: str | None
    last_name: str | None
    username: str | None
    phone: str | None
    company: str | None
    position: str | None
    tiktok_unique_id: str | None
    instagram_id: str | None
    youtube_id: str | None
    source: str | None
    status: str
    custom_attributes: dict[str, Any]
    timezone: str | None
    unsubscribed_at: dt.datetime | None
    hard_bounced_at: dt.datetime | None
    complained_at: dt.datetime | None
    soft_bounce_streak: int
    imported_at: dt.datetime | None
    last_sent_at: dt.datetime | None
    last_opened_at: dt.datetime | None
    last_clicked_at: dt.datetime | None
    last_replied_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    tags: list[TagRefOut] = Field(default=[], description="explicit tags, then the parents they imply")


class TagIds(Body):
    tag_ids: list[Id] = Field(min_length=1, max_length=1000)


class TaggedOut(BaseModel):
    added: int


# --------------------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------------------


class TagCreate(Body):
    name: Name64
    color: Str7 | None = None
    description: Str500 | None = None
    parent_id: Id | None = None


class TagUpdate(Body):
    name: Name64 | None = None
    color: Str7 | None = None
    description: Str500 | None = None


class TagOut(BaseModel):
    id: int
    name: str
    description: str | None
    color: str
    parent_id: int | None
    is_split_group: bool
    member_count: int = Field(description="explicit members")
    total_member_count: int = Field(description="for a root: distinct members of itself and its children")
    created_at: dt.datetime
    updated_at: dt.datetime


class TagNodeOut(TagOut):
    children: list[TagOut] = []


class ContactIds(Body):
    contact_ids: list[Id] = Field(min_length=1, max_length=10_000)


class MembersChangedOut(BaseModel):
    added: int | None = None
    removed: int | None = None


# --------------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------------


class ImportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    status: str
    kind: str
    filename: str
    format: str
    size_bytes: int
    options: dict[str, Any]
    total_rows: int | None = Field(description="an estimate for CSV until the import completes")
    processed: int
    created: int
    updated: int
    skipped: int
    errors: int
    message: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


# --------------------------------------------------------------------------------------------------------
# Bulk actions, activity, resubscribe, tag move and split
# --------------------------------------------------------------------------------------------------------


class ContactQuery(Body):
    """The list filters as a JSON object (`attributes` = the `attr.<key>=<value>` pairs)."""

    q: Annotated[str, Field(max_length=200), NoNul] | None = None
    status: list[ContactStatus] = Field(default_factory=list, max_length=4)
    tag_ids: list[Id] = Field(default_factory=list, max_length=1000)
    explicit_only: bool = False
    untagged: bool = False
    source: Str100 | None = None
    import_id: Id | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    suppressed: bool | None = None
    attributes: dict[str, Annotated[str, Field(max_length=2000)]] = Field(default_factory=dict, max_length=20)
    engaged_since: dt.datetime | None = None


class BulkRequest(Body):
    action: Annotated[str, Field(pattern="^(tag|untag|set_status|delete)$")]
    ids: list[Id] | None = Field(default=None, min_length=1, max_length=10_000)
    filter: ContactQuery | None = None
    tag_ids: list[Id] = Field(default_factory=list, max_length=100)
    status: ContactStatus | None = None
    expected_count: Annotated[int, Field(ge=0)] | None = None


class BulkOut(BaseModel):
    action: str
    matched: int = Field(description="contacts the ids or the filter named")
    changed: int = Field(description="memberships added or removed, contacts updated or deleted")


class ResubscribeIn(Body):
    reason: Annotated[str, Field(min_length=1, max_length=500), NoNul]


class SuppressionEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    scope: str
    kind: str
    value: str
    reason: str
    created_at: dt.datetime
    expires_at: dt.datetime | None


class SuppressionStateOut(BaseModel):
    blocked: bool
    contact_reasons: list[str] = Field(description="contact_inactive, unsubscribed, hard_bounced, complained")
    entries: list[SuppressionEntryOut] = Field(
        description="list entries in force that block the address (own list first)"
    )


class ContactDetailOut(ContactOut):
    suppression: SuppressionStateOut


class ActivityItemOut(BaseModel):
    kind: str = Field(description="send | event")
    id: int = Field(description="the SubTask's or the event's id")
    at: dt.datetime
    task_id: int | None
    task_name: str | None
    subtask_id: int | None
    send_state: str | None = None
    delivery_state: str | None = None
    suppressed_reason: str | None = None
    subject: str | None = None
    sent_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    last_error: str | None = None
    open_count: int | None = None
    click_count: int | None = None
    event_type: str | None = None
    source: str | None = None
    details: dict[str, Any] | None = None


class TagMove(Body):
    parent_id: Id | None


class TagSplit(Body):
    group_count: Annotated[int, Field(ge=2, le=10)]
    ratios: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None
    group_names: list[Name64] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_ID)] | None = None
    regroup: bool = False


class SplitGroupOut(BaseModel):
    id: int
    name: str
    ratio: float
    size: int


class SplitOut(BaseModel):
    tag_id: int
    seed: int
    source_count: int
    groups: list[SplitGroupOut]
