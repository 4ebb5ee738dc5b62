"""Whom an unsubscribe link names: its SubTask, or, once the SubTask's task was deleted, the tombstone the
SubTask left (kept 365 days, `tracking.tombstones`)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.models.tasks import SubTask, Task
from edm.models.tracking import UnsubscribeTombstone
from edm.tracking import tombstones
from edm.vocabulary.tasks import TaskKind


@dataclass(frozen=True, slots=True)
class Recipient:
    """The SubTask an unsubscribe token names, or the tombstone it left when its task was deleted."""

    public_id: str
    email: str
    tombstone: UnsubscribeTombstone | None = None
    is_test: bool = False  # a SubTask of a template test send: the page says so, nothing is recorded


async def recipient_of(session: AsyncSession, subtask_public_id: uuid.UUID, *, now: dt.datetime) -> Recipient | None:
    """The SubTask, else its unexpired tombstone, else None."""
    row = (
        await session.execute(
            select(SubTask.recipient_email, Task.kind)
            .join(Task, Task.id == SubTask.task_id)
            .where(SubTask.public_id == subtask_public_id)
        )
    ).first()
    if row is not None:
        return Recipient(str(subtask_public_id), row.recipient_email, is_test=row.kind == TaskKind.TEST)
    tombstone = await tombstones.find(session, subtask_public_id, now=now)
    return None if tombstone is None else Recipient(str(subtask_public_id), tombstone.recipient_email, tombstone)
