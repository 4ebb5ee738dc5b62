"""Contacts: create, change, delete, list and count a user's contacts, and the shape the API answers them in.

Every function takes the session of its caller and never commits (only entry points do). Every query is
scoped by `user_id`; an object of another user is "not found". The field rules live in `fields`, tags in
`tags`, the importer's set-based writer in `upsert`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Select, delete, func, select, text, union
from sqlalchemy.ext.asyncio import AsyncSession

from edm.contacts.attribute_keys import record_keys
from edm.contacts.common import after_id, assign, require_own, saved
from edm.contacts.fields import clean_contact_values
from edm.contacts.filters import (
    ContactFilter,
    Sort,
    contact_conditions,
    encode_sort_cursor,
    expand_tags,
    keyset,
)
from edm.contacts.memberships import contact_tags, link_tags
from edm.contacts.schemas import ContactOut
from edm.db.dialect import dialect_name
from edm.db.owned import get_own
from edm.errors import Conflict
from edm.models.contacts import Contact, ContactStatus, ContactTag, Tag
from edm.paging import MAX_ID, CountedPageOut, Page, page_of


async def get_contact(session: AsyncSession, *, user_id: int, contact_id: int) -> Contact:
    return await get_own(session, Contact, user_id=user_id, object_id=contact_id, what="contact")


async def create_contact(
    session: AsyncSession, *, user_id: int, values: Mapping[str, Any], tag_ids: Sequence[int] = ()
) -> Contact:
    """Create one contact. `values` holds the writable fields (email required). 409 on a duplicate address."""
    data = clean_contact_values(values)
    data.setdefault("status", ContactStatus.ACTIVE)
    data.setdefault("custom_attributes", {})
    await _refuse_duplicate(session, user_id=user_id, email_normalized=data["email_normalized"])
    tags = await require_own(session, Tag, user_id=user_id, ids=tag_ids, field="tag_ids")
    contact = Contact(user_id=user_id, **data)
    if not await saved(session, lambda: session.add(contact)):
        await _refuse_duplicate(session, user_id=user_id, email_normalized=data["email_normalized"])
        raise Conflict("contact could not be saved: it changed concurrently, retry")
    await link_tags(session, [(contact.id, tag_id) for tag_id in tags])
    await record_keys(session, user_id=user_id, attributes=[data["custom_attributes"]])
    await session.refresh(contact)  # the values the database set, loaded now rather than lazily on a later read
    return contact


async def update_contact(
    session: AsyncSession, *, user_id: int, contact_id: int, changes: Mapping[str, Any]
) -> Contact:
    """Change the given fields (custom_attributes is replaced as a whole). A new email re-checks uniqueness."""
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    data = clean_contact_values(changes, partial=True)
    if "email" in data and data["email_normalized"] != contact.email_normalized:
        await _refuse_duplicate(session, user_id=user_id, email_normalized=data["email_normalized"])
    if not await saved(session, lambda: assign(contact, data)):
        await _refuse_duplicate(session, user_id=user_id, email_normalized=data.get("email_normalized", ""))
        raise Conflict("contact could not be saved: it changed concurrently, retry")
    if "custom_attributes" in data:
        await record_keys(session, user_id=user_id, attributes=[data["custom_attributes"]])
    await session.refresh(contact)  # updated_at as stored, loaded now rather than lazily on a later read
    return contact


async def _refuse_duplicate(session: AsyncSession, *, user_id: int, email_normalized: str) -> None:
    existing = await session.scalar(
        select(Contact.id).where(Contact.user_id == user_id, Contact.email_normalized == email_normalized)
    )
    if existing is not None:
        raise Conflict(
            "a contact with this email already exists",
            details=[{"field": "email", "message": "already exists"}],
            existing_id=existing,
        )


async def delete_contact(session: AsyncSession, *, user_id: int, contact_id: int) -> None:
    """Memberships go with it (join table); past SubTasks keep their address with contact_id nulled (FK)."""
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    await session.execute(delete(ContactTag).where(ContactTag.contact_id == contact.id))
    await session.execute(delete(Contact).where(Contact.id == contact.id, Contact.user_id == user_id))


async def list_contacts(
    session: AsyncSession,
    *,
    user_id: int,
    page: Page,
    filters: ContactFilter = ContactFilter(),
    sort: Sort = Sort(),
    cursor: tuple[int, Any] | None = None,
) -> list[Contact]:
    """One page in `sort` order, fetched with limit + 1. Without `cursor`, the page's `after_id` (id order)."""
    conditions = await contact_conditions(session, user_id=user_id, filters=filters)
    if (filters.q or filters.attributes) and dialect_name(session) == "postgresql":
        # A generic plan (asyncpg prepares statements; PostgreSQL switches to a generic plan after 5 runs) cannot
        # see the search pattern, so it walks the id index and filters every row: 2.5 s instead of 35 ms with a
        # trigram index on 1,000,000 contacts (bench/RESULTS.md). Plan this transaction's searches per pattern.
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    if cursor is None and page.after_id is not None:
        cursor = (after_id(page), None)
    if _by_membership(filters, sort):
        return await _list_by_membership(session, user_id=user_id, page=page, filters=filters, sort=sort, cursor=cursor)
    after, order = keyset(session, sort, cursor)
    query = select(Contact).where(*conditions, *after).order_by(*order).limit(page.limit + 1)
    return list(await session.scalars(query))


