"""Which contacts a list, a bulk action or an export means (docs/contacts.md#listing-and-searching), and the list's sort
orders.

One `ContactFilter` turns into SQL conditions on `contacts`; every consumer (list, count, bulk, export) uses
the same conditions, so "all contacts matching this filter" is the same set everywhere. Sorts are keyset
paginated on (sort key, id): the cursor carries the last row's key, so pages stay correct whatever the sort.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, cast, exists, func, literal, literal_column, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.db.dialect import escape_like
from edm.db.types import UTCDateTime
from edm.errors import BadInput
from edm.models.contacts import Contact, ContactTag, Tag
from edm.models.suppressions import Suppression

MAX_ID = 2**63 - 1
SEARCH_FIELDS = ("name", "first_name", "last_name", "username", "phone", "company", "position",
                 "tiktok_unique_id", "instagram_id", "youtube_id")  # fmt: skip
SEPARATOR = "\x1f"  # between the searched fields: a search term never spans two of them
SORTS = ("id", "created", "updated", "email", "name", "last_activity")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ATTR_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")  # custom attribute keys (docs/data-model.md#contacts-and-tags)


@dataclass(frozen=True)
class ContactFilter:
    """List filters (docs/contacts.md#listing-and-searching). Tags are "any of"; a parent tag includes its children
    unless `explicit_only`; `untagged` adds contacts with no tag at all (OR-ed with the tags when both are given).
    `attributes` are equalities on custom attributes (the value compared as text: `true`, `4.5`, `Oslo`). `suppressed`:
    the contact carries an unsubscribe/bounce/complaint flag or is on the user's or the global list."""

    q: str | None = None
    statuses: tuple[str, ...] = ()
    tag_ids: tuple[int, ...] = ()
    untagged: bool = False
    source: str | None = None
    explicit_only: bool = False
    import_id: int | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    suppressed: bool | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    engaged_since: dt.datetime | None = None
    ids: tuple[int, ...] | None = None  # a selection (bulk actions, export)


async def contact_conditions(session: AsyncSession, *, user_id: int, filters: ContactFilter) -> list[Any]:
    """The WHERE conditions of `filters` for one user's contacts."""
    f = filters
    conditions: list[Any] = [Contact.user_id == user_id]
    if f.ids is not None:
        conditions.append(Contact.id.in_([i for i in f.ids if 0 < i <= MAX_ID]))
    if f.q and f.q.strip():
        pattern = f"%{escape_like(f.q.strip().lower())}%"
        conditions.append(search_text().like(pattern, escape="\\"))
    if f.statuses:
        conditions.append(Contact.status.in_(f.statuses))
    if f.source:
        conditions.append(Contact.source == f.source)
    if f.import_id is not None:
        conditions.append(Contact.import_id == min(f.import_id, MAX_ID))
    if f.created_from is not None:
        conditions.append(Contact.created_at >= f.created_from)
    if f.created_to is not None:
        conditions.append(Contact.created_at < f.created_to)
    if f.engaged_since is not None:
        conditions.append(or_(Contact.last_opened_at >= f.engaged_since, Contact.last_clicked_at >= f.engaged_since))
    if f.suppressed is not None:
        flagged = suppressed_condition(user_id=user_id, now=utc_now())
        conditions.append(flagged if f.suppressed else ~flagged)
    conditions += [attribute_equals(session, key, value) for key, value in f.attributes]
    tag_condition = await _tag_condition(session, user_id=user_id, filters=f)
    if tag_condition is not None:
        conditions.append(tag_condition)
    return conditions


async def _tag_condition(session: AsyncSession, *, user_id: int, filters: ContactFilter) -> Any:
    # An alias, so the subquery never correlates with a statement on contact_tags itself (bulk untag).
    member = ContactTag.__table__.alias("member")
    options: list[Any] = []
    if filters.tag_ids:
        ids = [i for i in filters.tag_ids if 0 < i <= MAX_ID]
        if not filters.explicit_only:
            ids = await expand_tags(session, user_id=user_id, tag_ids=tuple(ids))
        options.append(exists().where(member.c.contact_id == Contact.id, member.c.tag_id.in_(ids)))
    if filters.untagged:
        options.append(~exists().where(member.c.contact_id == Contact.id))
    return or_(*options) if options else None


def search_text() -> Any:
    """lower(email | email_normalized | name | … | youtube_id), joined by U+001F: one LIKE per row instead of
    twelve ILIKEs, and one expression a trigram index can serve (see docs/contacts.md, bench/RESULTS.md):
    CREATE INDEX … ON contacts USING gin ((<this expression>) gin_trgm_ops)."""
    # Constants are SQL literals, not bound parameters: an index expression only matches a query that
    # spells the same constants.
    empty, separator = literal_column("''", String), literal_column(f"'{SEPARATOR}'", String)
    parts: list[Any] = [
        Contact.email,
        Contact.email_normalized,
        *(func.coalesce(getattr(Contact, n), empty) for n in SEARCH_FIELDS),
    ]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined.op("||")(separator).op("||")(part)
    return func.lower(joined, type_=String)


def on_suppression_list(*, user_id: int, now: dt.datetime) -> Any:
    """An entry in force on the user's or the global list names the address or its domain (as in
    docs/tasks.md#selection-and-the-estimate)."""
    return exists().where(
        or_(Suppression.scope == "global", and_(Suppression.scope == "user", Suppression.user_id == user_id)),
        or_(
            and_(Suppression.kind == "address", Suppression.value == Contact.email_normalized),
            and_(Suppression.kind == "domain", Suppression.value == Contact.email_domain),
        ),
        or_(Suppression.expires_at.is_(None), Suppression.expires_at > now),
    )


def suppressed_condition(*, user_id: int, now: dt.datetime) -> Any:
    return or_(
        Contact.unsubscribed_at.is_not(None),
        Contact.hard_bounced_at.is_not(None),
        Contact.complained_at.is_not(None),
        on_suppression_list(user_id=user_id, now=now),
    )


def attribute_equals(session: AsyncSession, key: str, value: str) -> Any:
    """`custom_attributes[key]` equals `value` compared as text (true/false for booleans, 4.5 for numbers)."""
    column = Contact.custom_attributes
    if session.get_bind().dialect.name == "postgresql":
        # Containment (`@>`) of each JSON value the text can stand for, so a GIN index on custom_attributes
        # (jsonb_path_ops) serves it; `->>` comparison alone would read every row.
        options = [column.op("@>")(literal({key: candidate}, JSONB)) for candidate in _json_values(value)]
        return or_(*options)
    path = literal(f"$.{key}", String)  # keys are checked against ^[A-Za-z_][A-Za-z0-9_]{0,63}$
    kind = func.json_type(column, path)
    return or_(
        and_(kind.in_(("text", "integer", "real")), cast(func.json_extract(column, path), String) == value),
        and_(kind.in_(("true", "false")), kind == value),
    )


def _json_values(text: str) -> list[Any]:
    """The JSON values whose text form is `text`: the string itself, and a number or boolean it spells."""
    values: list[Any] = [text]
    if text in ("true", "false"):
        values.append(text == "true")
    try:
        number = json.loads(text)
    except ValueError:
        return values
    if (
        isinstance(number, int | float)
        and not isinstance(number, bool)
        and math.isfinite(number)
        and json.dumps(number) == text
    ):
        values.append(number)
    return values


# --------------------------------------------------------------------------------------------------------
# Sorts and their cursors
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sort:
    """`created`, `-created` (descending), …; `id` is creation order and the default."""

    key: str = "id"
    descending: bool = False

    @classmethod
    def parse(cls, value: str | None) -> Sort:
        text = (value or "id").strip()
        descending = text.startswith("-")
        key = text.removeprefix("-")
        if key not in SORTS:
            raise BadInput.field("sort", f"must be one of {', '.join(SORTS)} (prefix '-' for descending)")
        return cls(key, descending)


def sort_expression(session: AsyncSession, sort: Sort) -> Any:
    """The SQL key of a sort (NULLs folded into '' or the epoch, so keyset comparisons stay total)."""
    if sort.key == "created":
        return Contact.created_at
    if sort.key == "updated":
        return Contact.updated_at
    if sort.key == "email":
        return Contact.email_normalized
    if sort.key == "name":
        # A literal '' (not a bound parameter), as in PostgreSQL's index ix_contacts_user_id_name_id.
        return func.coalesce(Contact.name, literal_column("''", String))
    epoch = literal(EPOCH, UTCDateTime())
    times = [
        func.coalesce(c, epoch)
        for c in (Contact.last_sent_at, Contact.last_opened_at, Contact.last_clicked_at, Contact.last_replied_at)
    ]
    greatest = func.greatest if session.get_bind().dialect.name == "postgresql" else func.max
    return greatest(*times, type_=UTCDateTime())


def sort_value(contact: Contact, sort: Sort) -> Any:
    """The row's key as `sort_expression` computes it, in Python (for the next cursor)."""
    if sort.key == "created":
        return contact.created_at
    if sort.key == "updated":
        return contact.updated_at
    if sort.key == "email":
        return contact.email_normalized
    if sort.key == "name":
        return contact.name or ""
    times = [
        t
        for t in (contact.last_sent_at, contact.last_opened_at, contact.last_clicked_at, contact.last_replied_at)
        if t is not None
    ]
    return max(times, default=EPOCH)


def keyset(session: AsyncSession, sort: Sort, cursor: tuple[int, Any] | None) -> tuple[list[Any], list[Any]]:
    """(conditions after the cursor, ORDER BY) for a sort."""
    if sort.key == "id":
        by_id: list[Any] = [Contact.id.desc() if sort.descending else Contact.id]
        if cursor is None:
            return [], by_id
        return [Contact.id < cursor[0] if sort.descending else Contact.id > cursor[0]], by_id
    key = sort_expression(session, sort)
    order: list[Any] = [key.desc(), Contact.id.desc()] if sort.descending else [key, Contact.id]
    if cursor is None:
        return [], order
    after_id, value = cursor
    if sort.key in ("created", "updated", "last_activity"):
        value = literal(value, UTCDateTime())
    if sort.descending:
        return [or_(key < value, and_(key == value, Contact.id < after_id))], order
    return [or_(key > value, and_(key == value, Contact.id > after_id))], order


def encode_sort_cursor(contact: Contact, sort: Sort) -> str:
    body: dict[str, Any] = {"after": contact.id}
    if sort.key != "id":
        value = sort_value(contact, sort)
        body["k"] = value.isoformat() if isinstance(value, dt.datetime) else value
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def decode_sort_cursor(cursor: str | None, sort: Sort) -> tuple[int, Any] | None:
    """(last id, last key) of a cursor this sort issued; another sort's cursor is refused (422)."""
    if not cursor:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
        after = body["after"]
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= MAX_ID:
            raise ValueError
        if sort.key == "id":
            return after, None
        value = body["k"]
        if sort.key in ("created", "updated", "last_activity"):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise ValueError
            return after, parsed
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError
        return after, value
    except (ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError):
        raise BadInput.field("cursor", "is not a valid cursor for this sort") from None


def parse_attributes(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """`attr.<key>=<value>` query parameters (or a JSON object) → checked (key, value) pairs."""
    out = []
    for key, value in pairs:
        if not ATTR_KEY.fullmatch(key):
            raise BadInput.field(f"attr.{key[:64]}", "key must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$")
        if not isinstance(value, str) or "\x00" in value or len(value) > 2000:
            raise BadInput.field(f"attr.{key}", "must be text of at most 2000 characters")
        out.append((key, value))
    if len(out) > 20:
        raise BadInput.field("attr", "at most 20 attribute filters")
    return tuple(out)


async def expand_tags(session: AsyncSession, *, user_id: int, tag_ids: tuple[int, ...]) -> list[int]:
    """A parent tag stands for itself and all its children (membership in a child implies the parent)."""
    if not tag_ids:
        return []
    children = await session.scalars(select(Tag.id).where(Tag.user_id == user_id, Tag.parent_id.in_(tag_ids)))
    return sorted(set(tag_ids) | set(children))
