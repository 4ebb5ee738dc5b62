"""What a matched event changes on its SubTask and the SubTask's contact.

Applying is monotonic: delivery_state only climbs, first_* keep the earliest time, last_* the latest, counts
only grow and each stored event adds at most one. An event never changes a task's status; it may turn
`uncertain` into `sent` (it proves acceptance).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch.queue import upsert_usage
from edm.dispatch.service_day import service_day
from edm.events.machine_hits import machine_reason
from edm.models.email_services import EmailService
from edm.system.runtime_settings import RuntimeSettings
from edm.vocabulary.events import BounceClass, EventType
from edm.vocabulary.tasks import DELIVERY_RANK, DeliveryState, SendState

# Events that prove the provider took the message: they settle an `uncertain` send.
_PROVES_ACCEPTANCE = frozenset(EventType) - {EventType.UNKNOWN}
# Rejections that say the address itself is bad: they count against the contact (bounce policy).
ADDRESS_REJECTIONS = frozenset({BounceClass.INVALID, BounceClass.SUPPRESSED, BounceClass.HARD})


def settle_uncertain(subtask: Any, event: Any, now: dt.datetime) -> bool:
    if subtask.send_state != SendState.UNCERTAIN or event.event_type not in _PROVES_ACCEPTANCE:
        return False
    subtask.send_state = SendState.SENT
    subtask.sent_at = min(event.occurred_at, now)
    subtask.last_error_class = None
    return True


async def move_usage_to_accepted(session: AsyncSession, subtask: Any, services: dict[int, EmailService]) -> None:
    """An uncertain send was counted as `uncertain` usage on its claim day; it is now `accepted`."""
    service = services.get(subtask.service_id or 0)
    if service is None or subtask.allocated_at is None:
        return
    day = service_day(subtask.allocated_at, timezone=service.timezone, reset_time=service.quota_reset_time)
    await upsert_usage(session, service_id=service.id, day=day, deltas={"uncertain": -1, "accepted": 1})


def apply_event(subtask: Any, contact: Any, event: Any, runtime: RuntimeSettings) -> None:
    kind, at = event.event_type, event.occurred_at
    if kind == EventType.DELIVERED:
        _raise_delivery(subtask, DeliveryState.DELIVERED, event)
        subtask.delivered_at = _earliest(subtask.delivered_at, at)
        if contact is not None:
            contact.soft_bounce_streak = 0
    elif kind == EventType.DEFERRED:
        _raise_delivery(subtask, DeliveryState.DEFERRED, event)
    elif kind == EventType.SOFT_BOUNCED:
        if _raise_delivery(subtask, DeliveryState.SOFT_BOUNCED, event) and contact is not None:
            contact.soft_bounce_streak = (contact.soft_bounce_streak or 0) + 1  # once per SubTask
    elif kind == EventType.HARD_BOUNCED:
        _raise_delivery(subtask, DeliveryState.HARD_BOUNCED, event)
        subtask.bounced_at = _earliest(subtask.bounced_at, at)
        # A permanent policy/content block (SMTP 5.7.x) is the sender's problem, not the address's.
        if contact is not None and (event.details or {}).get("bounce_class") != BounceClass.BLOCK:
            contact.hard_bounced_at = _earliest(contact.hard_bounced_at, at)
    elif kind == EventType.REJECTED:
        _raise_delivery(subtask, DeliveryState.REJECTED, event)
        # Policy and content blocks say nothing about the address: only a bad or provider-suppressed
        # address counts against the contact.
        if contact is not None and (event.details or {}).get("bounce_class") in ADDRESS_REJECTIONS:
            contact.hard_bounced_at = _earliest(contact.hard_bounced_at, at)
    elif kind == EventType.COMPLAINED:
        _raise_delivery(subtask, DeliveryState.COMPLAINED, event)
        subtask.complained_at = _earliest(subtask.complained_at, at)
        subtask.delivered_at = _earliest(subtask.delivered_at, at)  # a complaint implies delivery
        if contact is not None:
            contact.complained_at = _earliest(contact.complained_at, at)
    elif kind == EventType.UNSUBSCRIBED:
        subtask.unsubscribed_at = _earliest(subtask.unsubscribed_at, at)
        if contact is not None:
            contact.unsubscribed_at = _earliest(contact.unsubscribed_at, at)
    elif kind == EventType.REPLIED:
        subtask.replied_at = _earliest(subtask.replied_at, at)
        if contact is not None:
            contact.last_replied_at = _latest(contact.last_replied_at, at)
    elif kind in (EventType.OPENED, EventType.CLICKED):
        _apply_engagement(subtask, contact, event, runtime)


def _apply_engagement(subtask: Any, contact: Any, event: Any, runtime: RuntimeSettings) -> None:
    """EDM's own tracking hits: machine hits are counted apart; any hit implies delivery. The
    classification is written into the event (`details.machine`, `details.machine_reason`) so reports and the
    per-recipient view show why a hit did not count as a person's."""
    at = event.occurred_at
    details = dict(event.details or {})
    reason = machine_reason(event, subtask, runtime)
    if reason is None and details.get("machine"):  # flagged before applying: keep the flag and its reason
        reason = str(details.get("machine_reason") or "flagged")
    machine = reason is not None
    event.details = {**details, "machine": machine, "machine_reason": reason}
    _raise_delivery(subtask, DeliveryState.DELIVERED, event)
    subtask.delivered_at = _earliest(subtask.delivered_at, at)
    if event.event_type == EventType.OPENED:
        if machine:
            subtask.machine_open_count = (subtask.machine_open_count or 0) + 1
            return
        subtask.open_count = (subtask.open_count or 0) + 1
        subtask.first_opened_at = _earliest(subtask.first_opened_at, at)
        subtask.last_opened_at = _latest(subtask.last_opened_at, at)
        if contact is not None:
            contact.last_opened_at = _latest(contact.last_opened_at, at)
        return
    if machine:
        subtask.machine_click_count = (subtask.machine_click_count or 0) + 1
        return
    subtask.click_count = (subtask.click_count or 0) + 1
    subtask.first_clicked_at = _earliest(subtask.first_clicked_at, at)
    subtask.last_clicked_at = _latest(subtask.last_clicked_at, at)
    if contact is not None:
        contact.last_clicked_at = _latest(contact.last_clicked_at, at)


def _raise_delivery(subtask: Any, state: DeliveryState, event: Any) -> bool:
    """Move delivery_state up to `state` if that is a higher rank; True when it moved."""
    current = DeliveryState(subtask.delivery_state or DeliveryState.NONE)
    if DELIVERY_RANK[state] <= DELIVERY_RANK[current]:
        return False
    subtask.delivery_state = state
    reason = (event.details or {}).get("reason")
    if reason and state != DeliveryState.DELIVERED:
        subtask.delivery_detail = str(reason)[:500]
    return True


def _earliest(current: dt.datetime | None, new: dt.datetime) -> dt.datetime:
    return new if current is None or new < current else current


def _latest(current: dt.datetime | None, new: dt.datetime) -> dt.datetime:
    return new if current is None or new > current else current
