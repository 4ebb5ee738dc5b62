"""What differs between the two databases EDM runs on (SQLite and PostgreSQL), in one place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import any_, bindparam, cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def dialect_name(session: AsyncSession) -> str:
    """ "postgresql" or "sqlite"."""
    return session.get_bind().dialect.name


def is_postgresql(session: AsyncSession) -> bool:
    return dialect_name(session) == "postgresql"


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """INSERT with `on_conflict_do_*` for the session's database."""
    return (postgresql.insert if is_postgresql(session) else sqlite.insert)(table)


def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern (with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def any_of(session: AsyncSession, column: Any, values: Iterable[Any]) -> Any:
    """`column IN (values)`; on PostgreSQL `column = ANY(CAST(:array AS type[]))`: one array parameter, so the
    statement's text (and the driver's prepared statement) is the same whatever the count, where an IN list is
    rendered anew for every call."""
    if is_postgresql(session):
        array = postgresql.ARRAY(column.type)
        return column == any_(cast(bindparam(None, list(values), type_=array), array))
    return column.in_(list(values))
