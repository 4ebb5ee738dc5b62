"""Set-based statements for the queue's per-batch writes: a batch's rows bound as one typed array per column
and read back as a table with PostgreSQL's `unnest`, so that 100 rows are one statement.

One statement per batch matters beyond the round trips: `subtasks` and `send_attempts` carry statement-level
triggers (the task and service counters, migrations 0002, 0007, 0012) that run once per statement, so an
executemany of 100 updates ran them 100 times. The SQL text is the same whatever the batch size, so the
driver's prepared statement is reused. SQLite has neither arrays nor those triggers: there the callers keep
their executemany statements.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    SQLColumnExpression,
    String,
    any_,
    bindparam,
    cast,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import TableValuedAlias
from sqlalchemy.types import TypeEngine

from edm.db.dialect import is_postgresql

BIGINT: TypeEngine[Any] = BigInteger()
INT: TypeEngine[Any] = Integer()
TEXT: TypeEngine[Any] = String()
TIMESTAMPTZ: TypeEngine[Any] = DateTime(timezone=True)


def unnest(name: str, columns: Mapping[str, TypeEngine[Any]], rows: Sequence[Mapping[str, Any]]) -> TableValuedAlias:
    """`unnest(CAST(:a AS t[]), …) AS name(col, …)`: the rows as a FROM item, one array parameter per column
    (a key missing from a row is NULL)."""
    arrays = [
        cast(bindparam(f"{name}_{column}", [r.get(column) for r in rows], type_=ARRAY(kind)), ARRAY(kind))
        for column, kind in columns.items()
    ]
    return func.unnest(*arrays).table_valued(*columns).render_derived(name=name)


def any_of(session: AsyncSession, column: SQLColumnExpression[Any], ids: Collection[int]) -> ColumnElement[bool]:
    """`column = ANY(:ids)` on PostgreSQL (one array parameter: the same SQL text for any number of ids),
    `column IN (…)` on SQLite."""
    if is_postgresql(session):
        return column == any_(cast(bindparam(None, list(ids), type_=ARRAY(BIGINT)), ARRAY(BIGINT)))
    return column.in_(list(ids))
