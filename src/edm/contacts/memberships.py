"""Tag memberships at their lowest level: writing (contact, tag) pairs and reading each contact's tags for
display. Contacts, tags, the importer and A/B splits all write memberships through `link_tags`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.contacts.schemas import TagRefOut
from edm.db.dialect import dialect_insert
from edm.models.contacts import ContactTag, Tag


async def contact_tags(session: AsyncSession, contact_ids: Sequence[int]) -> dict[int, list[TagRefOut]]:
    """Per contact: its explicit tags and their implied parents (`implied: true`), for display
    (docs/contacts.md#one-contact)."""
    out: dict[int, list[TagRefOut]] = defaultdict(list)
    if not contact_ids:
        return out
    parent = Tag.__table__.alias("parent")
    query = (
        select(ContactTag.contact_id, Tag.id, Tag.name, Tag.parent_id, parent.c.name)
        .join(Tag, Tag.id == ContactTag.tag_id)
        .outerjoin(parent, parent.c.id == Tag.parent_id)
        .where(ContactTag.contact_id.in_(contact_ids))
        .order_by(ContactTag.contact_id, Tag.id)
    )
    explicit: dict[int, set[int]] = defaultdict(set)
    implied: dict[int, dict[int, str]] = defaultdict(dict)
    for contact_id, tag_id, name, parent_id, parent_name in (await session.execute(query)).all():
        explicit[contact_id].add(tag_id)
        out[contact_id].append(TagRefOut(id=tag_id, name=name, parent_id=parent_id, implied=False))
        if parent_id is not None:
            implied[contact_id][parent_id] = parent_name
    for contact_id, parents in implied.items():
        for tag_id, name in parents.items():
            if tag_id not in explicit[contact_id]:
                out[contact_id].append(TagRefOut(id=tag_id, name=name, parent_id=None, implied=True))
    return out


async def link_tags(session: AsyncSession, pairs: Sequence[tuple[int, int]]) -> int:
    """Insert (contact_id, tag_id) memberships, ignoring existing ones. Returns how many were new."""
    unique = list(dict.fromkeys(pairs))
    if not unique:
        return 0
    now = utc_now()
    stmt = (
        dialect_insert(session, ContactTag.__table__)
        .on_conflict_do_nothing(index_elements=["contact_id", "tag_id"])
        .returning(ContactTag.__table__.c.contact_id)
    )
    # A list of parameter sets: SQLAlchemy sends it as multi-row INSERTs ("insertmanyvalues") from one
    # cached compiled statement; compiling a fresh 1,000-row VALUES clause per batch cost 4x the database work.
    rows = [{"contact_id": c, "tag_id": t, "created_at": now} for c, t in unique]
    return len((await session.execute(stmt, rows)).all())
