"""Task actions beyond the single transitions (docs/tasks.md#actions-on-tasks-and-recipients): copy a task into a new
draft, pause or resume many tasks at once, and cancel selected pending recipients. Services: they flush, entry points
commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.errors import BadInput, EdmError
from edm.models.content import Sender, Template
from edm.models.tasks import SubTask, Task, TaskTemplate
from edm.system.service import Actor
from edm.tasks import lifecycle, service
from edm.tasks.recipients import Rule, validate_rule
from edm.vocabulary.tasks import SendState

COPY_SUFFIX = " (copy)"
NAME_MAX = 200  # tasks.name is String(200)
COPIED_FIELDS = (
    "description",
    "timezone",
    "priority",
    "track_opens",
    "track_clicks",
    "on_capacity_exhausted",
    "allowed_service_ids",
    "error_thresholds",
)
BATCH_MAX = 50
SELECTION_MAX = 1000

BatchAction = Literal["pause", "resume"]


# ---- copy ---------------------------------------------------------------------------------------------


def copy_name(name: str) -> str:
    """`name (copy)`, cutting the original so the result still fits the column."""
    return name[: NAME_MAX - len(COPY_SUFFIX)].rstrip() + COPY_SUFFIX


async def copy_task(
    session: AsyncSession, source: Task, *, user_id: int, actor: str
) -> tuple[Task, list[dict[str, str]]]:
    """A new draft of `user_id` with the source's content and options (not its schedule, status, statistics or
    SubTasks), whatever the source's status. Templates are referenced again (the copy renders the template as
    it is now, not the source's frozen snapshot). A sender, template or recipient rule that no longer
    validates (archived, deleted) is left out — a draft may be incomplete — and listed in the second value as
    `{"field", "message"}`, so the caller knows what to fill in before scheduling."""
    omitted: list[dict[str, str]] = []
    values: dict[str, Any] = {"name": copy_name(source.name)}
    values.update({key: getattr(source, key) for key in COPIED_FIELDS})
    if source.error_thresholds is not None:
        values["error_thresholds"] = dict(source.error_thresholds)
    if source.allowed_service_ids is not None:
        values["allowed_service_ids"] = list(source.allowed_service_ids)
    if source.sender_id is not None:
        if await _usable_sender(session, user_id, source.sender_id):
            values["sender_id"] = source.sender_id
        else:
            omitted.append({"field": "sender_id", "message": f"sender {source.sender_id} is archived or deleted"})
    templates, gone = await _usable_templates(session, source.id, user_id)
    if templates:
        values["templates"] = templates
    if gone:
        omitted.append({"field": "templates", "message": f"{gone} template(s) of the source no longer exist"})
    if source.recipient_rule:
        problem = await _rule_problem(session, user_id, source.recipient_rule)
        if problem is None:
            values["recipient_rule"] = source.recipient_rule
        else:
            omitted.append({"field": "recipient_rule", "message": problem})
    task = await service.create_task(session, user_id=user_id, values=values, actor=actor)
    return task, omitted


async def _usable_sender(session: AsyncSession, user_id: int, sender_id: int) -> bool:
    found = await session.scalar(
        select(Sender.id).where(Sender.id == sender_id, Sender.user_id == user_id, Sender.archived_at.is_(None))
    )
    return found is not None


async def _usable_templates(session: AsyncSession, task_id: int, user_id: int) -> tuple[list[dict[str, int]], int]:
    """The source's template choices (in order, with weights) whose template still exists, and how many do
    not (a deleted template leaves `template_id` null)."""
    rows = (
        await session.execute(
            select(TaskTemplate.template_id, TaskTemplate.weight, Template.id.label("live_id"))
            .outerjoin(Template, (Template.id == TaskTemplate.template_id) & (Template.user_id == user_id))
            .where(TaskTemplate.task_id == task_id)
            .order_by(TaskTemplate.position, TaskTemplate.id)
        )
    ).all()
    kept = [{"template_id": r.template_id, "weight": r.weight} for r in rows if r.live_id is not None]
    return kept, len(rows) - len(kept)


async def _rule_problem(session: AsyncSession, user_id: int, raw: dict[str, Any]) -> str | None:
    """Why the rule would be refused now (a contact or tag it names was deleted), or None."""
    try:
        await validate_rule(session, user_id=user_id, rule=Rule.parse(raw))
    except BadInput as exc:
        return exc.message
    return None


# ---- batch pause / resume -----------------------------------------------------------------------------


async def batch_transition(
    session: AsyncSession,
    *,
    action: BatchAction,
    task_ids: Sequence[int],
    user_id: int | None,
    is_admin: bool,
    actor: str,
    by: Actor | None = None,
) -> list[dict[str, Any]]:
    """Pause or resume each task on its own (a savepoint per task, through the same service functions as the
    single endpoints): a refused task changes nothing and the others still apply. Another user's task is a
    per-task `not_found` — except that admins may pause any task, as with `POST /tasks/{id}/pause`. Tasks are
    handled in id order (two batches naming the same tasks never deadlock); the answer keeps the request
    order. `user_id=None` reaches every task (the operator's CLI). `by`: who asked, for the audit of an admin
    pausing another user's campaign (`service.pause`)."""
    if not task_ids:
        raise BadInput.field("task_ids", "give at least one task id")
    if len(task_ids) > BATCH_MAX:
        raise BadInput.field("task_ids", f"at most {BATCH_MAX} tasks per batch, got {len(task_ids)}")
    duplicates = sorted({i for i in task_ids if list(task_ids).count(i) > 1})
    if duplicates:
        raise BadInput.field("task_ids", f"listed more than once: {', '.join(map(str, duplicates[:10]))}")
    owner = None if (is_admin and action == "pause") else user_id
    results: dict[int, dict[str, Any]] = {}
    for task_id in sorted(task_ids):
        try:
            async with session.begin_nested():
                task = await service.get_task(session, task_id, user_id=owner)
                if action == "pause":
                    task = await service.pause(session, task, actor=actor, by=by, in_batch=True)
                else:
                    task = await service.resume(session, task, actor=actor)
                status = task.status
            results[task_id] = {"task_id": task_id, "ok": True, "status": status}
        except EdmError as exc:
            results[task_id] = {
                "task_id": task_id,
                "ok": False,
                "error": {"code": exc.code, "message": exc.message, **exc.extra},
            }
    return [results[i] for i in task_ids]


# ---- cancel selected recipients -----------------------------------------------------------------------


async def cancel_subtasks(
    session: AsyncSession, task: Task, *, subtask_ids: Sequence[int] | None = None, emails: Sequence[str] | None = None
) -> dict[str, int]:
    """Cancel the selected SubTasks (by id or by address) that are still `pending`.

    The UPDATE is a compare-and-set on `send_state = pending`: a row a worker has claimed (allocated) or
    finished is never touched and counts as `not_pending`. The task row is locked first, in the order the
    claim and the outcome recording take it (task, then SubTasks), so neither deadlocks with us. Charged rows
    cancelled here are refunded at once through the task's refund (`lifecycle.refund`): it refunds what the
    task's ledger entries have not refunded yet, so a later completion, cancel or close never refunds them
    again."""
    if (subtask_ids is None) == (emails is None):
        raise BadInput(
            "give either subtask_ids or emails",
            details=[{"field": "subtask_ids", "message": "give either subtask_ids or emails"}],
        )
    field = "subtask_ids" if subtask_ids is not None else "emails"
    wanted: set[Any] = set(subtask_ids) if subtask_ids is not None else {e.strip().lower() for e in emails or ()}
    if not wanted:
        raise BadInput.field(field, "give at least one")
    if len(wanted) > SELECTION_MAX:
        raise BadInput.field(field, f"at most {SELECTION_MAX} per call, got {len(wanted)}")
    column = SubTask.id if subtask_ids is not None else SubTask.recipient_email
    await session.execute(select(Task.id).where(Task.id == task.id).with_for_update())
    result = await session.execute(
        update(SubTask)
        .where(SubTask.task_id == task.id, column.in_(wanted), SubTask.send_state == SendState.PENDING)
        .values(send_state=SendState.CANCELLED)
        .execution_options(synchronize_session=False)
    )
    cancelled = int(result.rowcount or 0)  # type: ignore[attr-defined]
    found = int(await session.scalar(select(func.count()).where(SubTask.task_id == task.id, column.in_(wanted))) or 0)
    if cancelled:
        await lifecycle.refund(session, task, occasion="recipients cancelled")
    return {"cancelled": cancelled, "not_pending": found - cancelled, "not_found": len(wanted) - found}
