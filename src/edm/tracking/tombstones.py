"""Unsubscribe tombstones (docs/tracking.md#after-a-task-is-deleted): deleting a task leaves, for every SubTask that was
mailed (sent, or uncertain: it may have been), its public id → owner, contact and address for 365 days, so
the unsubscribe link in mail already delivered keeps working after the SubTask row is gone. A daily retention job
forgets the expired ones. Services: they flush, entry points commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import any_of
from edm.db.types import UTCDateTime
from edm.models.contacts import Contact
from edm.models.suppressions import Suppression
from edm.models.tasks import SubTask, Task
from edm.models.tracking import UnsubscribeTombstone
from edm.vocabulary.tasks import SendState

LIFETIME = dt.timedelta(days=365)
# States in which mail may be in someone's inbox: their unsubscribe links must keep working.
MAILED_STATES = (SendState.SENT, SendState.UNCERTAIN)
_COLUMNS = ("subtask_public_id", "user_id", "contact_id", "recipient_email", "task_name", "expires_at")


async def write_for_task(
    session: AsyncSession, task: Task, *, now: dt.datetime, subtask_ids: Sequence[int] | None = None
) -> int:
    """One INSERT … SELECT: a tombstone for each sent or uncertain SubTask of `task` (only those of `subtask_ids`
    when given: a batch of a background deletion). Call it before the SubTasks are deleted. Returns how many were
    written."""
    where = [SubTask.task_id == task.id, SubTask.send_state.in_(MAILED_STATES)]
    if subtask_ids is not None:
        where.append(any_of(session, SubTask.id, subtask_ids))
    mailed = select(
        SubTask.public_id,
        SubTask.user_id,
        SubTask.contact_id,
        SubTask.recipient_email,
        literal(task.name[:200], String(200)),
        literal(now + LIFETIME, UTCDateTime()),
    ).where(*where)
    result = await session.execute(
        _insert(session, UnsubscribeTombstone).from_select(_COLUMNS, mailed).on_conflict_do_nothing()
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def find(session: AsyncSession, subtask_public_id: uuid.UUID, *, now: dt.datetime) -> UnsubscribeTombstone | None:
    """The live (unexpired) tombstone of a deleted SubTask, or None."""
    return await session.scalar(
        select(UnsubscribeTombstone).where(
            UnsubscribeTombstone.subtask_public_id == subtask_public_id, UnsubscribeTombstone.expires_at > now
        )
    )


async def unsubscribe(session: AsyncSession, tombstone: UnsubscribeTombstone, *, now: dt.datetime, scope: str) -> None:
    """What a one-click unsubscribe does once its task is gone: the address goes on the list the policy names
    (`suppression.unsubscribe_scope`: the owner's list by default, the global list, or none when `off`), with
    reason `unsubscribed`; the contact, if it still exists, is marked unsubscribed. Idempotent: an address
    already on that list keeps its first entry, a contact already marked keeps its first time."""
    if scope in ("user", "global"):
        owner = tombstone.user_id if scope == "user" else None
        note = f"one-click unsubscribe after the task {tombstone.task_name or ''!r} was deleted"[:500]
        row = {
            "scope": scope,
            "user_id": owner,
            "owner_key": owner or 0,
            "kind": "address",
            "value": tombstone.recipient_email,
            "reason": "unsubscribed",
            "note": note,
            "created_at": now,
            "updated_at": now,
        }
        await session.execute(
            _insert(session, Suppression)
            .values(row)
            .on_conflict_do_nothing(index_elements=["scope", "owner_key", "kind", "value"])
        )
    if tombstone.contact_id is not None:
        await session.execute(
            update(Contact)
            .where(
                Contact.id == tombstone.contact_id,
                Contact.user_id == tombstone.user_id,
                Contact.unsubscribed_at.is_(None),
            )
            .values(unsubscribed_at=now)
            .execution_options(synchronize_session=False)
        )
    await session.flush()


def _insert(session: AsyncSession, model: Any) -> Any:
    """The dialect's INSERT (both have ON CONFLICT DO NOTHING)."""
    name = session.bind.dialect.name if session.bind is not None else "sqlite"
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(model)
