"""Contacts and tags (SPEC §4.3, §13.1, §13.2): the business rules.

Every function takes the session of its caller and never commits (only entry points do). Every query is
scoped by `user_id`; an object of another user is "not found". Validation lives here, not only in the API
schemas, so the CLI and the importer enforce exactly the same rules.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edm.addresses import normalize_email
from edm.clock import utc_now
from edm.contacts.filters import ATTR_KEY, ContactFilter, Sort, contact_conditions, keyset
from edm.db.dialect import dialect_insert, dialect_name
from edm.db.owned import get_own
from edm.errors import BadInput, Conflict, InUse
from edm.models.contacts import Contact, ContactStatus, ContactTag, Tag
from edm.models.tasks import Task
from edm.paging import Page
from edm.vocabulary.tasks import TaskStatus

MAX_ID = 2**63 - 1  # BIGINT: larger ids cannot exist, and PostgreSQL would refuse to compare them
TEXT_FIELDS = ("name", "first_name", "last_name", "username", "phone", "company", "position",
               "tiktok_unique_id", "instagram_id", "youtube_id")  # fmt: skip
TEXT_LIMITS = {**dict.fromkeys(TEXT_FIELDS, 200), "source": 100}
WRITABLE_FIELDS = frozenset({"email", "status", "custom_attributes", "timezone", *TEXT_LIMITS})
MAX_ATTR_KEYS, MAX_ATTR_BYTES, MAX_ATTR_TEXT = 100, 16 * 1024, 2000
TAG_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
DEFAULT_TAG_COLOR = "#3b82f6"
IMPORT_MODES = ("skip_existing", "update_existing")
# Task statuses whose recipient rule may still change or run: a tag they name cannot be deleted (§13.2).
RULE_LOCKING_STATUSES = (TaskStatus.DRAFT, TaskStatus.SCHEDULED)


# --------------------------------------------------------------------------------------------------------
# Field validation (shared by the API, the CLI and the importer)
# --------------------------------------------------------------------------------------------------------


def check_text(field: str, value: Any, limit: int, *, required: bool = False) -> str | None:
    """Trimmed text of at most `limit` characters; "" becomes None. NUL is refused (PostgreSQL rejects it)."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadInput.field(field, "must be a string")
    text = value.strip()
    if "\x00" in text:
        raise BadInput.field(field, "must not contain NUL characters")
    if len(text) > limit:
        raise BadInput.field(field, f"must be at most {limit} characters")
    if required and not text:
        raise BadInput.field(field, "must not be empty")
    return text or None


def check_status(value: Any) -> str:
    if value not in set(ContactStatus):
        raise BadInput.field("status", f"must be one of {', '.join(ContactStatus)}")
    return str(value)


def check_timezone(value: Any) -> str | None:
    text = check_text("timezone", value, 64)
    if text is None:
        return None
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput.field("timezone", f"{text!r} is not an IANA time zone") from None
    return text


def check_attributes(value: Any) -> dict[str, Any]:
    """§4.3: keys `^[A-Za-z_][A-Za-z0-9_]{0,63}$`; scalar values; ≤ 100 keys and ≤ 16 KB."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput.field("custom_attributes", "must be an object")
    if len(value) > MAX_ATTR_KEYS:
        raise BadInput.field("custom_attributes", f"must have at most {MAX_ATTR_KEYS} keys")
    for key, item in value.items():
        if not isinstance(key, str) or not ATTR_KEY.fullmatch(key):
            raise BadInput.field(f"custom_attributes.{key}", "key must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$")
        _check_attr_value(f"custom_attributes.{key}", item)
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_ATTR_BYTES:
        raise BadInput.field("custom_attributes", f"must be at most {MAX_ATTR_BYTES} bytes as JSON")
    return dict(value)


def _check_attr_value(field: str, item: Any) -> None:
    if item is None or isinstance(item, bool):
        return
    if isinstance(item, int):
        if abs(item) > MAX_ID:
            raise BadInput.field(field, "number is out of range")
        return
    if isinstance(item, float):
        if not math.isfinite(item):
            raise BadInput.field(field, "number must be finite")
        return
    if isinstance(item, str):
        if "\x00" in item:
            raise BadInput.field(field, "must not contain NUL characters")
        if len(item) > MAX_ATTR_TEXT:
            raise BadInput.field(field, f"must be at most {MAX_ATTR_TEXT} characters")
        return
    raise BadInput.field(field, "must be a string, number, boolean or null")


def clean_contact_values(values: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Validate and normalize contact fields into column values. `partial` for updates (only given keys)."""
    unknown = sorted(set(values) - WRITABLE_FIELDS)
    if unknown:
        raise BadInput.field(unknown[0], "unknown field")
    out: dict[str, Any] = {}
    if "email" in values or not partial:
        out.update(_email_columns(values.get("email")))
    for field, limit in TEXT_LIMITS.items():
        if field in values:
            out[field] = check_text(field, values[field], limit)
    if "status" in values:
        out["status"] = check_status(values["status"])
    if "custom_attributes" in values:
        out["custom_attributes"] = check_attributes(values["custom_attributes"])
    if "timezone" in values:
        out["timezone"] = check_timezone(values["timezone"])
    return out


