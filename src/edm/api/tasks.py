"""Task routes (SPEC §16.3): CRUD, transitions, statistics, reports (§11.3), per-recipient state and its CSV
export, uncertain decisions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from edm.api.deps import Caller, CurrentCaller, Id, IdPath, IdQuery, Paging, Session, Writer
from edm.clock import utc_now
from edm.errors import NotFound
from edm.models.tasks import SubTask, Task, TaskStatusChange, TaskTemplate
from edm.paging import MAX_ID, page_of
from edm.system.service import Actor, audit
from edm.tasks import actions, reports, service
from edm.tasks.recipients import RecipientRule
from edm.tasks.reports import Bucket, DisplayStatus, Engagement, SubtaskFilters
from edm.tasks.stats import task_stats
from edm.vocabulary.tasks import DeliveryState, SendState, TaskKind, TaskStatus, allowed_actions

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
    recipient_rule: RecipientRule | None = None
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


class BatchBody(Strict):
    action: Literal["pause", "resume"]
    task_ids: list[Id] = Field(..., min_length=1, max_length=actions.BATCH_MAX)


class RecipientSelection(Strict):
    """Exactly one of the two: SubTask ids (the `id` of `GET /tasks/{id}/subtasks`) or recipient addresses."""

    subtask_ids: list[Id] | None = Field(default=None, min_length=1, max_length=actions.SELECTION_MAX)
    emails: list[Annotated[str, Field(min_length=1, max_length=320)]] | None = Field(
        default=None, min_length=1, max_length=actions.SELECTION_MAX
    )


def _values(body: TaskFields) -> dict[str, Any]:
    values = body.model_dump(exclude_unset=True)
    if body.templates is not None:
        values["templates"] = [t.model_dump() for t in body.templates]
    if body.error_thresholds is not None:
        values["error_thresholds"] = body.error_thresholds.model_dump(exclude_none=True)
    return values


def task_view(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "user_id": task.user_id,
        "name": task.name,
        "description": task.description,
        "status": task.status,
        "pause_reason": task.pause_reason,
        "pause_detail": task.pause_detail,
        "resume_at": task.resume_at,
        "waiting_reason": task.waiting_reason,
        "waiting_until": task.waiting_until,
        "sender_id": task.sender_id,
        "recipient_rule": task.recipient_rule,
        "schedule_at": task.schedule_at,
        "timezone": task.timezone,
        "priority": task.priority,
        "track_opens": task.track_opens,
        "track_clicks": task.track_clicks,
        "on_capacity_exhausted": task.on_capacity_exhausted,
        "allowed_service_ids": task.allowed_service_ids,
        "error_thresholds": task.error_thresholds,
        "schedule_estimate": task.schedule_estimate,
        "generation_summary": task.generation_summary,
        "generated_at": task.generated_at,
        "first_sent_at": task.first_sent_at,
        "completed_at": task.completed_at,
        "cancelled_at": task.cancelled_at,
        "closed_at": task.closed_at,
        "completion_note": task.completion_note,
        "allowed_actions": allowed_actions(TaskStatus(task.status)),
        "created_at": task.created_at,
        "updated_at": task.updated_at,
    }


async def _own(session: Session, caller: Caller, task_id: IdPath, *, admin_may: bool = False) -> Task:
    """The caller's task; admins reach any task only where SPEC allows it (read, pause, cancel)."""
    return await service.get_task(session, task_id, user_id=None if (caller.is_admin and admin_may) else caller.id)


def _audit_actor(caller: Caller, request: Request) -> Actor:
    return Actor(caller.id, caller.kind, request.client.host if request.client else None)


async def _audit_if_admin_on_other(
    session: Session, request: Request, caller: Caller, task: Task, action: str, status_before: str
) -> None:
    """An admin changing another user's task is audited (`task.pause`, `task.cancel`, ...); owners acting on
    their own tasks are recorded in the task's status history only."""
    if task.user_id == caller.id:
        return
    await audit(
        session,
        _audit_actor(caller, request),
        f"task.{action}",
        target_type="task",
        target_id=task.id,
        details={"owner_user_id": task.user_id, "old_status": status_before, "new_status": task.status},
    )


