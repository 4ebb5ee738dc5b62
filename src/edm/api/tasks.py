"""Task routes (docs/api.md#endpoints-by-area): CRUD, transitions, statistics, reports (docs/statistics.md#reports),
per-recipient state and its CSV export, uncertain decisions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from edm.api.deps import Caller, CurrentCaller, IdPath, IdQuery, Paging, Session, Writer
from edm.clock import utc_now
from edm.db.session import end_transaction
from edm.errors import NotFound
from edm.models.tasks import Task
from edm.paging import MAX_ID, PageOut, page_of
from edm.tasks import actions, reports, service
from edm.tasks.reports import Bucket, DisplayStatus, Engagement, SubtaskFilters
from edm.tasks.schemas import (
    AbandonedOut,
    AddressSubtaskOut,
    AdminServiceRow,
    BatchBody,
    BatchOut,
    CancelledRecipientsOut,
    DomainReportOut,
    HeatmapOut,
    LinkReportOut,
    PauseBody,
    RecipientSelection,
    ResumeBody,
    RetriedOut,
    ScheduleBody,
    ServiceReportOut,
    ServiceRow,
    StatusChangeOut,
    SubtaskDetailOut,
    SubtaskPage,
    SubtaskReportOut,
    SubtaskSelection,
    TaskCopyOut,
    TaskCreate,
    TaskDetailOut,
    TaskFields,
    TaskOut,
    TaskStatsOut,
    TaskStatusCounts,
    TaskTemplateOut,
    TemplateReportOut,
    TimelineOut,
)
from edm.tasks.stats import task_stats
from edm.vocabulary.tasks import DeliveryState, SendState, TaskStatus

router = APIRouter(prefix="/api/v1", tags=["tasks"])


async def _own(session: Session, caller: Caller, task_id: IdPath, *, admin_may: bool = False) -> Task:
    """The caller's task; admins reach any task only for reading, pausing and cancelling."""
    return await service.get_task(session, task_id, user_id=None if (caller.is_admin and admin_may) else caller.id)


async def _end_reads(session: Session) -> None:
    """The reads are done: end the transaction before templates render, which may take their whole time limit
    and must not hold a connection (nor, on SQLite, the database's write lock) meanwhile. The writes that
    follow run in a transaction of their own."""
    await end_transaction(session)


async def _detail(session: Session, task: Task) -> TaskDetailOut:
    templates = [TaskTemplateOut.model_validate(t) for t in await service.task_templates(session, task.id)]
    return TaskDetailOut.model_validate({**TaskOut.model_validate(task).model_dump(), "templates": templates})


@router.get("/tasks", response_model=PageOut[TaskOut])
async def list_tasks(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    status: TaskStatus | None = None,
    user_id: IdQuery = None,
    q: Annotated[str | None, Query(max_length=200, description="part of the name, any case")] = None,
) -> dict[str, object]:
    """Campaigns in id order (template test sends are listed under /test-sends)."""
    tasks = await service.list_tasks(session, user_id=caller.owner_filter(user_id), status=status, page=page, search=q)
    return page_of([TaskOut.model_validate(t) for t in tasks], page)


@router.get("/tasks/summary", response_model=TaskStatusCounts, response_model_exclude_unset=True)
async def tasks_summary(session: Session, caller: CurrentCaller) -> dict[str, int]:
    return await service.count_by_status(session, user_id=caller.id)


@router.post("/tasks", status_code=201)
async def create_task(body: TaskCreate, session: Session, caller: Writer) -> TaskOut:
    task = await service.create_task(session, user_id=caller.id, values=body.values(), actor=str(caller.id))
    return TaskOut.model_validate(task)


@router.get("/tasks/{task_id}")
async def get_task(task_id: IdPath, session: Session, caller: CurrentCaller) -> TaskDetailOut:
    return await _detail(session, await _own(session, caller, task_id, admin_may=True))


