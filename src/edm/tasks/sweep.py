"""Changes to every row of a large task, made in batches (docs/tasks.md#large-tasks): cancelling its pending SubTasks
and deleting it.

A small task is changed at once, in the request. For a large one the request changes only the task row: a cancel
or close makes it stop (no claim takes its rows from then on, and its refund is settled), a delete marks it
`deleting`, which hides it from every list and lookup. The worker's `sweep` job then changes its rows, BATCH
SubTasks per transaction. One UPDATE or DELETE of 10,000,000 SubTasks held its row locks and its request for
minutes, kept VACUUM from cleaning anything that died meanwhile in the whole database, and made the statement-level
counter triggers aggregate all those rows at once (bench/RESULTS.md, "Past a million").

Services flush; `drain`, the worker's job, commits a transaction per batch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Select, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.dialect import any_of, is_postgresql
from edm.db.session import unit_of_work
from edm.models.events import Event
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.tracking import tombstones
from edm.vocabulary.tasks import SendState, TaskStatus

# At most this many rows are changed in the request itself (well under a second); more in the background, BATCH
# SubTasks (with their attempts and events, for a deletion) per transaction.
INLINE_ROWS = 10_000
BATCH = 10_000
STOPPED = (TaskStatus.CANCELLED, TaskStatus.CLOSED)


async def fits_inline(session: AsyncSession, task_id: int, *, pending_only: bool = False) -> bool:
    """Whether the task has at most INLINE_ROWS SubTasks (with `pending_only`, pending ones); reads at most one
    more row than that."""
    rows = select(SubTask.id).where(SubTask.task_id == task_id)
    if pending_only:
        rows = rows.where(SubTask.send_state == SendState.PENDING)
    first = rows.limit(INLINE_ROWS + 1).subquery()
    return int(await session.scalar(select(func.count()).select_from(first)) or 0) <= INLINE_ROWS


# ---- cancelling -------------------------------------------------------------------------------------------------


async def cancel_pending_if_few(session: AsyncSession, task_id: int) -> bool:
    """A stopped task's pending SubTasks → `cancelled` now when there are at most INLINE_ROWS; else they are left
    to the sweep (the task no longer runs, so no claim takes them meanwhile). Returns whether it was done now."""
    if not await fits_inline(session, task_id, pending_only=True):
        return False
    await session.execute(
        update(SubTask)
        .where(SubTask.task_id == task_id, SubTask.send_state == SendState.PENDING)
        .values(send_state=SendState.CANCELLED)
        .execution_options(synchronize_session=False)
    )
    return True


async def next_stopped_with_pending(session: AsyncSession) -> Task | None:
    """A cancelled or closed task that still has pending SubTasks, locked for this transaction (SKIP LOCKED on
    PostgreSQL, as `next_deleting`)."""
    pending = exists().where(SubTask.task_id == Task.id, SubTask.send_state == SendState.PENDING)
    query = select(Task).where(Task.status.in_(STOPPED), pending).order_by(Task.id).limit(1)
    task: Task | None = await session.scalar(_skip_locked(session, query))
    return task


async def cancel_batch(session: AsyncSession, task: Task, *, size: int | None = None) -> int:
    """Up to `size` (BATCH) of the stopped task's pending SubTasks → `cancelled`; returns how many."""
    batch = (
        select(SubTask.id)
        .where(SubTask.task_id == task.id, SubTask.send_state == SendState.PENDING)
        .limit(size or BATCH)
        .scalar_subquery()
    )
    result = await session.execute(
        update(SubTask)
        .where(SubTask.id.in_(batch), SubTask.send_state == SendState.PENDING)
        .values(send_state=SendState.CANCELLED)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---- deleting ---------------------------------------------------------------------------------------------------


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
    task: Task | None = await session.scalar(_skip_locked(session, query))
    return task


def _skip_locked(session: AsyncSession, query: Select[Any]) -> Select[Any]:
    return query.with_for_update(skip_locked=True) if is_postgresql(session) else query


@dataclass
class Drained:
    cancelled: int = 0  # pending SubTasks of stopped tasks cancelled
    deleted: int = 0  # SubTasks of deleting tasks removed
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
    """What the worker's `sweep` job runs: batches, each in its own transaction, until no stopped task has pending
    SubTasks and no task is left to delete, or `should_stop()`. Entry point: it commits."""
    drained = Drained()
    while not should_stop():
        async with unit_of_work(sessionmaker) as session:
            stopped = await next_stopped_with_pending(session)
            if stopped is not None:
                drained.cancelled += await cancel_batch(session, stopped)
                continue
            task = await next_deleting(session)
            if task is None:
                break
            task_id = task.id
            batch = await delete_batch(session, task, now=utc_now())
        drained.deleted += batch.subtasks
        if batch.finished:
            drained.tasks.append(task_id)
    return drained


async def _delete_events(session: AsyncSession, task_id: int, size: int) -> None:
    """Events of the task that name no SubTask (there should be none; a batch keeps it bounded if there are)."""
    batch = select(Event.id).where(Event.task_id == task_id).limit(size).scalar_subquery()
    await session.execute(delete(Event).where(Event.id.in_(batch)))