@router.get("/tasks")
async def list_tasks(
    session: Session, caller: CurrentCaller, page: Paging, status: TaskStatus | None = None, user_id: IdQuery = None
) -> dict[str, Any]:
    query = (
        select(Task)
        .where(Task.user_id == caller.owner_filter(user_id), Task.kind == TaskKind.BULK)
        .order_by(Task.id)
        .limit(page.limit + 1)
    )  # test sends are listed under /test-sends
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
    return await _view_with_templates(session, await _own(session, caller, task_id, admin_may=True))


async def _view_with_templates(session: Session, task: Task) -> dict[str, Any]:
    view = task_view(task)
    view["templates"] = [
        {"id": t.id, "template_id": t.template_id, "weight": t.weight, "name": t.name}
        for t in await session.scalars(
            select(TaskTemplate).where(TaskTemplate.task_id == task.id).order_by(TaskTemplate.position)
        )
    ]
    return view


@router.patch("/tasks/{task_id}")
async def update_task(task_id: IdPath, body: TaskFields, session: Session, caller: Writer) -> dict[str, Any]:
    task = await _own(session, caller, task_id)
    return task_view(await service.update_task(session, task, _values(body)))


@router.delete("/tasks/{task_id}", status_code=204)
async def delete_task(task_id: IdPath, request: Request, session: Session, caller: Writer) -> Response:
    task = await _own(session, caller, task_id, admin_may=True)
    owner, status_before = task.user_id, task.status
    await service.delete_task(session, task)
    if owner != caller.id:
        await audit(
            session,
            _audit_actor(caller, request),
            "task.delete",
            target_type="task",
            target_id=task_id,
            details={"owner_user_id": owner, "old_status": status_before},
        )
    return Response(status_code=204)


@router.post("/tasks/{task_id}/schedule")
async def schedule(
    task_id: IdPath, body: ScheduleBody, request: Request, session: Session, caller: Writer
) -> dict[str, Any]:
    task = await _own(session, caller, task_id)
    production = request.app.state.settings.is_production
    return task_view(
        await service.schedule(
            session, task, at=None if body.now else body.at, actor=str(caller.id), production=production
        )
    )


@router.post("/tasks/{task_id}/unschedule")
async def unschedule(task_id: IdPath, session: Session, caller: Writer) -> dict[str, Any]:
    return task_view(await service.unschedule(session, await _own(session, caller, task_id), actor=str(caller.id)))


@router.post("/tasks/{task_id}/pause")
async def pause(
    task_id: IdPath, request: Request, session: Session, caller: Writer, body: PauseBody | None = None
) -> dict[str, Any]:
    body = body or PauseBody()
    task = await _own(session, caller, task_id, admin_may=True)
    before = task.status
    task = await service.pause(session, task, actor=str(caller.id), detail=body.detail, resume_at=body.resume_at)
    await _audit_if_admin_on_other(session, request, caller, task, "pause", before)
    return task_view(task)


@router.post("/tasks/{task_id}/resume")
async def resume(task_id: IdPath, session: Session, caller: Writer, body: ResumeBody | None = None) -> dict[str, Any]:
    task = await _own(session, caller, task_id)
    return task_view(
        await service.resume(session, task, actor=str(caller.id), schedule_at=body.schedule_at if body else None)
    )


@router.post("/tasks/{task_id}/cancel")
async def cancel(task_id: IdPath, request: Request, session: Session, caller: Writer) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    before = task.status
    task = await service.cancel(session, task, actor=str(caller.id))
    await _audit_if_admin_on_other(session, request, caller, task, "cancel", before)
    return task_view(task)


@router.post("/tasks/{task_id}/close")
async def close(task_id: IdPath, request: Request, session: Session, caller: Writer) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    before = task.status
    task = await service.close(session, task, actor=str(caller.id))
    await _audit_if_admin_on_other(session, request, caller, task, "close", before)
    return task_view(task)


