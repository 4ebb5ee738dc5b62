"""Tags: a user's tags, nested one level deep (roots and their children), their member counts, and who
carries them. A child tag implies its parent: a parent's members include its children's members.

Names are unique among siblings; a tag that has children, or that the recipient rule of a draft or scheduled
task names, cannot be deleted."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.contacts.common import after_id, assign, chunks, require_own, saved
from edm.contacts.fields import check_text
from edm.contacts.filters import ContactFilter
from edm.contacts.memberships import link_tags
from edm.contacts.schemas import ContactOut, TagNodeOut, TagOut
from edm.contacts.service import contact_views, get_contact, list_contacts
from edm.db.owned import get_own
from edm.errors import BadInput, Conflict, InUse
from edm.models.contacts import Contact, ContactTag, Tag
from edm.models.tasks import Task
from edm.paging import MAX_ID, CountedPageOut, Page, page_of
from edm.vocabulary.tasks import TaskStatus

TAG_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
DEFAULT_TAG_COLOR = "#3b82f6"
# Task statuses whose recipient rule may still change or run: a tag they name cannot be deleted (docs/contacts.md#tags).
RULE_LOCKING_STATUSES = (TaskStatus.DRAFT, TaskStatus.SCHEDULED)


def check_tag_name(value: Any) -> str:
    name = check_text("name", value, 64, required=True)
    assert name is not None
    if "/" in name:
        raise BadInput.field("name", "must not contain '/' (it separates parent and child names)")
    return name


def check_color(value: Any) -> str:
    if not isinstance(value, str) or not TAG_COLOR.fullmatch(value.strip()):
        raise BadInput.field("color", "must be a #rrggbb color")
    return value.strip().lower()


async def get_tag(session: AsyncSession, *, user_id: int, tag_id: int) -> Tag:
    return await get_own(session, Tag, user_id=user_id, object_id=tag_id, what="tag")


async def create_tag(
    session: AsyncSession,
    *,
    user_id: int,
    name: str,
    color: str | None = None,
    description: str | None = None,
    parent_id: int | None = None,
) -> Tag:
    """A root tag, or a child of one of the user's root tags (depth ≤ 2). Names are unique among siblings."""
    clean = check_tag_name(name)
    values = {
        "color": check_color(color) if color is not None else DEFAULT_TAG_COLOR,
        "description": check_text("description", description, 500),
    }
    if parent_id is not None:
        await _root_parent(session, user_id=user_id, parent_id=parent_id)
    await _refuse_sibling(session, user_id=user_id, parent_id=parent_id, name=clean)
    tag = Tag(user_id=user_id, name=clean, parent_id=parent_id, is_split_group=False, **values)
    if not await saved(session, lambda: session.add(tag)):
        raise Conflict(
            "a tag with this name already exists here", details=[{"field": "name", "message": "already exists"}]
        )
    return tag


async def _root_parent(session: AsyncSession, *, user_id: int, parent_id: int) -> Tag:
    parent = None
    if 0 < parent_id <= MAX_ID:
        parent = await session.scalar(select(Tag).where(Tag.id == parent_id, Tag.user_id == user_id))
    if parent is None:
        raise BadInput.field("parent_id", f"not found: {parent_id}")
    if parent.parent_id is not None:
        raise BadInput.field("parent_id", "must be a root tag: tags nest one level deep")
    return parent


async def _refuse_sibling(
    session: AsyncSession, *, user_id: int, parent_id: int | None, name: str, except_id: int | None = None
) -> None:
    # Checked here because the unique constraint cannot see two roots (NULL parent_id never collides).
    same_parent = Tag.parent_id.is_(None) if parent_id is None else Tag.parent_id == parent_id
    query = select(Tag.id).where(Tag.user_id == user_id, same_parent, Tag.name == name)
    if except_id is not None:
        query = query.where(Tag.id != except_id)
    existing = await session.scalar(query)
    if existing is not None:
        raise Conflict(
            "a tag with this name already exists here",
            details=[{"field": "name", "message": "already exists"}],
            existing_id=existing,
        )


