"""Reading the event store: a user's own events, and the admin view of every event with the unmatched ones
(what arrived that EDM could not attribute, and why)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession

from edm.api.deps import Admin, CurrentCaller, IdPath, IdQuery, Paging, Session
from edm.events.queries import EventFilter, events_page, get_event
from edm.events.schemas import EventDetailOut, EventOut
from edm.models.events import MatchReason, MatchStatus
from edm.paging import Page, PageOut, page_of
from edm.vocabulary.events import EventType

router = APIRouter(prefix="/api/v1", tags=["events"])

EventTypeQuery = Annotated[EventType | None, Query(description="normalized event type")]
Source = Annotated[str | None, Query(max_length=16, description="provider code, tracking, dsn or arf")]


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
) -> PageOut[EventOut]:
    """Events attributed to the caller's SubTasks, oldest first (admins may pass `user_id`)."""
    filters = EventFilter(
        user_id=caller.owner_filter(user_id),
        task_id=task_id,
        subtask_id=subtask_id,
        event_type=event_type,
        source=source,
    )
    return await _page(session, filters, page)


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
) -> PageOut[EventOut]:
    """Every event; `?match_status=unmatched` lists what could not be attributed, with the reason."""
    filters = EventFilter(
        task_id=task_id,
        event_type=event_type,
        source=source,
        match_status=match_status,
        match_reason=match_reason,
        service_id=service_id,
    )
    return await _page(session, filters, page)


@router.get("/admin/events/{event_id}")
async def admin_event(event_id: IdPath, session: Session, caller: Admin) -> EventDetailOut:
    """One event with the payload as received (one element of a batch, ≤ 64 KB)."""
    return EventDetailOut.model_validate(await get_event(session, event_id))


async def _page(session: AsyncSession, filters: EventFilter, page: Page) -> PageOut[EventOut]:
    rows = await events_page(session, filters, page)
    return PageOut[EventOut].model_validate(page_of([EventOut.model_validate(e) for e in rows], page))
