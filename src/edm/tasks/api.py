"""Task routes (SPEC §16.3): CRUD, transitions, statistics, per-recipient state, uncertain decisions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from edm.api.deps import Caller, CurrentCaller, Id, IdPath, Paging, Session, Writer, page_of
from edm.clock import utc_now
from edm.errors import NotFound
from edm.tasks import service
from edm.tasks.models import SendAttempt, SubTask, Task, TaskStatusChange, TaskTemplate
from edm.tasks.stats import task_stats
from edm.tasks.status import TaskStatus, allowed_actions

router = APIRouter(prefix="/api/v1", tags=["tasks"])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemplateChoice(Strict):
    template_id: Id
    weight: int = Field(1, ge=1, le=100)


class Thresholds(Strict):
    min_sample: int | None = Field(None, ge=1)
    max_failure_rate: float | None = Field(None, gt=0, le=1)
    max_bounce_rate: float | None = Field(None, gt=0, le=1)


class TaskFields(Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    sender_id: Id | None = None
    templates: list[TemplateChoice] | None = Field(None, min_length=1, max_length=20)
    recipient_rule: dict[str, Any] | None = None
    timezone: str | None = None
    priority: int | None = Field(None, ge=0, le=9)
    track_opens: bool | None = None
    track_clicks: bool | None = None
    on_capacity_exhausted: Literal["wait", "pause"] | None = None
    allowed_service_ids: list[Id] | None = None
    error_thresholds: Thresholds | None = None


class TaskCreate(TaskFields):
    name: str = Field(..., min_length=1, max_length=200)


class ScheduleBody(Strict):
    at: AwareDatetime | None = None
    now: bool = False


class PauseBody(Strict):
    detail: str | None = Field(default=None, max_length=1000)
    resume_at: AwareDatetime | None = None


class ResumeBody(Strict):
    schedule_at: AwareDatetime | None = None


class SubtaskSelection(Strict):
    subtask_ids: list[Id] | None = Field(default=None, max_length=10000)


def _values(body: TaskFields) -> dict[str, Any]:
    values = body.model_dump(exclude_unset=True)
    if body.templates is not None:
        values["templates"] = [t.model_dump() for t in body.templates]
    if body.error_thresholds is not None:
        values["error_thresholds"] = body.error_thresholds.model_dump(exclude_none=True)
    return values


def task_view(task: Task) -> dict[str, Any]:
    return {
        "id": task.id, "user_id": task.user_id, "name": task.name, "description": task.description,
        "status": task.status, "pause_reason": task.pause_reason, "pause_detail": task.pause_detail,
        "resume_at": task.resume_at, "waiting_reason": task.waiting_reason, "waiting_until": task.waiting_until,
        "sender_id": task.sender_id, "recipient_rule": task.recipient_rule, "schedule_at": task.schedule_at,
        "timezone": task.timezone, "priority": task.priority, "track_opens": task.track_opens,
        "track_clicks": task.track_clicks, "on_capacity_exhausted": task.on_capacity_exhausted,
        "allowed_service_ids": task.allowed_service_ids, "error_thresholds": task.error_thresholds,
        "schedule_estimate": task.schedule_estimate, "generation_summary": task.generation_summary,
        "generated_at": task.generated_at, "first_sent_at": task.first_sent_at, "completed_at": task.completed_at,
        "cancelled_at": task.cancelled_at, "closed_at": task.closed_at, "completion_note": task.completion_note,
        "allowed_actions": allowed_actions(TaskStatus(task.status)), "created_at": task.created_at,
        "updated_at": task.updated_at,
    }


async def _own(session: Session, caller: Caller, task_id: IdPath, *, admin_may: bool = False) -> Task:
    """The caller's task; admins reach any task only where SPEC allows it (read, pause, cancel)."""
    return await service.get_task(session, task_id, user_id=None if (caller.is_admin and admin_may) else caller.id)