def _email_columns(value: Any) -> dict[str, str]:
    if not isinstance(value, str) or not value.strip():
        raise BadInput.field("email", "is required")
    if len(value.strip()) > 320 or "\x00" in value:
        raise BadInput.field("email", "is not a valid email address")
    email = normalize_email(value, field="email")
    return {"email": email.original, "email_normalized": email.normalized, "email_domain": email.domain}


# --------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------


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


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def require_own(session: AsyncSession, model: Any, *, user_id: int, ids: Iterable[int], field: str) -> list[int]:
    """The given ids, deduplicated, when all are the user's; else 422 naming up to 10 missing ones (§21)."""
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


def _after(page: Page) -> int:
    """The cursor's id, clamped: a forged cursor beyond BIGINT must not reach the database."""
    return min(page.after_id or 0, MAX_ID)


# --------------------------------------------------------------------------------------------------------
# Contacts
# --------------------------------------------------------------------------------------------------------


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
    return contact


async def update_contact(
    session: AsyncSession, *, user_id: int, contact_id: int, changes: Mapping[str, Any]
) -> Contact:
    """Change the given fields (custom_attributes is replaced as a whole). A new email re-checks uniqueness."""
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    data = clean_contact_values(changes, partial=True)
    if "email" in data and data["email_normalized"] != contact.email_normalized:
        await _refuse_duplicate(session, user_id=user_id, email_normalized=data["email_normalized"])
    if not await saved(session, lambda: _assign(contact, data)):
        await _refuse_duplicate(session, user_id=user_id, email_normalized=data.get("email_normalized", ""))
        raise Conflict("contact could not be saved: it changed concurrently, retry")
    return contact


