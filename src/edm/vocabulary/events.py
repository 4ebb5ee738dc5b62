"""The normalized event vocabulary (docs/events.md#event-vocabulary) and the shape every provider's webhook parser
produces.

Pure data: no database, no network. Provider modules (`edm.providers.*`) turn their payloads into
`NormalizedEvent`s; `edm.events.ingest` stores them once and `edm.events.apply` applies them.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any


class EventType(enum.StrEnum):
    ACCEPTED = "accepted"  # provider accepted / processed / left the provider
    DELIVERED = "delivered"  # the remote server accepted it
    DEFERRED = "deferred"  # temporary delay; the provider still retries
    SOFT_BOUNCED = "soft_bounced"  # final temporary failure
    HARD_BOUNCED = "hard_bounced"  # permanent failure
    REJECTED = "rejected"  # refused before sending (dropped, blocked, policy)
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    REPLIED = "replied"
    UNKNOWN = "unknown"


class BounceClass(enum.StrEnum):
    HARD = "hard"  # the address does not exist / permanently refuses
    SOFT = "soft"  # mailbox full, greylisting expired, temporary
    BLOCK = "block"  # policy / content / reputation block: never suppresses the recipient (docs/events.md)
    SUPPRESSED = "suppressed"  # the provider's own suppression list (bounced before, unsubscribed…)
    INVALID = "invalid"  # syntactically invalid or non-existent address, refused before sending
    UNDETERMINED = "undetermined"


@dataclass(frozen=True, slots=True)
class NormalizedEvent:
    """One provider event, normalized. `raw` is the element as received (one element of a batch)."""

    event_type: EventType
    provider_event: str  # the provider's own name for it ("bounce", "Delivery", "email.sent", "status:sent")
    raw: Any
    occurred_at: dt.datetime | None = None  # the provider's event time (aware, UTC)
    # Our ids, as found in the provider's metadata (custom_args, v:, tags, Metadata, X-Mailin-custom…) or in
    # our headers echoed back. Strings exactly as received; the pipeline validates them.
    subtask_id: str | None = None
    task_id: str | None = None
    provider_message_id: str | None = None  # the id to look the SubTask up by when our id is absent
    provider_event_id: str | None = None  # the provider's unique event id (the dedupe key when present)
    recipient: str | None = None
    bounce_class: BounceClass | None = None
    smtp_code: int | None = None  # e.g. 550
    enhanced_code: str | None = None  # e.g. "5.1.1"
    reason: str | None = None  # the provider's explanation, short
    url: str | None = None  # clicked URL
    ip: str | None = None
    user_agent: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (machine open flag…)

    @property
    def has_lookup_id(self) -> bool:
        return bool(self.subtask_id or self.provider_message_id)


@dataclass(frozen=True, slots=True)
class BadElement:
    """One element of a batch that could not be parsed: stored with its error, never drops the others."""

    raw: Any
    error: str
