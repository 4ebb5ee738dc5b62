"""Deleting a task's rows (docs/tasks.md#deleting-a-task). A small task goes at once, in the request that deletes it. A
large one is marked `deleting`, which hides it from every list and lookup at once, and the worker's `deletions` job
removes its rows in batches, each in a transaction of its own: one DELETE of 10,000,000 SubTasks held its locks
and its request for minutes, and its statement-level counter triggers aggregated all those rows in one go
(bench/RESULTS.md, "Past a million"). Services flush; `drain`, the worker's job, commits a transaction per batch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.dialect import any_of, is_postgresql
from edm.db.session import unit_of_work
from edm.models.events import Event
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.tracking import tombstones
from edm.vocabulary.tasks import TaskStatus

# A task of at most this many SubTasks is deleted in the request itself (well under a second); a larger one in the
# background, BATCH SubTasks (with their attempts and events) per transaction.
INLINE_ROWS = 10_000
BATCH = 10_000


async def fits_inline(session: AsyncSession, task_id: int) -> bool:
    """Whether the task has at most INLINE_ROWS SubTasks (reads at most one more row than that)."""
    first = select(SubTask.id).where(SubTask.task_id == task_id).limit(INLINE_ROWS + 1).subquery()
    return int(await session.scalar(select(func.count()).select_from(first)) or 0) <= INLINE_ROWS


async def delete_rows(session: AsyncSession, task: Task, *, now: dt.datetime) -> None:
    """All of the task's rows in this transaction, then the task itself (its templates, links, counters and
    status history go with it by cascade)."""
    # Mail already delivered keeps its unsubscribe link working for 365 days (docs/tracking.md#after-a-task-is-deleted):
    # written before the rows go.
    await tombstones.write_for_task(session, task, now=now)
    # The task's events go with it (docs/states.md#task-transitions; matched events carry task_id; the index on it
    # serves this delete).
    await session.execute(delete(Event).where(Event.task_id == task.id))
    await session.execute(
        delete(SendAttempt).where(SendAttempt.subtask_id.in_(select(SubTask.id).where(SubTask.task_id == task.id)))
    )
    await session.execute(delete(SubTask).where(SubTask.task_id == task.id))
    await session.delete(task)
    await session.flush()


async def next_deleting(session: AsyncSession) -> Task | None:
    """A task waiting to be deleted, locked for this transaction; on PostgreSQL one that no other worker holds
    (SKIP LOCKED), so several workers delete different tasks side by side instead of queueing on one."""
    query = select(Task).where(Task.status == TaskStatus.DELETING).order_by(Task.id).limit(1)
    query = query.with_for_update(skip_locked=True) if is_postgresql(session) else query
    return await session.scalar(query)


@dataclass
class Drained:
    subtasks: int = 0  # SubTasks removed
    tasks: list[int] = field(default_factory=list)  # the tasks that went completely


class Batch(NamedTuple):
    subtasks: int  # SubTasks removed by this batch
    finished: bool  # the task itself is gone


async def delete_batch(session: AsyncSession, task: Task, *, now: dt.datetime, size: int | None = None) -> Batch:
    """Up to `size` of the deleting task's SubTasks, with their tombstones, attempts and events; once none is
    left, its remaining events and then the task itself. `size`: BATCH unless given."""
    size = size or BATCH
    ids = list(await session.scalars(select(SubTask.id).where(SubTask.task_id == task.id).limit(size)))
    if not ids:
        await _delete_events(session, task.id, size)
        if await session.scalar(select(Event.id).where(Event.task_id == task.id).limit(1)) is not None:
            return Batch(0, False)
        await session.delete(task)
        await session.flush()
        return Batch(0, True)
    await tombstones.write_for_task(session, task, now=now, subtask_ids=ids)
    await session.execute(delete(Event).where(any_of(session, Event.subtask_id, ids)))
    await session.execute(delete(SendAttempt).where(any_of(session, SendAttempt.subtask_id, ids)))
    await session.execute(delete(SubTask).where(any_of(session, SubTask.id, ids)))
    return Batch(len(ids), False)


async def drain(sessionmaker: async_sessionmaker[AsyncSession], *, should_stop: Callable[[], bool]) -> Drained:
    """What the worker's `deletions` job runs: batches, each in its own transaction, until no task is left to
    delete or `should_stop()`. Entry point: it commits."""
    drained = Drained()
    while not should_stop():
        async with unit_of_work(sessionmaker) as session:
            task = await next_deleting(session)
            if task is None:
                break
            task_id = task.id
            batch = await delete_batch(session, task, now=utc_now())
        drained.subtasks += batch.subtasks
        if batch.finished:
            drained.tasks.append(task_id)
    return drained


async def _delete_events(session: AsyncSession, task_id: int, size: int) -> None:
    """Events of the task that name no SubTask (there should be none; a batch keeps it bounded if there are)."""
    batch = select(Event.id).where(Event.task_id == task_id).limit(size).scalar_subquery()
    await session.execute(delete(Event).where(Event.id.in_(batch)))