@router.post("/tasks/{task_id}/copy", status_code=201)
async def copy(task_id: IdPath, session: Session, caller: Writer) -> dict[str, Any]:
    """A new draft of the caller with the task's content and options, from any status (not its schedule,
    status, statistics or SubTasks). `omitted` lists what could not be copied (an archived sender, a deleted
    template, a rule naming deleted contacts or tags): fill it in before scheduling."""
    task, omitted = await actions.copy_task(
        session, await _own(session, caller, task_id), user_id=caller.id, actor=str(caller.id)
    )
    return {**await _view_with_templates(session, task), "omitted": omitted}


@router.post("/tasks/batch")
async def batch(body: BatchBody, request: Request, session: Session, caller: Writer) -> dict[str, Any]:
    """Pause or resume up to 50 tasks, each on its own; the result per task in request order (`ok` and the new
    `status`, or `error` with the code and message the single endpoint would give)."""
    results = await actions.batch_transition(
        session,
        action=body.action,
        task_ids=body.task_ids,
        user_id=caller.id,
        is_admin=caller.is_admin,
        actor=str(caller.id),
    )
    if caller.is_admin:  # only admins reach other users' tasks here (pause): audit those, one row per task
        done = {r["task_id"]: r["status"] for r in results if r["ok"]}
        owners = (await session.execute(select(Task.id, Task.user_id).where(Task.id.in_(done)))).all() if done else []
        for task_id, owner in owners:
            if owner != caller.id:
                await audit(
                    session,
                    _audit_actor(caller, request),
                    f"task.{body.action}",
                    target_type="task",
                    target_id=task_id,
                    details={"owner_user_id": owner, "new_status": done[task_id], "batch": True},
                )
    applied = sum(1 for r in results if r["ok"])
    return {"applied": applied, "failed": len(results) - applied, "results": results}


@router.get("/tasks/{task_id}/stats")
async def stats(task_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    task = await _own(session, caller, task_id, admin_may=True)
    return {
        "task_id": task.id,
        "status": task.status,
        "waiting_reason": task.waiting_reason,
        "waiting_until": task.waiting_until,
        "pause_reason": task.pause_reason,
        "computed_at": utc_now(),
        **await task_stats(session, task.id),
    }


@router.get("/tasks/{task_id}/status-history")
async def status_history(task_id: IdPath, session: Session, caller: CurrentCaller) -> list[dict[str, Any]]:
    task = await _own(session, caller, task_id, admin_may=True)
    rows = await session.scalars(
        select(TaskStatusChange).where(TaskStatusChange.task_id == task.id).order_by(TaskStatusChange.id)
    )
    return [
        {"from": r.from_status, "to": r.to_status, "reason": r.reason, "detail": r.detail, "actor": r.actor, "at": r.at}
        for r in rows
    ]


def subtask_view(s: SubTask, *, display_status: str | None = None, service_label: str | None = None) -> dict[str, Any]:
    view = {
        "id": s.id,
        "public_id": str(s.public_id),
        "recipient_email": s.recipient_email,
        "contact_id": s.contact_id,
        "send_state": s.send_state,
        "suppressed_reason": s.suppressed_reason,
        "delivery_state": s.delivery_state,
        "attempts": s.attempts,
        "retryable_failures": s.retryable_failures,
        "next_attempt_at": s.next_attempt_at,
        "service_id": s.service_id,
        "sent_at": s.sent_at,
        "failed_at": s.failed_at,
        "last_error_class": s.last_error_class,
        "last_error_code": s.last_error_code,
        "last_error": s.last_error,
        "message_id": s.message_id,
        "subject_sent": s.subject_sent,
        "provider_message_id": s.provider_message_id,
        "task_template_id": s.task_template_id,
    }
    if display_status is not None:
        view.update(
            display_status=display_status,
            service_label=service_label,
            delivered_at=s.delivered_at,
            bounced_at=s.bounced_at,
            delivery_detail=s.delivery_detail,
            open_count=s.open_count,
            machine_open_count=s.machine_open_count,
            first_opened_at=s.first_opened_at,
            last_opened_at=s.last_opened_at,
            click_count=s.click_count,
            machine_click_count=s.machine_click_count,
            first_clicked_at=s.first_clicked_at,
            last_clicked_at=s.last_clicked_at,
            unsubscribed_at=s.unsubscribed_at,
            complained_at=s.complained_at,
            replied_at=s.replied_at,
        )
    return view


def _reported(row: Any) -> dict[str, Any]:
    """A row of `reports.subtask_page`: the SubTask with its display status and service label."""
    return subtask_view(row.SubTask, display_status=row.display_status, service_label=row.service_label)


def _subtask_filters(
    send_state: SendState | None = None,
    delivery_state: DeliveryState | None = None,
    display_status: Annotated[DisplayStatus | None, Query(description="SPEC §5.7")] = None,
    engagement: Annotated[
        Engagement | None, Query(description="opened (incl. by a click), clicked, unsubscribed, or none of these")
    ] = None,
    email: Annotated[str | None, Query(max_length=320, description="part of the address")] = None,
    service_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="service of the last attempt")] = None,
) -> SubtaskFilters:
    return SubtaskFilters(
        send_state=send_state,
        delivery_state=delivery_state,
        display_status=display_status,
        engagement=engagement,
        email=email,
        service_id=service_id,
    )


