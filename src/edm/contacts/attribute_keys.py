"""The custom attribute keys in use per user (`contact_attribute_keys`), kept as contacts are written, so the
template editor lists them without reading every contact's JSON (docs/templates.md#variables).

Every write of `custom_attributes` goes through `service.create_contact`, `service.update_contact` or
`upsert.bulk_insert_contacts` (the importer, the API, the CLI and the console all use these), and each records the
keys it wrote here in the same transaction: one INSERT … ON CONFLICT DO NOTHING per statement.

Keys are never removed: a key that no contact carries any more (its contacts changed or were deleted) stays a
suggestion in the editor, where it renders as nothing — harmless, and cheaper than recounting on every write. The
list per user is bounded in practice by what the user's imports and edits ever named; the editor reads at most
`limit` keys in key order through the primary key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import dialect_insert
from edm.models.contacts import ContactAttributeKey

MAX_KEY_LENGTH = 64  # as ATTR_KEY allows (^[A-Za-z_][A-Za-z0-9_]{0,63}$)


async def record_keys(session: AsyncSession, *, user_id: int, attributes: Iterable[Mapping[str, Any] | None]) -> None:
    """Remember the keys of these attribute objects as the user's (existing ones are left alone)."""
    keys = sorted(
        {key for value in attributes if isinstance(value, Mapping) for key in value if len(key) <= MAX_KEY_LENGTH}
    )
    if not keys:
        return
    stmt = dialect_insert(session, ContactAttributeKey.__table__).on_conflict_do_nothing(
        index_elements=["user_id", "key"]
    )
    await session.execute(stmt, [{"user_id": user_id, "key": key} for key in keys])


async def user_keys(session: AsyncSession, *, user_id: int, limit: int) -> list[str]:
    """The user's keys in key order, at most `limit` (an index range scan of the primary key)."""
    query = (
        select(ContactAttributeKey.key)
        .where(ContactAttributeKey.user_id == user_id)
        .order_by(ContactAttributeKey.key)
        .limit(limit)
    )
    return list(await session.scalars(query))
