"""One contact's detail beyond its fields (docs/contacts.md#one-contact): the suppression state with the blocking
entries, the activity timeline (its SubTasks and their events, newest first) and resubscribe.

Conversations (planned, docs/overview.md#conversations-replies) have no tables yet; the timeline gains them when they
exist.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from sqlalchemy import String, and_, delete, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.contacts.schemas import ActivityItemOut, ContactDetailOut, SuppressionEntryOut, SuppressionStateOut
from edm.contacts.service import contact_views, get_contact
from edm.db.types import UTCDateTime
from edm.errors import BadInput, Conflict
from edm.models.contacts import Contact
from edm.models.events import Event
from edm.models.suppressions import Suppression
from edm.models.tasks import SubTask, Task
from edm.paging import MAX_ID, PageOut
from edm.suppressions.service import GLOBAL, SuppressionList, contact_reasons, in_force
from edm.system.service import Actor, audit

KIND_RANK = {"event": 1, "send": 0}  # at equal times an event is newer than the send it belongs to
EVENT_DETAIL_KEYS = ("bounce_class", "code", "reason", "url", "machine", "machine_reason", "diagnostic")


# --------------------------------------------------------------------------------------------------------
# Detail and suppression state
# --------------------------------------------------------------------------------------------------------


async def contact_detail(session: AsyncSession, contact: Contact) -> ContactDetailOut:
    """The contact with its explicit and implied tags and its suppression state (blocking entries first)."""
    view = (await contact_views(session, [contact]))[0]
    return ContactDetailOut(**dict(view), suppression=await suppression_state(session, contact))


async def suppression_state(session: AsyncSession, contact: Contact) -> SuppressionStateOut:
    """Entries in force that block the address (own list first, then global) and the contact's own flags."""
    now = utc_now()
    lists = or_(and_(*GLOBAL.holds()), and_(*SuppressionList.of_user(contact.user_id).holds()))
    entries = list(
        await session.scalars(
            select(Suppression)
            .where(
                lists,
                in_force(now),
                or_(
                    and_(Suppression.kind == "address", Suppression.value == contact.email_normalized),
                    and_(Suppression.kind == "domain", Suppression.value == contact.email_domain),
                ),
            )
            .order_by(Suppression.scope.desc(), Suppression.id)
        )
    )
    reasons = contact_reasons(contact)
    return SuppressionStateOut(
        blocked=bool(entries or reasons),
        contact_reasons=reasons,
        entries=[SuppressionEntryOut.model_validate(e) for e in entries],
    )


# --------------------------------------------------------------------------------------------------------
# Resubscribe
# --------------------------------------------------------------------------------------------------------


async def resubscribe(session: AsyncSession, *, user_id: int, contact_id: int, reason: str, actor: Actor) -> Contact:
    """Clear `unsubscribed_at` and the user's own `unsubscribed` entry for the address; audited. 409 when the
    contact is not unsubscribed. Global entries and other reasons (bounces, complaints) stay."""
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    text = reason.strip()
    if not text or len(text) > 500 or "\x00" in text:
        raise BadInput.field("reason", "is required: 1 to 500 characters")
    own = SuppressionList.of_user(user_id)
    entry_ids = list(
        await session.scalars(
            select(Suppression.id).where(
                *own.holds(),
                Suppression.kind == "address",
                Suppression.value == contact.email_normalized,
                Suppression.reason == "unsubscribed",
            )
        )
    )
    if contact.unsubscribed_at is None and not entry_ids:
        raise Conflict(
            "the contact is not unsubscribed", details=[{"field": "unsubscribed_at", "message": "already subscribed"}]
        )
    previous = contact.unsubscribed_at
    if entry_ids:
        await session.execute(delete(Suppression).where(Suppression.id.in_(entry_ids)))
    contact.unsubscribed_at = None
    contact.updated_at = utc_now()
    await audit(
        session,
        actor,
        "contact.resubscribe",
        target_type="contact",
        target_id=contact.id,
        details={
            "user_id": user_id,
            "email": contact.email_normalized,
            "reason": text,
            "suppressions_removed": entry_ids,
            "unsubscribed_at": previous.isoformat() if previous else None,
        },
    )
    await session.refresh(contact)  # updated_at as stored, loaded now rather than lazily on a later read
    return contact


# --------------------------------------------------------------------------------------------------------
# Activity timeline
# --------------------------------------------------------------------------------------------------------