def _by_membership(filters: ContactFilter, sort: Sort) -> bool:
    """A tag filter in id order is read from the tag's memberships (`ix_contact_tags_tag_id_contact_id`) rather than
    by walking all the user's contacts and probing each: a tag whose members are all old cost a walk of ~every
    contact for the newest-first page (bench/RESULTS.md (k)). `untagged` cannot be read from memberships."""
    return bool(filters.tag_ids) and not filters.untagged and sort.key == "id"


async def _list_by_membership(
    session: AsyncSession,
    *,
    user_id: int,
    page: Page,
    filters: ContactFilter,
    sort: Sort,
    cursor: tuple[int, Any] | None,
) -> list[Contact]:
    """`list_contacts` for a tag filter in id order: per tag (a parent's children each count), the first
    limit + 1 matching members in order through the membership index (a nested loop that stops at the page), then
    the union's first limit + 1. Every contact of the true page is among its tag's first limit + 1, so the page is
    exact; the cost is O(page × tags), not O(contacts)."""
    ids = [i for i in filters.tag_ids if 0 < i <= MAX_ID]
    if not filters.explicit_only:
        ids = await expand_tags(session, user_id=user_id, tag_ids=tuple(ids))
    if not ids:
        return []
    conditions = await contact_conditions(session, user_id=user_id, filters=replace(filters, tag_ids=()))
    limit = page.limit + 1
    branches: list[Select[Any]] = []
    for tag_id in ids:
        member = ContactTag.__table__.alias(f"member_{len(branches)}")
        after: list[Any] = []
        if cursor is not None:
            after = [member.c.contact_id < cursor[0] if sort.descending else member.c.contact_id > cursor[0]]
        branch = (
            select(member.c.contact_id.label("contact_id"))
            .join(Contact, Contact.id == member.c.contact_id)
            .where(member.c.tag_id == tag_id, *after, *conditions)
            .order_by(member.c.contact_id.desc() if sort.descending else member.c.contact_id)
            .limit(limit)
            .subquery()
        )
        branches.append(select(branch.c.contact_id))
    chosen: Any = union(*branches) if len(branches) > 1 else branches[0]
    query = (
        select(Contact)
        .where(Contact.user_id == user_id, Contact.id.in_(chosen))
        .order_by(Contact.id.desc() if sort.descending else Contact.id)
        .limit(limit)
    )
    return list(await session.scalars(query))


async def count_contacts(
    session: AsyncSession, *, user_id: int, filters: ContactFilter = ContactFilter(), cap: int | None = None
) -> int:
    """How many contacts match. With `cap`, counting stops after cap + 1 rows (`LIMIT cap + 1` under the count): the
    answer is exact up to `cap`, and cap + 1 means "more than cap" — what a list page shows, in time that does not
    grow with the user's contacts. Bulk actions confirm with the exact count (no cap)."""
    conditions = await contact_conditions(session, user_id=user_id, filters=filters)
    if cap is None:
        return int(await session.scalar(select(func.count()).select_from(Contact).where(*conditions)) or 0)
    matching = select(Contact.id).where(*conditions).limit(cap + 1).subquery()
    return int(await session.scalar(select(func.count()).select_from(matching)) or 0)


async def contact_page(
    session: AsyncSession,
    *,
    user_id: int,
    page: Page,
    filters: ContactFilter = ContactFilter(),
    sort: Sort = Sort(),
    cursor: tuple[int, Any] | None = None,
    include_total: bool = False,
) -> CountedPageOut[ContactOut]:
    """One page of `list_contacts` as contacts with their tags; its cursor continues in `sort` order."""
    rows = await list_contacts(session, user_id=user_id, page=page, filters=filters, sort=sort, cursor=cursor)
    result = page_of(rows, page)
    next_cursor = encode_sort_cursor(result["items"][-1], sort) if result["next_cursor"] is not None else None
    items = await contact_views(session, result["items"])
    total = await count_contacts(session, user_id=user_id, filters=filters) if include_total else None
    return CountedPageOut[ContactOut](items=items, next_cursor=next_cursor, total=total)


async def contact_views(session: AsyncSession, contacts: Sequence[Contact]) -> list[ContactOut]:
    """Contacts as the API answers them: their fields and their tags (explicit ones and implied parents)."""
    tags = await contact_tags(session, [c.id for c in contacts])
    views = []
    for contact in contacts:
        view = ContactOut.model_validate(contact)
        view.tags = tags.get(contact.id, [])
        views.append(view)
    return views


async def own_contact_ids(session: AsyncSession, *, user_id: int, ids: Sequence[int], field: str) -> list[int]:
    """The given contact ids, deduplicated, when all are the user's; else 422 naming the missing ones."""
    return await require_own(session, Contact, user_id=user_id, ids=ids, field=field)
