"""One-click unsubscribe (the link in every mail's `List-Unsubscribe` header): what the POST does, in the
caller's transaction.

While the SubTask exists, an `unsubscribed` event (source `tracking`, once per SubTask: repeating changes
nothing) is stored and applied at once, so the next claim already skips the address. When the task was
deleted, the SubTask's tombstone stands in: the suppression policy and the contact's flag are applied directly
(idempotent as well)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from edm.events import apply, ingest
from edm.system import runtime_settings
from edm.tracking import tombstones
from edm.tracking.recipients import Recipient
from edm.vocabulary.events import EventType, NormalizedEvent


async def unsubscribe(
    session: AsyncSession, recipient: Recipient, *, now: dt.datetime, simulated_matches_any: bool
) -> None:
    if recipient.tombstone is not None:
        runtime = await runtime_settings.load(session)
        await tombstones.unsubscribe(session, recipient.tombstone, now=now, scope=runtime.suppression_unsubscribe_scope)
        return
    event = NormalizedEvent(
        event_type=EventType.UNSUBSCRIBED,
        provider_event="one_click",
        raw={"via": "u"},
        occurred_at=now,
        subtask_id=recipient.public_id,
        recipient=recipient.email,
        provider_event_id=f"unsubscribe:{recipient.public_id}",
    )
    inserted = await ingest.store_returning_ids(session, [ingest.event_row("tracking", None, event, now=now)])
    if inserted:
        await apply.apply_pending(
            session, now=now, only_ids=inserted, limit=len(inserted), simulated_matches_any=simulated_matches_any
        )
