"""Answers of the event-store API (what arrived from providers, reports and EDM's tracking, and how each event
was matched) and of the provider webhook endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventOut(BaseModel):
    """One stored event and how it was matched to a SubTask."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    source: str = Field(description="provider code, tracking, dsn or arf")
    service_id: int | None
    event_type: str = Field(description="normalized event type")
    provider_event: str | None = Field(description="the provider's own name for the event")
    occurred_at: dt.datetime
    received_at: dt.datetime
    task_id: int | None
    subtask_id: int | None
    match_status: str = Field(description="pending, matched, unmatched or ignored")
    match_reason: str | None = Field(description="why it is unmatched or ignored")
    provider_message_id: str | None
    recipient: str | None
    details: dict[str, Any]
    processed_at: dt.datetime | None
    processing_error: str | None


class EventDetailOut(EventOut):
    """One event with the payload as received."""

    raw: Any = Field(description="the payload as received (one element of a batch, at most 64 KB)")
    raw_truncated: bool
    subtask_ref: str | None = Field(description="the SubTask id the payload carried, as received")


class WebhookStoredOut(BaseModel):
    """What a webhook request stored."""

    received: int = Field(description="events in the request")
    stored: int = Field(description="events stored now")
    duplicates: int = Field(description="events stored before (a redelivery)")
    bad: int = Field(description="elements that could not be parsed, kept for the admin view")
    queued: int = Field(
        default=0,
        description="inbound mail (a reply, or a report on the SMTP endpoint) accepted and queued for the worker, "
        "which threads it to its conversation or applies the report within seconds",
    )


class InboundReceivedOut(BaseModel):
    """What an inbound-mail webhook request handed to conversations."""

    received: int = Field(description="messages in the request, one per envelope recipient")
    queued: int = Field(
        default=0, description="messages accepted and queued for the worker, which threads them within seconds"
    )


class WebhookControlOut(BaseModel):
    """The answer to a provider's control message (a subscription confirmation), which carries no event."""

    control: str
