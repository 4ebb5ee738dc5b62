"""What differs between the two databases EDM runs on (SQLite and PostgreSQL), in one place."""

from __future__ import annotations

from typing import Any

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
