"""Bulk actions on contacts (docs/contacts.md#bulk-actions): tag, untag, set status or delete a selection of ids
(≤ 10,000) or every contact matching a filter.

Each action is one set-based statement per tag (INSERT … SELECT, DELETE … WHERE contact_id IN (SELECT …),
UPDATE … WHERE, DELETE … WHERE) over the same conditions the list uses, so a million contacts cost one
statement, never a loop over rows. Any action may name the count the user saw (`expected_count`): when the
selection matches another count it is refused with 409. A delete by filter must name it:
the count is checked before the delete and the deleted rows are counted again, and any difference rolls
the whole action back with 409, so a filter whose result changed meanwhile never deletes more than was shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.contacts.common import require_own
from edm.contacts.fields import check_status
from edm.contacts.filters import ContactFilter, contact_conditions
from edm.contacts.schemas import BulkOut
from edm.db.base import BigId
from edm.db.dialect import dialect_insert
from edm.db.types import UTCDateTime
from edm.errors import BadInput, Conflict
from edm.models.contacts import Contact, ContactStatus, ContactTag, Tag

ACTIONS = ("tag", "untag", "set_status", "delete")
MAX_IDS = 10_000


@dataclass(frozen=True)
class BulkAction:
    action: str
    ids: tuple[int, ...] | None = None  # a selection, or None for "every contact matching `filters`"
    filters: ContactFilter = ContactFilter()
    tag_ids: tuple[int, ...] = ()
    status: str | None = None
    expected_count: int | None = None


async def run_bulk(session: AsyncSession, *, user_id: int, request: BulkAction) -> BulkOut:
    """Apply the action; returns how many contacts it matched and how many things it changed."""
    filters = await _selection(session, user_id=user_id, request=request)
    conditions = await contact_conditions(session, user_id=user_id, filters=filters)
    matched = int(await session.scalar(select(func.count()).select_from(Contact).where(*conditions)) or 0)
    if request.expected_count is not None and request.expected_count != matched:
        raise _count_changed(matched)  # any action: the selection the user confirmed changed meanwhile
    if request.action == "tag":
        tags = await _tags(session, user_id=user_id, request=request)
        changed = await _tag(session, conditions, tags)
    elif request.action == "untag":
        tags = await _tags(session, user_id=user_id, request=request)
        changed = await _untag(session, conditions, tags)
    elif request.action == "set_status":
        if request.status is None:
            raise BadInput.field("status", "is required for set_status")
        changed = await _set_status(session, conditions, check_status(request.status))
    else:
        changed = await _delete(session, conditions, matched=matched, request=request)
    return BulkOut(action=request.action, matched=matched, changed=changed)


async def _selection(session: AsyncSession, *, user_id: int, request: BulkAction) -> ContactFilter:
    if request.action not in ACTIONS:
        raise BadInput.field("action", f"must be one of {', '.join(ACTIONS)}")
    if request.ids is None:
        return request.filters
    if request.filters != ContactFilter():
        raise BadInput.field("filter", "give either ids or a filter, not both")
    if not 1 <= len(request.ids) <= MAX_IDS:
        raise BadInput.field("ids", f"must list 1 to {MAX_IDS} contacts")
    ids = await require_own(session, Contact, user_id=user_id, ids=request.ids, field="ids")
    return ContactFilter(ids=tuple(ids))


async def _tags(session: AsyncSession, *, user_id: int, request: BulkAction) -> list[int]:
    if not request.tag_ids:
        raise BadInput.field("tag_ids", f"at least one tag is required for {request.action}")
    return await require_own(session, Tag, user_id=user_id, ids=request.tag_ids, field="tag_ids")


async def _tag(session: AsyncSession, conditions: Sequence[Any], tag_ids: Sequence[int]) -> int:
    now = utc_now()
    added = 0
    for tag_id in tag_ids:
        rows = select(Contact.id, literal(tag_id, BigId), literal(now, UTCDateTime())).where(*conditions)
        stmt = (
            dialect_insert(session, ContactTag.__table__)
            .from_select(["contact_id", "tag_id", "created_at"], rows)
            .on_conflict_do_nothing(index_elements=["contact_id", "tag_id"])
        )
        added += _rowcount(await session.execute(stmt))
    return added


async def _untag(session: AsyncSession, conditions: Sequence[Any], tag_ids: Sequence[int]) -> int:
    stmt = delete(ContactTag).where(
        ContactTag.tag_id.in_(tag_ids), ContactTag.contact_id.in_(select(Contact.id).where(*conditions))
    )
    return _rowcount(await session.execute(stmt.execution_options(synchronize_session=False)))


async def _set_status(session: AsyncSession, conditions: Sequence[Any], status: str) -> int:
    stmt = (
        update(Contact)
        .where(*conditions, Contact.status != status)
        .values(status=ContactStatus(status).value, updated_at=utc_now())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(await session.execute(stmt))


async def _delete(session: AsyncSession, conditions: Sequence[Any], *, matched: int, request: BulkAction) -> int:
    """Memberships go with the contacts (ON DELETE CASCADE); past SubTasks keep their address."""
    expected = request.expected_count
    if request.ids is None and expected is None:
        raise BadInput.field("expected_count", "is required to delete by filter: give the count you saw")
    if expected is not None and expected != matched:
        raise _count_changed(matched)
    stmt = delete(Contact).where(*conditions).execution_options(synchronize_session=False)
    deleted = _rowcount(await session.execute(stmt))
    if expected is not None and deleted != expected:
        raise _count_changed(deleted)  # the entry point rolls the delete back
    return deleted


def _count_changed(current: int) -> Conflict:
    return Conflict(
        f"the filter now matches {current} contacts: review them and send that expected_count",
        details=[{"field": "expected_count", "message": f"current count is {current}"}],
        current_count=current,
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