@router.patch("/tasks/{task_id}")
async def update_task(task_id: IdPath, body: TaskFields, session: Session, caller: Writer) -> TaskOut:
    task = await _own(session, caller, task_id)
    values = body.values()
    renders = await service.plan_update(session, task, values)
    if renders is not None:  # a scheduled task: its templates render again
        await _end_reads(session)
        await service.check_renders(renders)
        task = await _own(session, caller, task_id)
    return TaskOut.model_validate(await service.update_task(session, task, values, rendered=renders))


@router.delete("/tasks/{task_id}", status_code=204)
async def delete_task(task_id: IdPath, request: Request, session: Session, caller: Writer) -> Response:
    task = await _own(session, caller, task_id, admin_may=True)
    await service.delete_task(session, task, by=caller.actor(request))
    return Response(status_code=204)


@router.post("/tasks/{task_id}/schedule")
async def schedule(task_id: IdPath, body: ScheduleBody, request: Request, session: Session, caller: Writer) -> TaskOut:
    task = await _own(session, caller, task_id)
    production = request.app.state.settings.is_production
    at = None if body.now else body.at or task.schedule_at  # the draft's planned time when no other is given
    plan = await service.plan_schedule(session, task, at=at, production=production)
    await _end_reads(session)
    await service.check_renders(plan.renders)
    task = await _own(session, caller, task_id)
    return TaskOut.model_validate(await service.apply_schedule(session, task, plan=plan, actor=str(caller.id)))


@router.post("/tasks/{task_id}/unschedule")
async def unschedule(task_id: IdPath, session: Session, caller: Writer) -> TaskOut:
    task = await service.unschedule(session, await _own(session, caller, task_id), actor=str(caller.id))
    return TaskOut.model_validate(task)


@router.post("/tasks/{task_id}/pause")
async def pause(
    task_id: IdPath, request: Request, session: Session, caller: Writer, body: PauseBody | None = None
) -> TaskOut:
    body = body or PauseBody()
    task = await _own(session, caller, task_id, admin_may=True)
    task = await service.pause(
        session, task, actor=str(caller.id), detail=body.detail, resume_at=body.resume_at, by=caller.actor(request)
    )
    return TaskOut.model_validate(task)


@router.post("/tasks/{task_id}/resume")
async def resume(task_id: IdPath, session: Session, caller: Writer, body: ResumeBody | None = None) -> TaskOut:
    task = await _own(session, caller, task_id)
    task = await service.resume(session, task, actor=str(caller.id), schedule_at=body.schedule_at if body else None)
    return TaskOut.model_validate(task)


@router.post("/tasks/{task_id}/cancel")
async def cancel(task_id: IdPath, request: Request, session: Session, caller: Writer) -> TaskOut:
    task = await _own(session, caller, task_id, admin_may=True)
    task = await service.cancel(session, task, actor=str(caller.id), by=caller.actor(request))
    return TaskOut.model_validate(task)


@router.post("/tasks/{task_id}/close")
async def close(task_id: IdPath, request: Request, session: Session, caller: Writer) -> TaskOut:
    task = await _own(session, caller, task_id, admin_may=True)
    task = await service.close(session, task, actor=str(caller.id), by=caller.actor(request))
    return TaskOut.model_validate(task)


@router.post("/tasks/{task_id}/copy", status_code=201)
async def copy(task_id: IdPath, session: Session, caller: Writer) -> TaskCopyOut:
    """A new draft of the caller with the task's content and options, from any status (not its schedule,
    status, statistics or SubTasks). `omitted` lists what could not be copied (an archived sender, a deleted
    template, a rule naming deleted contacts or tags): fill it in before scheduling."""
    task, omitted = await actions.copy_task(
        session, await _own(session, caller, task_id), user_id=caller.id, actor=str(caller.id)
    )
    return TaskCopyOut.model_validate({**(await _detail(session, task)).model_dump(), "omitted": omitted})