@router.get("/tasks")
async def list_tasks(session: Session, caller: CurrentCaller, page: Paging, status: TaskStatus | None = None,
                     user_id: int | None = None) -> dict[str, Any]:
    query = select(Task).where(Task.user_id == caller.owner_filter(user_id)).order_by(Task.id).limit(page.limit + 1)
    if page.after_id:
        query = query.where(Task.id > page.after_id)
    if status:
        query = query.where(Task.status == status)
    return page_of([task_view(t) for t in await session.scalars(query)], page)


@router.get("/tasks/summary")
async def tasks_summary(session: Session, caller: CurrentCaller) -> dict[str, int]:
    return await service.count_by_status(session, user_id=caller.id)


@router.post("/tasks", status_code=201)
async def create_task(body: TaskCreate, session: Session, caller: Writer) -> dict[str, Any]:
    task = await service.create_task(session, user_id=caller.id, values=_values(body), actor=str(caller.id))
    return task_view(task)


@router.get("/tasks/{task_id}")
async def get_task(task_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    view = task_view(task)
    view["templates"] = [{"id": t.id, "template_id": t.template_id, "weight": t.weight, "name": t.name}
                         for t in await session.scalars(select(TaskTemplate).where(TaskTemplate.task_id == task.id)
                                                        .order_by(TaskTemplate.position))]
    return view


@router.patch("/tasks/{task_id}")
async def update_task(task_id: IdPath, body: TaskFields, session: Session, caller: Writer) -> dict[str, Any]:
    task = await _own(session, caller, task_id)
    return task_view(await service.update_task(session, task, _values(body)))


@router.delete("/tasks/{task_id}", status_code=204)
async def delete_task(task_id: IdPath, session: Session, caller: Writer) -> Response:
    await service.delete_task(session, await _own(session, caller, task_id, admin_may=True))
    return Response(status_code=204)


@router.post("/tasks/{task_id}/schedule")
async def schedule(task_id: IdPath, body: ScheduleBody, request: Request, session: Session,
                   caller: Writer) -> dict[str, Any]:
    task = await _own(session, caller, task_id)
    production = request.app.state.settings.is_production
    return task_view(await service.schedule(session, task, at=None if body.now else body.at, actor=str(caller.id),
                                            production=production))


@router.post("/tasks/{task_id}/unschedule")
async def unschedule(task_id: IdPath, session: Session, caller: Writer) -> dict[str, Any]:
    return task_view(await service.unschedule(session, await _own(session, caller, task_id), actor=str(caller.id)))


@router.post("/tasks/{task_id}/pause")
async def pause(task_id: IdPath, session: Session, caller: Writer, body: PauseBody | None = None) -> dict[str, Any]:
    body = body or PauseBody()
    task = await _own(session, caller, task_id, admin_may=True)
    return task_view(await service.pause(session, task, actor=str(caller.id), detail=body.detail,
                                         resume_at=body.resume_at))


@router.post("/tasks/{task_id}/resume")
async def resume(task_id: IdPath, session: Session, caller: Writer, body: ResumeBody | None = None) -> dict[str, Any]:
    task = await _own(session, caller, task_id)
    return task_view(await service.resume(session, task, actor=str(caller.id),
                                          schedule_at=body.schedule_at if body else None))


@router.post("/tasks/{task_id}/cancel")
async def cancel(task_id: IdPath, session: Session, caller: Writer) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    return task_view(await service.cancel(session, task, actor=str(caller.id)))


@router.post("/tasks/{task_id}/close")
async def close(task_id: IdPath, session: Session, caller: Writer) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    return task_view(await service.close(session, task, actor=str(caller.id)))


@router.get("/tasks/{task_id}/stats")
async def stats(task_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    return {"task_id": task.id, "status": task.status, "waiting_reason": task.waiting_reason,
            "waiting_until": task.waiting_until, "pause_reason": task.pause_reason,
            "computed_at": utc_now(), **await task_stats(session, task.id)}


@router.get("/tasks/{task_id}/status-history")
async def status_history(task_id: IdPath, session: Session, caller: CurrentCaller) -> list[dict[str, Any]]:
    task = await _own(session, caller, task_id, admin_may=True)
    rows = await session.scalars(select(TaskStatusChange).where(TaskStatusChange.task_id == task.id)
                                 .order_by(TaskStatusChange.id))
    return [{"from": r.from_status, "to": r.to_status, "reason": r.reason, "detail": r.detail, "actor": r.actor,
             "at": r.at} for r in rows]


def subtask_view(s: SubTask) -> dict[str, Any]:
    return {
        "id": s.id, "public_id": str(s.public_id), "recipient_email": s.recipient_email,
        "contact_id": s.contact_id, "send_state": s.send_state, "suppressed_reason": s.suppressed_reason,
        "delivery_state": s.delivery_state, "attempts": s.attempts, "retryable_failures": s.retryable_failures,
        "next_attempt_at": s.next_attempt_at, "service_id": s.service_id, "sent_at": s.sent_at,
        "failed_at": s.failed_at, "last_error_class": s.last_error_class, "last_error_code": s.last_error_code,
        "last_error": s.last_error, "message_id": s.message_id, "subject_sent": s.subject_sent,
        "provider_message_id": s.provider_message_id, "task_template_id": s.task_template_id,
    }


@router.get("/tasks/{task_id}/subtasks")
async def list_subtasks(
    task_id: IdPath, session: Session, caller: CurrentCaller, page: Paging,
    send_state: Annotated[str | None, Query(max_length=16)] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    query = select(SubTask).where(SubTask.task_id == task.id).order_by(SubTask.id).limit(page.limit + 1)
    if page.after_id:
        query = query.where(SubTask.id > page.after_id)
    if send_state:
        query = query.where(SubTask.send_state == send_state)
    if email:
        query = query.where(SubTask.recipient_email == email.strip().lower())
    return page_of([subtask_view(s) for s in await session.scalars(query)], page)


@router.get("/tasks/{task_id}/subtasks/{subtask_id}")
async def get_subtask(task_id: IdPath, subtask_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    sub = await session.scalar(select(SubTask).where(SubTask.id == subtask_id, SubTask.task_id == task.id))
    if sub is None:
        raise NotFound("subtask not found")
    attempts = await session.scalars(select(SendAttempt).where(SendAttempt.subtask_id == sub.id)
                                     .order_by(SendAttempt.id))
    return {**subtask_view(sub), "attempts": [
        {"attempt_no": a.attempt_no, "service_id": a.service_id, "started_at": a.started_at,
         "finished_at": a.finished_at, "duration_ms": a.duration_ms, "outcome": a.outcome, "status": a.status,
         "provider_code": a.provider_code, "message": a.message, "provider_message_id": a.provider_message_id}
        for a in attempts]}


@router.post("/tasks/{task_id}/uncertain/{action}")
async def decide_uncertain(task_id: IdPath, action: Literal["retry", "abandon"], session: Session, caller: Writer,
                           body: SubtaskSelection | None = None) -> dict[str, int]:
    """`retry` puts uncertain recipients back in the queue (may duplicate); `abandon` fails them (SPEC §7.8)."""
    task = await _own(session, caller, task_id)
    count = await service.decide_uncertain(session, task, action=action,
                                           subtask_ids=body.subtask_ids if body else None)
    return {"retried" if action == "retry" else "abandoned": count}


@router.get("/subtasks")
async def subtasks_by_email(email: Annotated[str, Query(min_length=3, max_length=320)], session: Session,
                            caller: CurrentCaller, page: Paging) -> dict[str, Any]:
    """What happened to this address across the caller's own tasks."""
    own_tasks = select(Task.id).where(Task.user_id == caller.id)  # reaches the (task_id, recipient_email) index
    query = (select(SubTask).where(SubTask.task_id.in_(own_tasks), SubTask.user_id == caller.id,
                                   SubTask.recipient_email == email.strip().lower())
             .order_by(SubTask.id).limit(page.limit + 1))
    if page.after_id:
        query = query.where(SubTask.id > page.after_id)
    return page_of([{**subtask_view(s), "task_id": s.task_id} for s in await session.scalars(query)], page)

