"""Reading the event store (SPEC §16.3): a user's own events, and the admin view of every event with the
unmatched ones (what arrived that EDM could not attribute, and why)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from edm.api.deps import Admin, CurrentCaller, IdPath, IdQuery, Paging, Session
from edm.errors import NotFound
from edm.models.events import Event, MatchReason, MatchStatus
from edm.paging import page_of
from edm.vocabulary.events import EventType

router = APIRouter(prefix="/api/v1", tags=["events"])

EventTypeQuery = Annotated[EventType | None, Query(description="normalized event type (§9.3)")]
Source = Annotated[str | None, Query(max_length=16, description="provider code, tracking, dsn or arf")]


def event_view(event: Event, *, with_raw: bool = False) -> dict[str, Any]:
    view = {
        "id": event.id,
        "source": event.source,
        "service_id": event.service_id,
        "event_type": event.event_type,
        "provider_event": event.provider_event,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at,
        "task_id": event.task_id,
        "subtask_id": event.subtask_id,
        "match_status": event.match_status,
        "match_reason": event.match_reason,
        "provider_message_id": event.provider_message_id,
        "recipient": event.recipient,
        "details": event.details,
        "processed_at": event.processed_at,
        "processing_error": event.processing_error,
    }
    if with_raw:
        view.update(raw=event.raw, raw_truncated=event.raw_truncated, subtask_ref=event.subtask_ref)
    return view


@router.get("/events")
async def list_events(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    task_id: IdQuery = None,
    subtask_id: IdQuery = None,
    event_type: EventTypeQuery = None,
    source: Source = None,
    user_id: IdQuery = None,
) -> dict[str, Any]:
    """Events attributed to the caller's SubTasks, oldest first (admins may pass `user_id`)."""
    query = _filtered(
        select(Event).where(Event.user_id == caller.owner_filter(user_id)),
        task_id=task_id,
        subtask_id=subtask_id,
        event_type=event_type,
        source=source,
    )
    return page_of([event_view(e) for e in await _page(session, query, page)], page)


@router.get("/admin/events")
async def admin_events(
    session: Session,
    caller: Admin,
    page: Paging,
    match_status: MatchStatus | None = None,
    match_reason: MatchReason | None = None,
    service_id: IdQuery = None,
    task_id: IdQuery = None,
    event_type: EventTypeQuery = None,
    source: Source = None,
) -> dict[str, Any]:
    """Every event; `?match_status=unmatched` lists what could not be attributed, with the reason."""
    query = _filtered(
        select(Event),
        task_id=task_id,
        event_type=event_type,
        source=source,
        match_status=match_status,
        match_reason=match_reason,
        service_id=service_id,
    )
    return page_of([event_view(e) for e in await _page(session, query, page)], page)


@router.get("/admin/events/{event_id}")
async def admin_event(event_id: IdPath, session: Session, caller: Admin) -> dict[str, Any]:
    """One event with the payload as received (one element of a batch, ≤ 64 KB)."""
    event = await session.get(Event, event_id)
    if event is None:
        raise NotFound("event not found")
    return event_view(event, with_raw=True)


def _filtered(query: Any, **filters: Any) -> Any:
    """Equality filters on Event columns; None means "any"."""
    for column, value in filters.items():
        if value is not None:
            query = query.where(getattr(Event, column) == value)
    return query


async def _page(session: Any, query: Any, page: Any) -> list[Event]:
    if page.after_id is not None:
        query = query.where(Event.id > page.after_id)
    return list(await session.scalars(query.order_by(Event.id).limit(page.limit + 1)))