@router.post("/tasks/batch")
async def batch(body: BatchBody, request: Request, session: Session, caller: Writer) -> BatchOut:
    """Pause or resume up to 50 tasks, each on its own; the result per task in request order (`ok` and the new
    `status`, or `error` with the code and message the single endpoint would give)."""
    results = await actions.batch_transition(
        session,
        action=body.action,
        task_ids=body.task_ids,
        user_id=caller.id,
        is_admin=caller.is_admin,
        actor=str(caller.id),
        by=caller.actor(request),
    )
    applied = sum(1 for r in results if r["ok"])
    return BatchOut.model_validate({"applied": applied, "failed": len(results) - applied, "results": results})


@router.get("/tasks/{task_id}/stats")
async def stats(task_id: IdPath, session: Session, caller: CurrentCaller) -> TaskStatsOut:
    task = await _own(session, caller, task_id, admin_may=True)
    return TaskStatsOut.model_validate(
        {
            "task_id": task.id,
            "status": task.status,
            "waiting_reason": task.waiting_reason,
            "waiting_until": task.waiting_until,
            "pause_reason": task.pause_reason,
            "computed_at": utc_now(),
            **await task_stats(session, task.id),
        }
    )


@router.get("/tasks/{task_id}/status-history")
async def status_history(task_id: IdPath, session: Session, caller: CurrentCaller) -> list[StatusChangeOut]:
    task = await _own(session, caller, task_id, admin_may=True)
    return [StatusChangeOut.model_validate(change) for change in await service.status_history(session, task.id)]


def _subtask_filters(
    send_state: SendState | None = None,
    delivery_state: DeliveryState | None = None,
    display_status: Annotated[
        DisplayStatus | None, Query(description="the derived status of docs/states.md#engagement-and-display-status")
    ] = None,
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


@router.get("/tasks/{task_id}/subtasks", response_model=SubtaskPage, response_model_exclude_unset=True)
async def list_subtasks(
    task_id: IdPath,
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    filters: Filters,
    include_total: bool = False,
) -> dict[str, object]:
    """The task's recipients in id order, filtered, each with its display status. `total` only
    with `include_total=true`."""
    task = await _own(session, caller, task_id, admin_may=True)
    rows = await reports.subtask_page(session, task.id, filters, after_id=page.after_id, limit=page.limit + 1)
    answer = page_of([SubtaskReportOut.of(r) for r in rows], page)
    if include_total:
        answer["total"] = await reports.count_subtasks(session, task.id, filters)
    return answer


_CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "RFC 4180 CSV, streamed"}
}


@router.get("/tasks/{task_id}/subtasks.csv", response_class=StreamingResponse, responses=_CSV_ANSWER)
@router.get("/tasks/{task_id}/export", include_in_schema=False)  # short alias (docs/statistics.md)
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
async def get_subtask(task_id: IdPath, subtask_id: IdPath, session: Session, caller: CurrentCaller) -> SubtaskDetailOut:
    """Who got it and what happened: the SubTask, every attempt and every event, in time order."""
    task = await _own(session, caller, task_id, admin_may=True)
    row = await reports.subtask_row(session, task.id, subtask_id)
    if row is None:
        raise NotFound("subtask not found")
    history = await reports.subtask_history(session, row.SubTask.id)
    return SubtaskDetailOut.model_validate({**SubtaskReportOut.of(row).model_dump(), **history})


@router.get("/tasks/{task_id}/report/services")
async def report_services(task_id: IdPath, session: Session, caller: CurrentCaller) -> ServiceReportOut:
    """Per service of the last attempt: attempts by outcome, results, mean latency (labels only for users)."""
    task = await _own(session, caller, task_id, admin_may=True)
    row_model = AdminServiceRow if caller.is_admin else ServiceRow
    rows = await reports.by_service(session, task.id, admin=caller.is_admin)
    return ServiceReportOut(task_id=task.id, items=[row_model.model_validate(r) for r in rows])


@router.get("/tasks/{task_id}/report/templates")
async def report_templates(task_id: IdPath, session: Session, caller: CurrentCaller) -> TemplateReportOut:
    """Per task template (A/B): every count and rate of the task statistics."""
    task = await _own(session, caller, task_id, admin_may=True)
    return TemplateReportOut.model_validate({"task_id": task.id, "items": await reports.by_template(session, task.id)})


