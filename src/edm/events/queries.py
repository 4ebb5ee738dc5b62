"""Reading the event store: a user's own events, the admin view of every event (with the unmatched ones: what
arrived that EDM could not attribute, and why), and one event with its payload. The API and the CLI list
through the same filter."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.errors import NotFound
from edm.models.events import Event
from edm.paging import Page


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Equality filters on the stored events; None means "any"."""

    user_id: int | None = None
    task_id: int | None = None
    subtask_id: int | None = None
    service_id: int | None = None
    event_type: str | None = None
    source: str | None = None
    match_status: str | None = None
    match_reason: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        for column, value in asdict(self).items():
            if value is not None:
                query = query.where(getattr(Event, column) == value)
        return query


async def events_page(session: AsyncSession, filters: EventFilter, page: Page) -> list[Event]:
    """One page of the matching events, oldest first (limit + 1 rows, for `page_of`)."""
    query = filters.apply(select(Event))
    if page.after_id is not None:
        query = query.where(Event.id > page.after_id)
    return list(await session.scalars(query.order_by(Event.id).limit(page.limit + 1)))


async def newest_events(session: AsyncSession, filters: EventFilter, *, limit: int) -> list[Event]:
    """The newest `limit` matching events, newest first."""
    return list(await session.scalars(filters.apply(select(Event)).order_by(Event.id.desc()).limit(limit)))


async def get_event(session: AsyncSession, event_id: int) -> Event:
    event = await session.get(Event, event_id)
    if event is None:
        raise NotFound("event not found")
    return event
