"""The admin queue view's reads: pending SubTasks per task and in-flight ones per service. Read-only, no
locks, cheap at 1,000,000 SubTasks."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import is_postgresql
from edm.models.tasks import SubTask, Task, TaskStatCounter
from edm.vocabulary.tasks import SendState, TaskStatus

OPEN_TASK_STATES = (TaskStatus.QUEUED, TaskStatus.SENDING, TaskStatus.PAUSED)  # the only ones holding pending rows


@dataclass(frozen=True, slots=True)
class PendingTask:
    task_id: int
    user_id: int
    status: str
    generated_at: dt.datetime | None
    fresh: int  # pending, never tried
    retrying: int  # pending after a retryable failure (waits for next_attempt_at)


async def pending_by_task(session: AsyncSession) -> list[PendingTask]:
    """Pending (unbound) SubTasks of every task that can hold them. On PostgreSQL the counts come from the
    trigger-kept `task_stat_counters` (a few rows per task, whatever its size: no scan of SubTasks); on SQLite
    from the (task_id, send_state) index."""

    open_ids = select(Task.id).where(Task.status.in_(OPEN_TASK_STATES)).scalar_subquery()
    if is_postgresql(session):
        c = TaskStatCounter
        stmt = (
            select(c.task_id, c.tried, func.sum(c.n))
            .where(c.task_id.in_(open_ids), c.send_state == SendState.PENDING)
            .group_by(c.task_id, c.tried)
        )
    else:
        tried = case((SubTask.attempts > 0, True), else_=False)
        stmt = (
            select(SubTask.task_id, tried, func.count())
            .where(SubTask.task_id.in_(open_ids), SubTask.send_state == SendState.PENDING)
            .group_by(SubTask.task_id, tried)
        )
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for task_id, was_tried, n in (await session.execute(stmt)).all():
        counts[task_id][1 if was_tried else 0] += int(n or 0)
    wanted = [tid for tid, (fresh, retrying) in counts.items() if fresh or retrying]
    if not wanted:
        return []
    tasks = (
        await session.execute(select(Task.id, Task.user_id, Task.status, Task.generated_at).where(Task.id.in_(wanted)))
    ).all()
    return [PendingTask(t.id, t.user_id, t.status, t.generated_at, *counts[t.id]) for t in tasks]


@dataclass(frozen=True, slots=True)
class InFlight:
    service_id: int
    count: int
    oldest_allocated_at: dt.datetime | None
    expired_leases: int  # the reclaimer's work: leases past their expiry


async def in_flight_by_service(session: AsyncSession, *, now: dt.datetime) -> dict[int, InFlight]:
    """Allocated SubTasks per service (the ix_subtasks_allocated partial index: only in-flight rows)."""
    rows = await session.execute(
        select(
            SubTask.service_id,
            func.count(),
            func.min(SubTask.allocated_at),
            func.sum(case((SubTask.lease_expires_at < now, 1), else_=0)),
        )
        .where(SubTask.send_state == SendState.ALLOCATED)
        .group_by(SubTask.service_id)
    )
    return {
        sid: InFlight(sid, int(n), oldest, int(expired or 0))
        for sid, n, oldest, expired in rows.all()
        if sid is not None
    }


# Tasks that may hold uncertain SubTasks: a completed task has none (it completes when every SubTask is final).
UNCERTAIN_TASK_STATES = (*OPEN_TASK_STATES, TaskStatus.CANCELLED, TaskStatus.CLOSED)


async def uncertain_by_service(session: AsyncSession) -> dict[int, int]:
    """Uncertain SubTasks per service (the one that attempted them). Read through the (task_id, send_state) index,
    one range per task that can hold such rows: the cost is the number of those tasks and of uncertain rows, not
    the size of the table."""
    tasks = select(Task.id).where(Task.status.in_(UNCERTAIN_TASK_STATES)).scalar_subquery()
    rows = await session.execute(
        select(SubTask.service_id, func.count())
        .where(SubTask.task_id.in_(tasks), SubTask.send_state == SendState.UNCERTAIN)
        .group_by(SubTask.service_id)
    )
    return {int(service_id or 0): int(n) for service_id, n in rows.all()}
