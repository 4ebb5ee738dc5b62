"""Set-based statements for the queue's per-batch writes: a batch's rows bound as one typed array per column
and read back as a table with PostgreSQL's `unnest`, so that 100 rows are one statement.

One statement per batch matters beyond the round trips: `subtasks` and `send_attempts` carry statement-level
triggers (the task and service counters, migrations 0002, 0007, 0012) that run once per statement, so an
executemany of 100 updates ran them 100 times. The SQL text is the same whatever the batch size, so the
driver's prepared statement is reused. SQLite has neither arrays nor those triggers: there the callers keep
their executemany statements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    bindparam,
    cast,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.expression import TableValuedAlias
from sqlalchemy.types import TypeEngine

from edm.db.dialect import any_of as any_of  # the queue's callers say bulk.any_of

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
