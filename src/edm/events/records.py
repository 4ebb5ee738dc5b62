"""Rows as plain records for the events job: read a row's columns into a mutable copy, change it, write every
changed copy back with one executemany UPDATE per table. No ORM identity map on this path: profiling showed
it to cost more than the SQL itself."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import is_postgresql
from edm.models.contacts import Contact


class Record:
    """A mutable copy of a row's columns; `changed()` says whether any of the writable ones moved."""

    id: int

    def __init__(self, mapping: Any, writable: tuple[str, ...]) -> None:
        self.__dict__.update(mapping)
        self._writable = writable
        self._before = tuple(mapping[name] for name in writable)

    def changed(self) -> bool:
        return tuple(getattr(self, name) for name in self._writable) != self._before

    def values(self) -> dict[str, Any]:
        return {"b_id": self.id, **{"b_" + name: getattr(self, name) for name in self._writable}}


EVENT_READ = ("id", "source", "service_id", "event_type", "occurred_at", "subtask_ref", "provider_message_id")
# `details` is written back: applying a tracking hit records its classification (machine, machine_reason).
EVENT_WRITE = ("processed_at", "match_status", "match_reason", "subtask_id", "task_id", "user_id", "details")
SUBTASK_READ = (
    "id",
    "public_id",
    "task_id",
    "user_id",
    "contact_id",
    "service_id",
    "attempts",
    "allocated_at",
    "provider_message_id",
    "sent_at",
    "recipient_email",
)
SUBTASK_WRITE = (
    "send_state",
    "sent_at",
    "last_error_class",
    "delivery_state",
    "delivered_at",
    "bounced_at",
    "delivery_detail",
    "complained_at",
    "unsubscribed_at",
    "replied_at",
    "open_count",
    "machine_open_count",
    "first_opened_at",
    "last_opened_at",
    "click_count",
    "machine_click_count",
    "first_clicked_at",
    "last_clicked_at",
)
CONTACT_WRITE = (
    "soft_bounce_streak",
    "hard_bounced_at",
    "complained_at",
    "unsubscribed_at",
    "last_replied_at",
    "last_opened_at",
    "last_clicked_at",
)


def columns(model: Any, names: tuple[str, ...]) -> list[Any]:
    return [model.__table__.c[name] for name in names]


async def contact_records(session: AsyncSession, ids: Iterable[int | None]) -> dict[int, Any]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    query = select(*columns(Contact, ("id", *CONTACT_WRITE))).where(Contact.id.in_(wanted)).order_by(Contact.id)
    if is_postgresql(session):
        query = query.with_for_update()  # one lock order (by id) for every writer: no deadlocks
    return {row.id: Record(row._mapping, CONTACT_WRITE) for row in await session.execute(query)}


async def update_many(session: AsyncSession, model: Any, names: tuple[str, ...], records: Sequence[Any]) -> None:
    """One executemany UPDATE of the writable columns, keyed by id."""
    if not records:
        return
    table = model.__table__
    statement = (
        update(table).where(table.c.id == bindparam("b_id")).values({name: bindparam("b_" + name) for name in names})
    )
    await session.execute(statement, [record.values() for record in records])
