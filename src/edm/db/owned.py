"""The one "object of this user, or 404" lookup every user-facing read starts from
(docs/overview.md#roles-and-permissions: another user's object answers 404, so existence is not leaked)."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.errors import NotFound
from edm.paging import MAX_ID

T = TypeVar("T")


async def get_own(session: AsyncSession, model: type[T], *, user_id: int, object_id: int, what: str) -> T:
    found: T | None = None
    if 0 < object_id <= MAX_ID:  # larger numbers name nothing and PostgreSQL would refuse to compare them
        found = await session.scalar(
            select(model).where(model.id == object_id, model.user_id == user_id)  # type: ignore[attr-defined,arg-type]
        )
    if found is None:
        raise NotFound(f"{what} {object_id} not found")
    return found
