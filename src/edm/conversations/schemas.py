"""API answers and bodies of conversations and unrouted inbound mail (docs/conversations.md#api)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edm.paging import MAX_ID, PageOut

ConversationStatusName = Literal["active", "closed", "archived"]


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    status: str
    our_address: str
    their_address: str
    their_name: str | None
    contact_id: int | None
    subject: str
    last_message_at: dt.datetime | None
    message_count: int
    unread_count: int
    task_id: int | None = Field(description="the campaign the conversation began as a reply to, if any")
    subtask_id: int | None
    created_at: dt.datetime


class ConversationPageOut(PageOut[ConversationOut]):
    unread_conversations: int = Field(description="the caller's conversations with unread messages (all pages)")
    unread_messages: int = Field(description="unread inbound messages over all the caller's conversations")


class AttachmentOut(BaseModel):
    index: int = Field(description="what GET …/attachments/{index} takes")
    name: str | None
    type: str
    size: int
    inline: bool
    content_id: str | None


class MessageOut(BaseModel):
    id: int
    direction: Literal["inbound", "outbound"]
    message_id: str
    in_reply_to: str | None
    from_address: str
    from_name: str | None
    to_address: str
    subject: str
    text_body: str | None
    has_html: bool = Field(description="GET …/messages/{id}/html shows it, sanitized")
    is_auto_reply: bool
    source: str | None
    service_id: int | None
    received_at: dt.datetime | None
    sent_at: dt.datetime | None = Field(description="inbound: its Date header; outbound: when it was sent")
    read_at: dt.datetime | None
    attachments: list[AttachmentOut]
    task_id: int | None
    subtask_id: int | None
    send_state: str | None = Field(default=None, description="outbound: its SubTask's send state")
    last_error: str | None = Field(default=None, description="outbound: the last send error, if any")


class ConversationDetailOut(ConversationOut):
    messages: list[MessageOut]


class ConversationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: ConversationStatusName


class UnroutedOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    received_at: dt.datetime
    source: str
    service_id: int | None
    from_address: str | None
    to_address: str | None
    subject: str | None
    message_id: str
    reason: str
    error: str | None = Field(default=None, description="reason `unreadable`: what failed each time it was handled")
    resolved_at: dt.datetime | None
    resolution: str | None
    assigned_user_id: int | None
    resolved_by: int | None


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=MAX_ID)


class AssignOut(BaseModel):
    unrouted: UnroutedOut
    status: str = Field(description="stored, or duplicate when that user already has this message")
    conversation_id: int | None
    message_id: int | None
