"""Rows as plain records for the events job: read a row's columns into a mutable copy, change it, write every
changed copy back with one UPDATE per table. No ORM identity map on this path: profiling showed it to cost more
than the SQL itself.

On PostgreSQL the write-back is one set-based `UPDATE … FROM unnest(arrays)`: the statistics triggers on
`subtasks` and `events` are statement-level (transition tables), so an executemany UPDATE of 1,000 rows ran
them 1,000 times, each over a one-row table, and that was most of PostgreSQL's time in the job
(bench/RESULTS.md, "Webhook ingest"). SQLite keeps the executemany UPDATE (its counters are kept by row triggers).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import any_of, is_postgresql
from edm.models.contacts import Contact


class Record:
    """A mutable copy of a row's columns; `changed()` says whether any of the writable ones moved."""

    id: int

    def __init__(self, mapping: Any, writable: tuple[str, ...]) -> None:
        self.__dict__.update(mapping)
        self._writable = writable
        self._before = tuple(mapping[name] for name in writable)

    @classmethod
    def all(cls, result: Result[Any], writable: tuple[str, ...]) -> list[Any]:
        """Every row of `result` as a record: the column names are read once, not through each row's mapping
        (building a row's `_mapping` cost more than the rest of the record)."""
        names = tuple(result.keys())
        where = tuple(names.index(name) for name in writable)
        records = []
        new = cls.__new__
        for row in result:
            record = new(cls)
            state = record.__dict__
            state.update(zip(names, row, strict=True))
            state["_writable"] = writable
            state["_before"] = tuple([row[i] for i in where])
            records.append(record)
        return records

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


async def core_execute(session: AsyncSession, statement: Any, parameters: Any = None) -> Result[Any]:
    """A Core statement on the session's connection (its transaction): not through the ORM's execute, whose
    result loading cost more than the rows themselves on this path (bench/RESULTS.md, "Webhook ingest")."""
    connection = await session.connection()
    result: Result[Any] = await connection.execute(statement, parameters)
    return result


async def contact_records(session: AsyncSession, ids: Iterable[int | None]) -> dict[int, Any]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    query = (
        select(*columns(Contact, ("id", *CONTACT_WRITE)))
        .where(any_of(session, Contact.id, wanted))
        .order_by(Contact.id)
    )
    if is_postgresql(session):
        query = query.with_for_update()  # one lock order (by id) for every writer: no deadlocks
    return {record.id: record for record in Record.all(await core_execute(session, query), CONTACT_WRITE)}


async def update_many(session: AsyncSession, model: Any, names: tuple[str, ...], records: Sequence[Any]) -> None:
    """Write the writable columns of `records` back, keyed by id: one statement on PostgreSQL (`UPDATE … FROM
    unnest`, one array per column), an executemany UPDATE on SQLite."""
    if not records:
        return
    table = model.__table__
    if not is_postgresql(session):
        statement = update(table).where(table.c.id == bindparam("b_id"))
        statement = statement.values({name: bindparam("b_" + name) for name in names})
        await core_execute(session, statement, [record.values() for record in records])
        return
    statement, json_columns = _unnest_update(table, names)
    ordered = sorted(records, key=lambda record: record.id)  # one lock order for every writer
    params: dict[str, Any] = {"b_id": [record.id for record in ordered]}
    for name in names:
        values = [getattr(record, name) for record in ordered]
        if name in json_columns:
            values = [
                None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
                for value in values
            ]
        params["b_" + name] = values
    await core_execute(session, statement, params)


@functools.cache
def _unnest_update(table: Any, names: tuple[str, ...]) -> tuple[Any, frozenset[str]]:
    """`UPDATE table SET c = v.c, … FROM unnest(CAST(:b_id AS BIGINT[]), …) AS v(id, …) WHERE table.id = v.id`,
    and the JSON columns among `names` (sent as text, cast back in the SET)."""
    arrays, sets, json_columns = ["CAST(:b_id AS BIGINT[])"], [], set()
    for name in names:
        kind = _array_type(table.c[name].type)
        if kind == "JSONB":
            json_columns.add(name)
            arrays.append(f"CAST(:b_{name} AS TEXT[])")
            sets.append(f"{name} = CAST(v.{name} AS JSONB)")
        else:
            arrays.append(f"CAST(:b_{name} AS {kind}[])")
            sets.append(f"{name} = v.{name}")
    sql = (
        f"UPDATE {table.name} SET {', '.join(sets)} FROM unnest({', '.join(arrays)}) AS v(id, {', '.join(names)}) "
        f"WHERE {table.name}.id = v.id"
    )
    return text(sql), frozenset(json_columns)


def _array_type(column_type: Any) -> str:
    """The element type of a column's array parameter: the column's own PostgreSQL type (VARCHAR(n) as TEXT,
    the column's assignment cast checks the length)."""
    name = str(column_type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
    return "TEXT" if name.startswith("VARCHAR") else name