async def update_tag(session: AsyncSession, *, user_id: int, tag_id: int, changes: Mapping[str, Any]) -> Tag:
    """Rename, recolor or describe. Moving to another parent is a separate operation (docs/contacts.md#tags)."""
    unknown = sorted(set(changes) - {"name", "color", "description"})
    if unknown:
        raise BadInput.field(unknown[0], "unknown field")
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    data: dict[str, Any] = {}
    if "name" in changes:
        data["name"] = check_tag_name(changes["name"])
        await _refuse_sibling(session, user_id=user_id, parent_id=tag.parent_id, name=data["name"], except_id=tag.id)
    if "color" in changes:
        data["color"] = check_color(changes["color"])
    if "description" in changes:
        data["description"] = check_text("description", changes["description"], 500)
    if not await saved(session, lambda: assign(tag, data)):
        raise Conflict(
            "a tag with this name already exists here", details=[{"field": "name", "message": "already exists"}]
        )
    await session.refresh(tag)  # the values the database set (updated_at), loaded now rather than lazily
    return tag


async def move_tag(session: AsyncSession, *, user_id: int, tag_id: int, parent_id: int | None) -> Tag:
    """Re-parent a tag (docs/contacts.md#tags): under one of the user's root tags, or to the root level (`None`). Only
    roots may have children, so a tag that has children cannot go under another (422). Names stay sibling-unique."""
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    if parent_id == tag.parent_id:
        return tag
    if parent_id is not None:
        if parent_id == tag.id:
            raise BadInput.field("parent_id", "a tag cannot be its own parent")
        await _root_parent(session, user_id=user_id, parent_id=parent_id)
        children = await session.scalar(
            select(func.count()).select_from(Tag).where(Tag.user_id == user_id, Tag.parent_id == tag.id)
        )
        if children:
            raise BadInput.field(
                "parent_id",
                f"the tag has {children} child tag(s): only root tags may have children, so move or delete them first",
            )
    await _refuse_sibling(session, user_id=user_id, parent_id=parent_id, name=tag.name, except_id=tag.id)
    if not await saved(session, lambda: assign(tag, {"parent_id": parent_id, "updated_at": utc_now()})):
        raise Conflict(
            "a tag with this name already exists here", details=[{"field": "name", "message": "already exists"}]
        )
    await session.refresh(tag)
    return tag


async def delete_tag(session: AsyncSession, *, user_id: int, tag_id: int) -> None:
    """409 in_use while it has children or a draft/scheduled task's rule names it; else memberships go too."""
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    children = (
        await session.execute(
            select(Tag.id, Tag.name).where(Tag.user_id == user_id, Tag.parent_id == tag.id).order_by(Tag.id)
        )
    ).all()
    if children:
        raise InUse(
            "the tag has child tags: delete or move them first",
            details=[{"field": "children", "message": f"{len(children)} child tag(s)"}],
            children=[{"id": i, "name": n} for i, n in children],
        )
    tasks = await tasks_naming_tag(session, user_id=user_id, tag_id=tag.id)
    if tasks:
        raise InUse(
            "the tag is used by the recipient rule of draft or scheduled tasks",
            details=[{"field": "tasks", "message": f"used by {len(tasks)} task(s)"}],
            tasks=tasks,
        )
    await session.execute(delete(ContactTag).where(ContactTag.tag_id == tag.id))
    await session.execute(delete(Tag).where(Tag.id == tag.id, Tag.user_id == user_id))


async def tasks_naming_tag(session: AsyncSession, *, user_id: int, tag_id: int) -> list[dict[str, Any]]:
    rows = (
        await session.execute(
            select(Task.id, Task.name, Task.status, Task.recipient_rule)
            .where(Task.user_id == user_id, Task.status.in_(RULE_LOCKING_STATUSES))
            .order_by(Task.id)
        )
    ).all()
    return [{"id": i, "name": n, "status": s} for i, n, s, rule in rows if tag_id in _rule_tag_ids(rule)]


def _rule_tag_ids(rule: Any) -> set[Any]:
    if not isinstance(rule, dict):
        return set()
    ids: set[Any] = set()
    for key in ("include_tag_ids", "exclude_tag_ids"):
        value = rule.get(key)
        if isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


async def list_tags(session: AsyncSession, *, user_id: int, page: Page) -> list[TagOut]:
    """One page of tags by id with member counts (limit + 1 rows, for page_of)."""
    tags = list(
        await session.scalars(
            select(Tag).where(Tag.user_id == user_id, Tag.id > after_id(page)).order_by(Tag.id).limit(page.limit + 1)
        )
    )
    return await _with_counts(session, tags)


async def count_tags(session: AsyncSession, *, user_id: int) -> int:
    return int(await session.scalar(select(func.count()).select_from(Tag).where(Tag.user_id == user_id)) or 0)


async def tag_page(
    session: AsyncSession, *, user_id: int, page: Page, include_total: bool = False
) -> CountedPageOut[TagOut]:
    """One page of tags by id with their member counts, and how many tags there are when asked."""
    items = await list_tags(session, user_id=user_id, page=page)
    total = await count_tags(session, user_id=user_id) if include_total else None
    return CountedPageOut[TagOut](**page_of(items, page), total=total)