Filters = Annotated[SubtaskFilters, Depends(_subtask_filters)]


@router.get("/tasks/{task_id}/subtasks")
async def list_subtasks(
    task_id: IdPath,
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    filters: Filters,
    include_total: bool = False,
) -> dict[str, Any]:
    """The task's recipients in id order, filtered (SPEC §11.3), each with its display status."""
    task = await _own(session, caller, task_id, admin_may=True)
    rows = await reports.subtask_page(session, task.id, filters, after_id=page.after_id, limit=page.limit + 1)
    answer = page_of([_reported(r) for r in rows], page)
    if include_total:
        answer["total"] = await reports.count_subtasks(session, task.id, filters)
    return answer


@router.get("/tasks/{task_id}/subtasks.csv")
@router.get("/tasks/{task_id}/export", include_in_schema=False)  # the SPEC §16.3 path
async def export_subtasks(
    task_id: IdPath, request: Request, session: Session, caller: CurrentCaller, filters: Filters, bom: bool = False
) -> StreamingResponse:
    """The filtered recipients as CSV (RFC 4180, formula cells guarded), streamed in chunks of rows; `bom=true`
    starts the file with a UTF-8 BOM for spreadsheets."""
    task = await _own(session, caller, task_id, admin_may=True)
    sessionmaker = request.app.state.sessionmaker

    async def body() -> AsyncIterator[str]:
        yield ("\ufeff" if bom else "") + reports.csv_header()
        async for rows in reports.export_rows(sessionmaker, task.id, filters):
            yield reports.to_csv(rows)

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="task-{task.id}-recipients.csv"'},
    )


