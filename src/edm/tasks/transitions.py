"""The one function that changes a task's status (docs/states.md#task-transitions): table
check + compare-and-set + history row.

Two actors can never both apply a change: the UPDATE is guarded by the prior status, and a lost race is
re-read and re-checked once against the new status.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.errors import InvalidTransition, NotFound
from edm.models.tasks import Task, TaskStatusChange
from edm.vocabulary.tasks import TaskAction, TaskStatus, allowed_actions, target_of

SYSTEM = "system"


async def transition(
    session: AsyncSession,
    task_id: int,
    action: TaskAction,
    *,
    actor: str = SYSTEM,
    reason: str | None = None,
    detail: str | None = None,
    to: TaskStatus | None = None,
    values: dict[str, Any] | None = None,
    expected: TaskStatus | None = None,
) -> TaskStatus:
    """Apply `action`; returns the new status or raises InvalidTransition (409) with the allowed actions.

    `to` overrides the table's target only where the table has several (resume). `values` are extra
    columns written in the same UPDATE. `expected` pins the prior status (e.g. generation from scheduled).
    """
    for _ in range(2):
        current = await _current_status(session, task_id)
        if expected is not None and current != expected:
            break
        target = next_status(current, action, to)
        if target is None:
            break
        if await _compare_and_set(session, task_id, current, target, values or {}):
            session.add(
                TaskStatusChange(
                    task_id=task_id,
                    from_status=current,
                    to_status=target,
                    reason=reason or action,
                    detail=detail,
                    actor=actor,
                    at=utc_now(),
                )
            )
            await session.flush()
            return target
    current = await _current_status(session, task_id)
    raise InvalidTransition(
        f"cannot {action} a task that is {current}",
        current_status=current,
        allowed_actions=allowed_actions(current),
    )


def next_status(current: TaskStatus, action: TaskAction, to: TaskStatus | None = None) -> TaskStatus | None:
    """Where `action` takes a task that is `current`: None when the table refuses it; else `to` where the caller
    chose among several targets (resume), or the table's own target."""
    target = target_of(current, action)
    if target is None:
        return None
    return to if to is not None else target


async def _current_status(session: AsyncSession, task_id: int) -> TaskStatus:
    query = select(Task.status).where(Task.id == task_id).execution_options(populate_existing=True)
    status = await session.scalar(query)
    if status is None:
        raise NotFound("task not found")
    return TaskStatus(status)


async def _compare_and_set(
    session: AsyncSession, task_id: int, current: TaskStatus, target: TaskStatus, values: dict[str, Any]
) -> bool:
    result = await session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == current)
        .values(status=target, updated_at=utc_now(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