async def activity(
    session: AsyncSession, *, user_id: int, contact_id: int, limit: int, cursor: str | None
) -> PageOut[ActivityItemOut]:
    """One page of the contact's SubTasks and their events, newest first, and the next cursor."""
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    timeline = _timeline(contact).subquery()
    rank = timeline.c.rank
    query = select(timeline.c.kind, timeline.c.id, timeline.c.at)
    after = _decode(cursor)
    if after is not None:
        at, r, item_id = after
        at_value = literal(at, UTCDateTime())
        same_time = and_(timeline.c.at == at_value, or_(rank < r, and_(rank == r, timeline.c.id < item_id)))
        query = query.where(or_(timeline.c.at < at_value, same_time))
    rows = (
        await session.execute(query.order_by(timeline.c.at.desc(), rank.desc(), timeline.c.id.desc()).limit(limit + 1))
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = await _items(session, [(kind, item_id) for kind, item_id, _ in rows])
    for item, row in zip(items, rows, strict=True):
        item["at"] = _aware(row.at)
    next_cursor = _encode(rows[-1]) if more and rows else None
    return PageOut[ActivityItemOut](items=[ActivityItemOut(**item) for item in items], next_cursor=next_cursor)


def _timeline(contact: Contact) -> Any:
    """UNION ALL of (kind, rank, id, at). SubTasks are found through the user's tasks and the unique
    (task_id, contact_id) index (there is no index on contact_id alone); events through ix_events_subtask_id."""
    epoch = literal(dt.datetime(1970, 1, 1, tzinfo=dt.UTC), UTCDateTime())
    sent_time = func.coalesce(SubTask.sent_at, SubTask.failed_at, Task.generated_at, Task.created_at, epoch)
    subtasks = (
        select(SubTask.id)
        .join(Task, Task.id == SubTask.task_id)
        .where(Task.user_id == contact.user_id, SubTask.contact_id == contact.id)
    )
    sends = (
        select(
            literal("send", String).label("kind"),
            literal(KIND_RANK["send"]).label("rank"),
            SubTask.id.label("id"),
            sent_time.label("at"),
        )
        .join(Task, Task.id == SubTask.task_id)
        .where(Task.user_id == contact.user_id, SubTask.contact_id == contact.id)
    )
    events = select(
        literal("event", String).label("kind"),
        literal(KIND_RANK["event"]).label("rank"),
        Event.id.label("id"),
        Event.occurred_at.label("at"),
    ).where(Event.subtask_id.in_(subtasks), Event.user_id == contact.user_id)
    return union_all(sends, events)


async def _items(session: AsyncSession, keys: list[tuple[str, int]]) -> list[dict[str, Any]]:
    send_ids = [i for kind, i in keys if kind == "send"]
    event_ids = [i for kind, i in keys if kind == "event"]
    rows = (
        (
            await session.execute(
                select(SubTask, Task.name).join(Task, Task.id == SubTask.task_id).where(SubTask.id.in_(send_ids))
            )
        ).all()
        if send_ids
        else []
    )
    sends = {sub.id: (sub, name) for sub, name in rows}
    events = {e.id: e for e in await session.scalars(select(Event).where(Event.id.in_(event_ids)))} if event_ids else {}
    names = await _task_names(session, [e.task_id for e in events.values() if e.task_id is not None])
    out = []
    for kind, item_id in keys:
        if kind == "send":
            sub, name = sends[item_id]
            out.append(_send_item(sub, name))
        else:
            event = events[item_id]
            out.append(_event_item(event, names.get(event.task_id) if event.task_id else None))
    return out


async def _task_names(session: AsyncSession, task_ids: list[int]) -> dict[int, str]:
    if not task_ids:
        return {}
    return {i: n for i, n in (await session.execute(select(Task.id, Task.name).where(Task.id.in_(task_ids)))).all()}


def _send_item(sub: SubTask, task_name: str) -> dict[str, Any]:
    return {
        "kind": "send",
        "id": sub.id,
        "task_id": sub.task_id,
        "task_name": task_name,
        "subtask_id": sub.id,
        "send_state": sub.send_state,
        "delivery_state": sub.delivery_state,
        "suppressed_reason": sub.suppressed_reason,
        "subject": sub.subject_sent,
        "sent_at": sub.sent_at,
        "delivered_at": sub.delivered_at,
        "failed_at": sub.failed_at,
        "last_error": sub.last_error,
        "open_count": sub.open_count,
        "click_count": sub.click_count,
    }


def _event_item(event: Event, task_name: str | None) -> dict[str, Any]:
    details = event.details if isinstance(event.details, dict) else {}
    return {
        "kind": "event",
        "id": event.id,
        "at": event.occurred_at,
        "task_id": event.task_id,
        "task_name": task_name,
        "subtask_id": event.subtask_id,
        "event_type": event.event_type,
        "source": event.source,
        "details": {k: details[k] for k in EVENT_DETAIL_KEYS if k in details},
    }


def _encode(row: Any) -> str:
    kind, item_id, at = row
    body = {"after": item_id, "at": _aware(at).isoformat(), "rank": KIND_RANK[kind]}
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, str):  # SQLite returns the UNION's column as stored text
        value = dt.datetime.fromisoformat(value)
    moment: dt.datetime = value
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def _decode(cursor: str | None) -> tuple[dt.datetime, int, int] | None:
    if not cursor:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
        after, rank, at = body["after"], body["rank"], dt.datetime.fromisoformat(body["at"])
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (after, rank)) or at.tzinfo is None:
            raise ValueError
        if not 0 <= after <= MAX_ID:
            raise ValueError
        return at, rank, after
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise BadInput.field("cursor", "is not a valid cursor") from None