@router.get("/tasks/{task_id}/subtasks/{subtask_id}")
async def get_subtask(task_id: IdPath, subtask_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """Who got it and what happened: the SubTask, every attempt and every event, in time order."""
    task = await _own(session, caller, task_id, admin_may=True)
    row = await reports.subtask_row(session, task.id, subtask_id)
    if row is None:
        raise NotFound("subtask not found")
    return {**_reported(row), **await reports.subtask_history(session, row.SubTask.id)}


@router.get("/tasks/{task_id}/report/services")
async def report_services(task_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """Per service of the last attempt: attempts by outcome, results, mean latency (labels only for users)."""
    task = await _own(session, caller, task_id, admin_may=True)
    return {"task_id": task.id, "items": await reports.by_service(session, task.id, admin=caller.is_admin)}


@router.get("/tasks/{task_id}/report/templates")
async def report_templates(task_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """Per task template (A/B): every count and rate of the task statistics."""
    task = await _own(session, caller, task_id, admin_may=True)
    return {"task_id": task.id, "items": await reports.by_template(session, task.id)}


@router.get("/tasks/{task_id}/report/links")
@router.get("/tasks/{task_id}/links", include_in_schema=False)  # the SPEC §16.3 path
async def report_links(task_id: IdPath, session: Session, caller: CurrentCaller, page: Paging) -> dict[str, Any]:
    """Tracked links in id order with human and machine clicks and unique human clickers."""
    task = await _own(session, caller, task_id, admin_may=True)
    items = await reports.by_link(session, task.id, after_id=page.after_id, limit=page.limit + 1)
    return {"task_id": task.id, **page_of(items, page)}


@router.get("/tasks/{task_id}/report/domains")
@router.get("/tasks/{task_id}/domains", include_in_schema=False)  # the SPEC §16.3 path
async def report_domains(task_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """The top 20 recipient domains by sent, and the rest as `other`."""
    task = await _own(session, caller, task_id, admin_may=True)
    return {"task_id": task.id, **await reports.by_domain(session, task.id)}


@router.get("/tasks/{task_id}/report/timeline")
@router.get("/tasks/{task_id}/timeline", include_in_schema=False)  # the SPEC §16.3 path
async def report_timeline(
    task_id: IdPath, session: Session, caller: CurrentCaller, bucket: Bucket = Bucket.HOUR
) -> dict[str, Any]:
    """Hourly or daily buckets in the task's time zone (non-empty buckets only)."""
    task = await _own(session, caller, task_id, admin_may=True)
    return await reports.timeline(session, task, bucket)


@router.get("/tasks/{task_id}/report/heatmap")
async def report_heatmap(task_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """Human opens by weekday × hour in the task's time zone."""
    task = await _own(session, caller, task_id, admin_may=True)
    return await reports.heatmap(session, task)


@router.post("/tasks/{task_id}/uncertain/{action}")
async def decide_uncertain(
    task_id: IdPath,
    action: Literal["retry", "abandon"],
    session: Session,
    caller: Writer,
    body: SubtaskSelection | None = None,
) -> dict[str, int]:
    """`retry` puts uncertain recipients back in the queue (may duplicate); `abandon` fails them (SPEC §7.8)."""
    task = await _own(session, caller, task_id)
    count = await service.decide_uncertain(session, task, action=action, subtask_ids=body.subtask_ids if body else None)
    return {"retried" if action == "retry" else "abandoned": count}


@router.post("/tasks/{task_id}/subtasks/cancel")
async def cancel_subtasks(
    task_id: IdPath, body: RecipientSelection, session: Session, caller: Writer
) -> dict[str, int]:
    """Cancel the selected recipients that are still pending (never one a worker has claimed); charged ones
    are refunded at once. Counts: `cancelled`, `not_pending` (already claimed or final), `not_found`."""
    task = await _own(session, caller, task_id)
    return await actions.cancel_subtasks(session, task, subtask_ids=body.subtask_ids, emails=body.emails)


@router.get("/subtasks")
async def subtasks_by_email(
    email: Annotated[str, Query(min_length=3, max_length=320)], session: Session, caller: CurrentCaller, page: Paging
) -> dict[str, Any]:
    """What happened to this address across the caller's own tasks."""
    # Campaigns only (not test sends); reaches the (task_id, recipient_email) index.
    own_tasks = select(Task.id).where(Task.user_id == caller.id, Task.kind == TaskKind.BULK)
    query = (
        select(SubTask)
        .where(
            SubTask.task_id.in_(own_tasks),
            SubTask.user_id == caller.id,
            SubTask.recipient_email == email.strip().lower(),
        )
        .order_by(SubTask.id)
        .limit(page.limit + 1)
    )
    if page.after_id:
        query = query.where(SubTask.id > page.after_id)
    return page_of([{**subtask_view(s), "task_id": s.task_id} for s in await session.scalars(query)], page)