def _assign(obj: Any, data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        setattr(obj, key, value)


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
        cursor = (_after(page), None)
    after, order = keyset(session, sort, cursor)
    query = select(Contact).where(*conditions, *after).order_by(*order).limit(page.limit + 1)
    return list(await session.scalars(query))


async def count_contacts(session: AsyncSession, *, user_id: int, filters: ContactFilter = ContactFilter()) -> int:
    conditions = await contact_conditions(session, user_id=user_id, filters=filters)
    return int(await session.scalar(select(func.count()).select_from(Contact).where(*conditions)) or 0)


async def contact_tags(session: AsyncSession, contact_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Per contact: its explicit tags and their implied parents (`implied: true`), for display (§13.1)."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
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
        out[contact_id].append({"id": tag_id, "name": name, "parent_id": parent_id, "implied": False})
        if parent_id is not None:
            implied[contact_id][parent_id] = parent_name
    for contact_id, parents in implied.items():
        for tag_id, name in parents.items():
            if tag_id not in explicit[contact_id]:
                out[contact_id].append({"id": tag_id, "name": name, "parent_id": None, "implied": True})
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


async def tag_contact(session: AsyncSession, *, user_id: int, contact_id: int, tag_ids: Sequence[int]) -> int:
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    tags = await require_own(session, Tag, user_id=user_id, ids=tag_ids, field="tag_ids")
    return await link_tags(session, [(contact.id, tag_id) for tag_id in tags])


async def untag_contact(session: AsyncSession, *, user_id: int, contact_id: int, tag_id: int) -> None:
    """Remove one explicit membership; removing one that does not exist is not an error."""
    contact = await get_contact(session, user_id=user_id, contact_id=contact_id)
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    await session.execute(delete(ContactTag).where(ContactTag.contact_id == contact.id, ContactTag.tag_id == tag.id))


# --------------------------------------------------------------------------------------------------------
# Bulk insert (the importer's writer)
# --------------------------------------------------------------------------------------------------------


@dataclass
class BulkCounts:
    created: int = 0
    updated: int = 0
    skipped: int = 0  # existing contacts left alone (skip_existing), or a repeat inside `rows`


# Columns an update_existing import may overwrite; NULL (an empty cell) keeps the stored value.
_UPDATABLE = (*TEXT_FIELDS, "timezone")


async def bulk_insert_contacts(
    session: AsyncSession,
    *,
    user_id: int,
    rows: list[dict[str, Any]],
    mode: str = "skip_existing",
    tag_ids: Sequence[int] = (),
    row_tag_ids: Sequence[Sequence[int]] | None = None,
    import_id: int | None = None,
) -> BulkCounts:
    """Set-based insert of validated rows (the output of `clean_contact_values`), one statement per batch.

    skip_existing: ON CONFLICT DO NOTHING. update_existing: ON CONFLICT DO UPDATE where non-empty values
    overwrite, custom attributes are merged and tags are added. `tag_ids` go to every created or updated
    contact, `row_tag_ids[i]` to the contact of `rows[i]`. Tag ids must already be checked as the user's.
    `import_id` marks the contacts it creates or updates (the list filter `import_id`).
    """
    if mode not in IMPORT_MODES:
        raise BadInput.field("mode", f"must be one of {', '.join(IMPORT_MODES)}")
    counts = BulkCounts()
    firsts: dict[str, int] = {}
    for index, row in enumerate(rows):  # one statement may not touch a row twice (PostgreSQL refuses)
        firsts.setdefault(row["email_normalized"], index)
    counts.skipped = len(rows) - len(firsts)
    order = list(firsts.values())
    existing = await _existing_emails(session, user_id=user_id, emails=list(firsts))
    ids = await _upsert(session, user_id=user_id, rows=[rows[i] for i in order], mode=mode, import_id=import_id)
    counts.created = sum(1 for email in ids if email not in existing)
    counts.updated = len(ids) - counts.created
    counts.skipped += len(order) - len(ids)
    pairs = [
        (ids[rows[i]["email_normalized"]], t)
        for i in order
        if rows[i]["email_normalized"] in ids
        for t in (*tag_ids, *(row_tag_ids[i] if row_tag_ids else ()))
    ]
    await link_tags(session, pairs)
    return counts


async def _existing_emails(session: AsyncSession, *, user_id: int, emails: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in chunks(emails, 5000):
        found.update(
            await session.scalars(
                select(Contact.email_normalized).where(Contact.user_id == user_id, Contact.email_normalized.in_(chunk))
            )
        )
    return found


async def _upsert(
    session: AsyncSession, *, user_id: int, rows: list[dict[str, Any]], mode: str, import_id: int | None
) -> dict[str, int]:
    """Returns {normalized email: id} of the rows written (inserted, or updated in update_existing)."""
    now = utc_now()
    # Status is NOT NULL: rows that set it and rows that do not need different DO UPDATE clauses.
    groups: dict[bool, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row.get("status") is not None].append(_full_row(row, user_id=user_id, now=now, import_id=import_id))
    written: dict[str, int] = {}
    for sets_status, group in groups.items():
        # Parameter sets, not .values(rows): SQLAlchemy pages them into multi-row INSERTs under the driver's
        # bind-parameter limit from one cached statement (compiling 1,000-row VALUES took ~75 % of import time).
        stmt = _upsert_statement(session, mode=mode, sets_status=sets_status)
        written.update({email: id_ for id_, email in (await session.execute(stmt, group)).all()})
    return written


def _full_row(row: Mapping[str, Any], *, user_id: int, now: Any, import_id: int | None) -> dict[str, Any]:
    """Every parameter set of one multi-row INSERT needs the same keys."""
    full = {field: row.get(field) for field in (*TEXT_FIELDS, "timezone", "email", "email_normalized", "email_domain")}
    full.update(
        user_id=user_id,
        source=row.get("source") or "import",
        status=row.get("status") or "active",
        custom_attributes=row.get("custom_attributes") or {},
        soft_bounce_streak=0,
        import_id=import_id,
        imported_at=now,
        created_at=now,
        updated_at=now,
    )
    return full


def _upsert_statement(session: AsyncSession, *, mode: str, sets_status: bool) -> Any:
    table = Contact.__table__
    stmt = dialect_insert(session, table)
    keys = ["user_id", "email_normalized"]
    if mode == "skip_existing":
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    else:
        excluded = stmt.excluded
        changes: dict[str, Any] = {c: func.coalesce(excluded[c], table.c[c]) for c in _UPDATABLE}
        changes.update(
            custom_attributes=_merge_json(session, table.c.custom_attributes, excluded.custom_attributes),
            import_id=func.coalesce(excluded.import_id, table.c.import_id),
            imported_at=excluded.imported_at,
            updated_at=excluded.updated_at,
        )
        if sets_status:
            changes["status"] = excluded.status
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_=changes)
    return stmt.returning(table.c.id, table.c.email_normalized)


def _merge_json(session: AsyncSession, stored: Any, incoming: Any) -> Any:
    """Incoming attributes win key by key; other stored keys stay (empty cells are never in `incoming`)."""
    if dialect_name(session) == "postgresql":
        return stored.op("||")(incoming)
    return func.json_patch(stored, incoming)


# --------------------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------------------


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
    """Rename, recolor or describe. Moving to another parent is a separate operation (§13.2 move)."""
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
    if not await saved(session, lambda: _assign(tag, data)):
        raise Conflict(
            "a tag with this name already exists here", details=[{"field": "name", "message": "already exists"}]
        )
    return tag


async def move_tag(session: AsyncSession, *, user_id: int, tag_id: int, parent_id: int | None) -> Tag:
    """Re-parent a tag (§13.2): under one of the user's root tags, or to the root level (`None`). Only roots
    may have children, so a tag that has children cannot go under another (422). Names stay sibling-unique."""
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
    if not await saved(session, lambda: _assign(tag, {"parent_id": parent_id, "updated_at": utc_now()})):
        raise Conflict(
            "a tag with this name already exists here", details=[{"field": "name", "message": "already exists"}]
        )
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


async def list_tags(session: AsyncSession, *, user_id: int, page: Page) -> list[dict[str, Any]]:
    """One page of tags by id with member counts (limit + 1 rows, for page_of)."""
    tags = list(
        await session.scalars(
            select(Tag).where(Tag.user_id == user_id, Tag.id > _after(page)).order_by(Tag.id).limit(page.limit + 1)
        )
    )
    return await _with_counts(session, tags)


async def count_tags(session: AsyncSession, *, user_id: int) -> int:
    return int(await session.scalar(select(func.count()).select_from(Tag).where(Tag.user_id == user_id)) or 0)


async def tag_detail(session: AsyncSession, *, user_id: int, tag_id: int) -> dict[str, Any]:
    tag = await get_tag(session, user_id=user_id, tag_id=tag_id)
    return (await _with_counts(session, [tag]))[0]


async def tag_tree(session: AsyncSession, *, user_id: int) -> list[dict[str, Any]]:
    """Every tag of the user as roots with their `children`, each with counts (no paging: depth ≤ 2)."""
    tags = list(await session.scalars(select(Tag).where(Tag.user_id == user_id).order_by(Tag.name, Tag.id)))
    items = await _with_counts(session, tags)
    children: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        if item["parent_id"] is not None:
            children[item["parent_id"]].append(item)
    return [{**item, "children": children.get(item["id"], [])} for item in items if item["parent_id"] is None]


async def _with_counts(session: AsyncSession, tags: list[Tag]) -> list[dict[str, Any]]:
    """`member_count`: explicit members; `total_member_count`: distinct members of the tag and its children."""
    ids = [t.id for t in tags]
    explicit = await _explicit_counts(session, ids)
    roots = [t.id for t in tags if t.parent_id is None]
    totals = await _root_totals(session, roots)
    out = []
    for tag in tags:
        item = tag_dict(tag)
        item["member_count"] = explicit.get(tag.id, 0)
        item["total_member_count"] = totals.get(tag.id, 0) if tag.parent_id is None else item["member_count"]
        out.append(item)
    return out


async def _explicit_counts(session: AsyncSession, tag_ids: list[int]) -> dict[int, int]:
    if not tag_ids:
        return {}
    rows = await session.execute(
        select(ContactTag.tag_id, func.count()).where(ContactTag.tag_id.in_(tag_ids)).group_by(ContactTag.tag_id)
    )
    return {tag_id: count for tag_id, count in rows.all()}


async def _root_totals(session: AsyncSession, root_ids: list[int]) -> dict[int, int]:
    if not root_ids:
        return {}
    root = func.coalesce(Tag.parent_id, Tag.id)
    rows = await session.execute(
        select(root, func.count(func.distinct(ContactTag.contact_id)))
        .join(Tag, Tag.id == ContactTag.tag_id)
        .where(root.in_(root_ids))
        .group_by(root)
    )
    return {root_id: count for root_id, count in rows.all()}


def tag_dict(tag: Tag) -> dict[str, Any]:
    return {
        "id": tag.id,
        "name": tag.name,
        "description": tag.description,
        "color": tag.color,
        "parent_id": tag.parent_id,
        "is_split_group": tag.is_split_group,
        "created_at": tag.created_at,
        "updated_at": tag.updated_at,
    }


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


async def tag_ids_by_name(session: AsyncSession, *, user_id: int) -> dict[tuple[str | None, str], int]:
    """All of a user's tags keyed by (parent name or None, name): the importer's `Parent/Child` lookup."""
    parent = Tag.__table__.alias("parent")
    rows = await session.execute(
        select(Tag.id, Tag.name, parent.c.name)
        .outerjoin(parent, parent.c.id == Tag.parent_id)
        .where(Tag.user_id == user_id)
    )
    return {(parent_name, name): tag_id for tag_id, name, parent_name in rows.all()}
