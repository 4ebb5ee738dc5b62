"""What a task is built from, found the way a person names it: a sender by its local part, a template or tag
by its name, each also by its id; contacts by their addresses. Always within one user's own objects."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.errors import NotFound
from edm.models.contacts import Contact, Tag
from edm.models.content import Sender, Template


async def sender_id(session: AsyncSession, *, user_id: int, ref: str) -> int:
    """The user's sender with this id or local part (matched against the lowercase form kept for lookups)."""
    return await _own_id(session, Sender, user_id, ref, Sender.local_part_lower)


async def template_id(session: AsyncSession, *, user_id: int, ref: str) -> int:
    return await _own_id(session, Template, user_id, ref, Template.name)


async def tag_id(session: AsyncSession, *, user_id: int, ref: str) -> int:
    return await _own_id(session, Tag, user_id, ref, Tag.name)


async def _own_id(session: AsyncSession, model: Any, user_id: int, ref: str, column: Any) -> int:
    """A reference of digits is an id; anything else is matched against `column`. 404 names the reference."""
    query = select(model.id).where(model.user_id == user_id)
    query = query.where(model.id == int(ref)) if ref.isdigit() else query.where(column == ref)
    found = await session.scalar(query)
    if found is None:
        raise NotFound(f"{model.__tablename__[:-1]} {ref!r} not found")
    return int(found)


async def contact_ids(session: AsyncSession, *, user_id: int, emails: Collection[str]) -> list[int]:
    """Ids of the user's contacts with these normalized addresses (addresses that are no contact are skipped)."""
    query = select(Contact.id).where(Contact.user_id == user_id, Contact.email_normalized.in_(emails))
    return list(await session.scalars(query))