async def tag_detail(session: AsyncSession, *, user_id: int, tag_id: int) -> TagOut:
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    return (await _with_counts(session, [tag]))[0]


async def tag_tree(session: AsyncSession, *, user_id: int, count_cap: int | None = None) -> list[TagNodeOut]:
    """Every tag of the user as roots with their `children`, each with counts (no paging: depth ≤ 2). With
    `count_cap`, each count stops after cap + 1 members (cap + 1 means "more than cap"): a list page's counts in time
    bounded by tags × cap instead of every membership (see `_with_counts`)."""
    tags = list(await session.scalars(select(Tag).where(Tag.user_id == user_id).order_by(Tag.name, Tag.id)))
    items = await _with_counts(session, tags, cap=count_cap)
    children: dict[int, list[TagOut]] = defaultdict(list)
    for item in items:
        if item.parent_id is not None:
            children[item.parent_id].append(item)
    return [
        TagNodeOut(**item.model_dump(), children=children.get(item.id, [])) for item in items if item.parent_id is None
    ]


async def _with_counts(session: AsyncSession, tags: list[Tag], *, cap: int | None = None) -> list[TagOut]:
    """`member_count`: explicit members; `total_member_count`: distinct members of the tag and its children. A root
    without children has total = explicit. With `cap`, both are counted up to cap + 1 only."""
    ids = [t.id for t in tags]
    explicit = await _explicit_counts(session, ids) if cap is None else await _capped_counts(session, ids, cap)
    roots = [t.id for t in tags if t.parent_id is None]
    if roots:  # only roots with children need a distinct count
        parents = set(await session.scalars(select(Tag.parent_id).where(Tag.parent_id.in_(roots)).distinct()))
        roots = [r for r in roots if r in parents]
    totals = await _root_totals(session, roots, cap=cap)
    out = []
    for tag in tags:
        members = explicit.get(tag.id, 0)
        total = totals.get(tag.id, members) if tag.parent_id is None else members
        out.append(_tag_out(tag, member_count=members, total_member_count=total))
    return out


async def _explicit_counts(session: AsyncSession, tag_ids: list[int]) -> dict[int, int]:
    if not tag_ids:
        return {}
    rows = await session.execute(
        select(ContactTag.tag_id, func.count()).where(ContactTag.tag_id.in_(tag_ids)).group_by(ContactTag.tag_id)
    )
    return {tag_id: count for tag_id, count in rows.all()}


async def _capped_counts(session: AsyncSession, tag_ids: list[int], cap: int) -> dict[int, int]:
    """Per tag min(members, cap + 1): each an index-only range of at most cap + 1 entries of (tag_id, contact_id)."""
    out: dict[int, int] = {}
    for chunk in chunks(tag_ids, 100):
        counts = []
        for tag_id in chunk:
            first = select(ContactTag.contact_id).where(ContactTag.tag_id == tag_id).limit(cap + 1).subquery()
            counts.append(select(literal(tag_id).label("tag_id"), func.count().label("n")).select_from(first))
        rows = await session.execute(union_all(*counts) if len(counts) > 1 else counts[0])
        out.update({tag_id: n for tag_id, n in rows.all()})
    return out


async def _root_totals(session: AsyncSession, root_ids: list[int], *, cap: int | None = None) -> dict[int, int]:
    if not root_ids:
        return {}
    root = func.coalesce(Tag.parent_id, Tag.id)
    if cap is not None:
        out = {}
        for root_id in root_ids:
            family = select(Tag.id).where(root == root_id)
            first = (
                select(ContactTag.contact_id)
                .where(ContactTag.tag_id.in_(family))
                .group_by(ContactTag.contact_id)
                .limit(cap + 1)
                .subquery()
            )
            out[root_id] = int(await session.scalar(select(func.count()).select_from(first)) or 0)
        return out
    rows = await session.execute(
        select(root, func.count(func.distinct(ContactTag.contact_id)))
        .join(Tag, Tag.id == ContactTag.tag_id)
        .where(root.in_(root_ids))
        .group_by(root)
    )
    return {root_id: count for root_id, count in rows.all()}


def _tag_out(tag: Tag, *, member_count: int, total_member_count: int) -> TagOut:
    return TagOut(
        id=tag.id,
        name=tag.name,
        description=tag.description,
        color=tag.color,
        parent_id=tag.parent_id,
        is_split_group=tag.is_split_group,
        member_count=member_count,
        total_member_count=total_member_count,
        created_at=tag.created_at,
        updated_at=tag.updated_at,
    )


