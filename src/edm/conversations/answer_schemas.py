"""Request and response bodies of the answering routes (docs/conversations-answers.md, docs/api.md).

Request models reject unknown fields (422 naming the field); the responses are the dictionaries `answers` builds,
which the CLI prints too.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edm.conversations.answers import MAX_HTML, MAX_SUBJECT, MAX_TEXT
from edm.paging import MAX_ID

Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplyBody(_Strict):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT, description="the answer as plain text (required)")
    html: str | None = Field(
        None, max_length=MAX_HTML, description="an HTML version; without it the text is sent with a plain HTML part"
    )
    message_id: Id | None = Field(
        None, description="the message of this conversation answered; default: its newest inbound message"
    )


class StartBody(_Strict):
    contact_id: Id = Field(..., description="one of your contacts: the conversation's outside address")
    sender_id: Id = Field(..., description="one of your senders: the From local part and display name")
    subject: str = Field(..., min_length=1, max_length=MAX_SUBJECT)
    text: str = Field(..., min_length=1, max_length=MAX_TEXT)
    html: str | None = Field(None, max_length=MAX_HTML)


class RouteOut(BaseModel):
    conversation_id: int | None = None
    our_address: str | None = None
    tier: str = Field(description="last_service, same_domain, other_domain, or none (nothing can send now)")
    service_id: int | None = Field(description="the service the answer would go through now")
    service: str | None = Field(description="its label")
    domain: str | None = Field(description="its domain: the From address's domain")
    from_address: str
    same_domain: bool = Field(description="the From address keeps the conversation's domain")
    warning: str | None = Field(description="what the console shows before sending, e.g. that the From domain changes")


class AnswerOut(BaseModel):
    id: int
    conversation_id: int
    direction: str
    task_id: int | None
    subtask_id: int | None
    message_id: str = Field(description="our Message-ID without angle brackets: `<SubTask public id>@<domain>`")
    in_reply_to: str | None
    references: list[str]
    from_address: str = Field(description="the From address (as sent, once sent)")
    from_name: str | None
    to_address: str
    subject: str
    text: str | None
    html: str | None
    created_at: dt.datetime
    state: str = Field(description="pending, sending, sent, delivered, hard_bounced…, failed, uncertain")
    send_state: str | None
    delivery_state: str | None
    settled: bool = Field(description="no longer pending, in flight or uncertain")
    sent_at: dt.datetime | None
    failed_at: dt.datetime | None
    attempts: int
    error_code: str | None
    error: str | None
    service_id: int | None
    service: str | None = Field(description="the label of the service that sent it (or is sending it)")
    retryable: bool = Field(description="the send failed: POST …/retry queues it again")
    from_domain_changed: bool = Field(description="the From domain differs from the conversation's address")
    route: RouteOut | None = Field(description="where the answer was queued to go (answers of POST)")
