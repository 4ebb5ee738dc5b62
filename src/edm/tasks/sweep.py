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

from sqlalchemy import ColumnElement, Select, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.dialect import any_of, is_postgresql
from edm.db.session import unit_of_work
from edm.models.events import Event
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.tasks.generation import mark_pending_cancelled
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
    await mark_pending_cancelled(session, task_id)
    return True


async def next_stopped_with_pending(session: AsyncSession) -> Task | None:
    """A cancelled or closed task that still has pending SubTasks, locked for this transaction (SKIP LOCKED on
    PostgreSQL, as `next_deleting`)."""
    pending = exists().where(SubTask.task_id == Task.id, SubTask.send_state == SendState.PENDING)
    query = select(Task).where(Task.status.in_(STOPPED), pending).order_by(Task.id).limit(1)
    task: Task | None = await session.scalar(_skip_locked(session, query))
    return task


async def cancel_batch(session: AsyncSession, task: Task, *, after: str = "", size: int | None = None) -> Step:
    """Up to `size` (BATCH) of the stopped task's pending SubTasks → `cancelled`, in address order after `after`
    (see `_next_rows`)."""
    size = size or BATCH
    ids, cursor = await _next_rows(session, task.id, after, size, SubTask.send_state == SendState.PENDING)
    if not ids:
        return Step(0, cursor)
    result = await session.execute(
        update(SubTask)
        .where(any_of(session, SubTask.id, ids), SubTask.send_state == SendState.PENDING)
        .values(send_state=SendState.CANCELLED)
        .execution_options(synchronize_session=False)
    )
    return Step(int(result.rowcount or 0), cursor)  # type: ignore[attr-defined]


async def _next_rows(
    session: AsyncSession, task_id: int, after: str, size: int, *where: ColumnElement[bool]
) -> tuple[list[int], str | None]:
    """Ids of the next `size` SubTasks of the task (among those matching `where`) whose address sorts after `after`,
    and the cursor for the batch after them (None once the end is reached).

    A batch walks the unique (task_id, recipient_email) index from where the last one stopped. Taking "the first
    `size` rows of the task" instead made every batch step over the index entries of all the rows the batches before
    it had deleted or changed (VACUUM had not removed them yet): quadratic, and at 10,000,000 rows a sweep that
    slowed every other task's claims to a second (bench/RESULTS.md, "Past a million")."""
    rows = (
        await session.execute(
            select(SubTask.id, SubTask.recipient_email)
            .where(SubTask.task_id == task_id, SubTask.recipient_email > after, *where)
            .order_by(SubTask.recipient_email)
            .limit(size)
        )
    ).all()
    return [r.id for r in rows], (rows[-1].recipient_email if len(rows) == size else None)


# ---- deleting ---------------------------------------------------------------------------------------------------


async def delete_rows(session: AsyncSession, task: Task, *, now: dt.datetime) -> None:
    """All of the task's rows in this transaction, then the task itself (its templates, links, counters and
    status history go with it by cascade): the sweep's own batches, one of them large enough for a task that
    `fits_inline`."""
    while not (await delete_batch(session, task, now=now, size=INLINE_ROWS + 1)).finished:
        pass


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


class Step(NamedTuple):
    subtasks: int  # SubTasks changed or removed by this batch
    after: str | None  # where the next batch starts (None: this pass reached the end)
    finished: bool = False  # the task itself is gone


async def delete_batch(
    session: AsyncSession, task: Task, *, now: dt.datetime, after: str = "", size: int | None = None
) -> Step:
    """Up to `size` (BATCH) of the deleting task's SubTasks in address order after `after` (see `_next_rows`), with
    their tombstones, attempts and events. A pass from the start that finds none left removes the task's remaining
    events and then the task itself."""
    size = size or BATCH
    ids, cursor = await _next_rows(session, task.id, after, size)
    if ids:
        await tombstones.write_for_task(session, task, now=now, subtask_ids=ids)
        await session.execute(delete(Event).where(any_of(session, Event.subtask_id, ids)))
        await session.execute(delete(SendAttempt).where(any_of(session, SendAttempt.subtask_id, ids)))
        await session.execute(delete(SubTask).where(any_of(session, SubTask.id, ids)))
        return Step(len(ids), cursor)
    if after:
        return Step(0, None)  # the end of this pass: the next one starts from the beginning
    await _delete_events(session, task.id, size)
    if await session.scalar(select(Event.id).where(Event.task_id == task.id).limit(1)) is not None:
        return Step(0, None)
    await session.delete(task)
    await session.flush()
    return Step(0, None, finished=True)


async def drain(sessionmaker: async_sessionmaker[AsyncSession], *, should_stop: Callable[[], bool]) -> Drained:
    """What the worker's `sweep` job runs: batches, each in its own transaction, until no stopped task has pending
    SubTasks and no task is left to delete, or `should_stop()`. Each task's cursor lives here: a worker that stops
    leaves the next run (or another worker) to start that task's pass again from the beginning. Entry point: it
    commits."""
    drained = Drained()
    cursors: dict[tuple[str, int], str] = {}
    while not should_stop():
        async with unit_of_work(sessionmaker) as session:
            stopped = await next_stopped_with_pending(session)
            if stopped is not None:
                key = ("cancel", stopped.id)
                step = await cancel_batch(session, stopped, after=cursors.get(key, ""))
                drained.cancelled += step.subtasks
            else:
                task = await next_deleting(session)
                if task is None:
                    break
                key = ("delete", task.id)
                step = await delete_batch(session, task, now=utc_now(), after=cursors.get(key, ""))
                drained.deleted += step.subtasks
                if step.finished:
                    drained.tasks.append(key[1])
        if step.after is None:
            cursors.pop(key, None)
        else:
            cursors[key] = step.after
    return drained


async def _delete_events(session: AsyncSession, task_id: int, size: int) -> None:
    """Events of the task that name no SubTask (there should be none; a batch keeps it bounded if there are)."""
    batch = select(Event.id).where(Event.task_id == task_id).limit(size).scalar_subquery()
    await session.execute(delete(Event).where(Event.id.in_(batch)))
