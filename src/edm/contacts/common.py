"""Small helpers the contacts modules (and the content services) share: ids the user must own, a write that
survives a lost race as a clear answer, batching of long id lists, a cursor clamped to what ids can be."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edm.errors import BadInput
from edm.paging import MAX_ID, Page


async def saved(session: AsyncSession, apply: Callable[[], None]) -> bool:
    """Run `apply` (adds or changes objects) and flush it in a savepoint. False on a constraint violation.

    The checks before a write make conflicts a clear 409; this catches the race where two requests pass
    the check together, without poisoning the caller's transaction (the savepoint is rolled back alone).
    """
    try:
        async with session.begin_nested():
            apply()
    except IntegrityError:
        return False
    return True


def assign(obj: Any, data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        setattr(obj, key, value)


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def require_own(session: AsyncSession, model: Any, *, user_id: int, ids: Iterable[int], field: str) -> list[int]:
    """The given ids, deduplicated, when all are the user's; else 422 naming up to 10 missing ones
    (docs/api.md#errors)."""
    wanted = list(dict.fromkeys(ids))
    found: set[int] = set()
    in_range = [i for i in wanted if 0 < i <= MAX_ID]
    for chunk in chunks(in_range, 5000):
        found.update(await session.scalars(select(model.id).where(model.user_id == user_id, model.id.in_(chunk))))
    missing = [i for i in wanted if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10]))
        raise BadInput(
            f"{field}: not found: {shown}",
            details=[{"field": field, "message": f"not found: {shown}"}],
            missing_ids=missing[:100],
        )
    return wanted


def after_id(page: Page) -> int:
    """The cursor's id, clamped: a forged cursor beyond BIGINT must not reach the database."""
    return min(page.after_id or 0, MAX_ID)