# --------------------------------------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------------------------------------


async def tag_contact(session: AsyncSession, *, user_id: int, contact_id: int, tag_ids: Sequence[int]) -> int:
    """Add explicit tags to one contact. Returns how many memberships were new."""
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    tags = await require_own(session, Tag, user_id=user_id, ids=tag_ids, field="tag_ids")
    return await link_tags(session, [(contact.id, tag_id) for tag_id in tags])


async def untag_contact(session: AsyncSession, *, user_id: int, contact_id: int, tag_id: int) -> None:
    """Remove one explicit membership; removing one that does not exist is not an error."""
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    await session.execute(delete(ContactTag).where(ContactTag.contact_id == contact.id, ContactTag.tag_id == tag.id))


async def add_tag_members(session: AsyncSession, *, user_id: int, tag_id: int, contact_ids: Sequence[int]) -> int:
    """Tag many contacts at once; they must all be the user's (else 422 naming the missing). Returns new ones."""
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    ids = await require_own(session, Contact, user_id=user_id, ids=contact_ids, field="contact_ids")
    return await link_tags(session, [(contact_id, tag.id) for contact_id in ids])


async def remove_tag_members(session: AsyncSession, *, user_id: int, tag_id: int, contact_ids: Sequence[int]) -> int:
    """Untag many contacts (explicit memberships only). Returns how many memberships were removed."""
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    ids = await require_own(session, Contact, user_id=user_id, ids=contact_ids, field="contact_ids")
    removed = 0
    for chunk in chunks(ids, 5000):
        result = await session.execute(
            delete(ContactTag).where(ContactTag.tag_id == tag.id, ContactTag.contact_id.in_(chunk))
        )
        removed += result.rowcount or 0  # type: ignore[attr-defined]
    return removed


async def list_tag_members(
    session: AsyncSession, *, user_id: int, tag_id: int, page: Page, explicit_only: bool = False
) -> list[Contact]:
    """Members of a tag; for a parent, its children's members too unless `explicit_only`."""
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    filters = ContactFilter(tag_ids=(tag.id,), explicit_only=explicit_only)
    return await list_contacts(session, user_id=user_id, page=page, filters=filters)


async def tag_members_page(
    session: AsyncSession, *, user_id: int, tag_id: int, page: Page, explicit_only: bool = False
) -> CountedPageOut[ContactOut]:
    """One page of `list_tag_members` as contacts with their tags (never counted: `total` stays None)."""
    rows = await list_tag_members(session, user_id=user_id, tag_id=tag_id, page=page, explicit_only=explicit_only)
    result = page_of(rows, page)
    return CountedPageOut[ContactOut](
        items=await contact_views(session, result["items"]), next_cursor=result["next_cursor"]
    )


# --------------------------------------------------------------------------------------------------------
# Tags by name (the importer and the CLI)
# --------------------------------------------------------------------------------------------------------


async def tag_ids_by_name(session: AsyncSession, *, user_id: int) -> dict[tuple[str | None, str], int]:
    """All of a user's tags keyed by (parent name or None, name): the importer's `Parent/Child` lookup."""
    parent = Tag.__table__.alias("parent")
    rows = await session.execute(
        select(Tag.id, Tag.name, parent.c.name)
        .outerjoin(parent, parent.c.id == Tag.parent_id)
        .where(Tag.user_id == user_id)
    )
    return {(parent_name, name): tag_id for tag_id, name, parent_name in rows.all()}


async def ensure_tags(session: AsyncSession, *, user_id: int, names: Sequence[str]) -> list[int]:
    """The ids of tags given by name (`Parent/Child` for a child); a tag that does not exist yet is created."""
    ids = []
    for name in names:
        parent_name, _, child_name = name.rpartition("/")
        parent_id = None
        if parent_name:
            parent_id = await session.scalar(
                select(Tag.id).where(Tag.user_id == user_id, Tag.name == parent_name, Tag.parent_id.is_(None))
            )
            if parent_id is None:
                parent_id = (await create_tag(session, user_id=user_id, name=parent_name)).id
        found = await session.scalar(
            select(Tag.id).where(
                Tag.user_id == user_id,
                Tag.name == child_name,
                Tag.parent_id.is_(None) if parent_id is None else Tag.parent_id == parent_id,
            )
        )
        if found is None:
            found = (await create_tag(session, user_id=user_id, name=child_name, parent_id=parent_id)).id
        ids.append(found)
    return ids