@router.get("/tasks/{task_id}/report/links")
@router.get("/tasks/{task_id}/links", include_in_schema=False)  # short alias (docs/statistics.md)
async def report_links(task_id: IdPath, session: Session, caller: CurrentCaller, page: Paging) -> LinkReportOut:
    """Tracked links in id order with human and machine clicks and unique human clickers."""
    task = await _own(session, caller, task_id, admin_may=True)
    items = await reports.by_link(session, task.id, after_id=page.after_id, limit=page.limit + 1)
    return LinkReportOut.model_validate({"task_id": task.id, **page_of(items, page)})


@router.get("/tasks/{task_id}/report/domains")
@router.get("/tasks/{task_id}/domains", include_in_schema=False)  # short alias (docs/statistics.md)
async def report_domains(task_id: IdPath, session: Session, caller: CurrentCaller) -> DomainReportOut:
    """The top 20 recipient domains by sent, and the rest as `other`."""
    task = await _own(session, caller, task_id, admin_may=True)
    return DomainReportOut.model_validate({"task_id": task.id, **await reports.by_domain(session, task.id)})


@router.get("/tasks/{task_id}/report/timeline")
@router.get("/tasks/{task_id}/timeline", include_in_schema=False)  # short alias (docs/statistics.md)
async def report_timeline(
    task_id: IdPath, session: Session, caller: CurrentCaller, bucket: Bucket = Bucket.HOUR
) -> TimelineOut:
    """Hourly or daily buckets in the task's time zone (non-empty buckets only)."""
    task = await _own(session, caller, task_id, admin_may=True)
    return TimelineOut.model_validate(await reports.timeline(session, task, bucket))


@router.get("/tasks/{task_id}/report/heatmap")
async def report_heatmap(task_id: IdPath, session: Session, caller: CurrentCaller) -> HeatmapOut:
    """Human opens by weekday × hour in the task's time zone."""
    task = await _own(session, caller, task_id, admin_may=True)
    return HeatmapOut.model_validate(await reports.heatmap(session, task))


@router.post("/tasks/{task_id}/uncertain/{action}")
async def decide_uncertain(
    task_id: IdPath,
    action: Literal["retry", "abandon"],
    session: Session,
    caller: Writer,
    body: SubtaskSelection | None = None,
) -> RetriedOut | AbandonedOut:
    """`retry` puts uncertain recipients back in the queue (may duplicate); `abandon` fails them
    (docs/sending.md#crashes-and-uncertain-sends)."""
    task = await _own(session, caller, task_id)
    count = await service.decide_uncertain(session, task, action=action, subtask_ids=body.subtask_ids if body else None)
    return RetriedOut(retried=count) if action == "retry" else AbandonedOut(abandoned=count)


@router.post("/tasks/{task_id}/subtasks/cancel")
async def cancel_subtasks(
    task_id: IdPath, body: RecipientSelection, session: Session, caller: Writer
) -> CancelledRecipientsOut:
    """Cancel the selected recipients that are still pending (never one a worker has claimed); charged ones
    are refunded at once. Counts: `cancelled`, `not_pending` (already claimed or final), `not_found`."""
    task = await _own(session, caller, task_id)
    counts = await actions.cancel_subtasks(session, task, subtask_ids=body.subtask_ids, emails=body.emails)
    return CancelledRecipientsOut.model_validate(counts)


@router.get("/subtasks", response_model=PageOut[AddressSubtaskOut])
async def subtasks_by_email(
    email: Annotated[str, Query(min_length=3, max_length=320)], session: Session, caller: CurrentCaller, page: Paging
) -> dict[str, object]:
    """What happened to this address across the caller's own tasks (campaigns, not test sends)."""
    found = await reports.subtasks_of_address(session, user_id=caller.id, email=email, page=page)
    return page_of([AddressSubtaskOut.model_validate(s) for s in found], page)
