"""User-facing task operations (docs/states.md#task-transitions, docs/tasks.md): create, edit, schedule, pause, resume,
cancel, close, delete, and decisions on uncertain SubTasks. Services: they flush, entry points commit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.content.render import (
    RenderError,
    RenderLimitExceeded,
    build_context,
    compile_template,
    off_loop,
    time_limit,
)
from edm.errors import (
    BadInput,
    ComplianceIncomplete,
    Conflict,
    InsufficientCredit,
    InvalidSchedule,
    InvalidTransition,
    NoRecipients,
    NotFound,
    TaskLocked,
)
from edm.models.contacts import Contact
from edm.models.content import Sender, Template
from edm.models.tasks import SubTask, Task, TaskStatusChange, TaskTemplate
from edm.models.users import User
from edm.paging import Page
from edm.system import runtime_settings
from edm.system.service import Actor, audit
from edm.tasks import lifecycle, sweep
from edm.tasks.recipients import Rule, estimate, validate_rule
from edm.tasks.transitions import transition
from edm.vocabulary.tasks import DELETABLE, PauseReason, SendState, TaskAction, TaskKind, TaskStatus, allowed_actions

EDITABLE_AFTER_GENERATION = {
    "name",
    "description",
    "priority",
    "allowed_service_ids",
    "error_thresholds",
    "on_capacity_exhausted",
}
SIMPLE_FIELDS = (
    "name",
    "description",
    "priority",
    "track_opens",
    "track_clicks",
    "on_capacity_exhausted",
    "allowed_service_ids",
    "error_thresholds",
    "timezone",
)
NOT_NULL_FIELDS = ("name", "priority", "track_opens", "track_clicks", "on_capacity_exhausted", "timezone", "templates")
MAX_AHEAD = dt.timedelta(days=365)
PAST_TOLERANCE = dt.timedelta(seconds=60)


async def get_task(session: AsyncSession, task_id: int, *, user_id: int | None) -> Task:
    """A task of `user_id` (None = any, for admins and the system). Other users' tasks are 404, and so are
    template test sends (kind `test`): they live under /test-sends (`tasks.test_sends`)."""
    task = await session.get(Task, task_id, populate_existing=True)
    if task is None or (user_id is not None and task.user_id != user_id) or task.kind != "bulk" or _deleting(task):
        raise NotFound("task not found")
    return task


def _deleting(task: Task) -> bool:
    """A task being deleted in the background is gone as far as anyone asking is concerned."""
    return task.status == TaskStatus.DELETING


async def list_tasks(
    session: AsyncSession,
    *,
    user_id: int | None,
    status: TaskStatus | None = None,
    page: Page | None = None,
    search: str | None = None,
) -> list[Task]:
    """Campaigns (never test sends: they are listed under /test-sends) of `user_id` (None = every user's) in id
    order; with a page, `page.limit + 1` rows after its id (for `page_of`), else all of them. `search`: part of
    the name, any case (`%` and `_` match themselves)."""
    query = select(Task).where(Task.kind == TaskKind.BULK, Task.status != TaskStatus.DELETING).order_by(Task.id)
    if user_id is not None:
        query = query.where(Task.user_id == user_id)
    if status:
        query = query.where(Task.status == status)
    if search:
        query = query.where(func.lower(Task.name).contains(search.lower(), autoescape=True))
    if page is not None:
        query = query.limit(page.limit + 1)
        if page.after_id:
            query = query.where(Task.id > page.after_id)
    return list(await session.scalars(query))


async def task_templates(session: AsyncSession, task_id: int) -> list[TaskTemplate]:
    """The task's template choices in their order."""
    query = select(TaskTemplate).where(TaskTemplate.task_id == task_id).order_by(TaskTemplate.position, TaskTemplate.id)
    return list(await session.scalars(query))


async def status_history(session: AsyncSession, task_id: int) -> list[TaskStatusChange]:
    query = select(TaskStatusChange).where(TaskStatusChange.task_id == task_id).order_by(TaskStatusChange.id)
    return list(await session.scalars(query))


async def create_task(session: AsyncSession, *, user_id: int, values: dict[str, Any], actor: str) -> Task:
    if not values.get("name"):
        raise BadInput.field("name", "is required")
    user = await session.get(User, user_id)
    task = Task(user_id=user_id, status=TaskStatus.DRAFT, timezone=user.timezone if user else "UTC")
    session.add(task)
    await _apply_fields(session, task, values)
    await session.flush()
    session.add(
        TaskStatusChange(
            task_id=task.id, from_status=None, to_status=TaskStatus.DRAFT, reason="create", actor=actor, at=utc_now()
        )
    )
    await session.flush()
    return task


async def update_task(
    session: AsyncSession, task: Task, values: dict[str, Any], *, rendered: TemplateRenders | None = None
) -> Task:
    """Change the given fields. A scheduled task must stay schedulable, its templates' test render included:
    `rendered` is what `plan_update` found and `check_renders` passed (the render then runs before this
    transaction); without it the render runs here. 409 `conflict` when what the update would render now is
    not what rendered (the task, its templates or its first contact changed in between)."""
    generated = task.status not in (TaskStatus.DRAFT, TaskStatus.SCHEDULED)
    if generated:
        locked = set(values) - EDITABLE_AFTER_GENERATION
        if locked:
            raise TaskLocked(f"{sorted(locked)[0]} cannot change after generation", fields=sorted(locked))
    await _apply_fields(session, task, values)
    if task.status == TaskStatus.SCHEDULED:
        _, renders = await _check_schedulable(session, task)  # stays valid or refuses
        if rendered is None:
            await check_renders(renders)
        elif renders != rendered:
            raise Conflict("the task changed while it was being updated: send the update again")
    await session.flush()
    return task


async def plan_update(session: AsyncSession, task: Task, values: dict[str, Any]) -> TemplateRenders | None:
    """What updating a scheduled task will render (None for a task in another status), for `check_renders`
    before the update's transaction. The update is tried in a savepoint that is rolled back: every refusal
    `update_task` would give before its render comes from here, and nothing is written."""
    if task.status != TaskStatus.SCHEDULED:
        return None
    savepoint = await session.begin_nested()
    try:
        await _apply_fields(session, task, values)
        _, renders = await _check_schedulable(session, task)
    finally:
        await savepoint.rollback()
        await session.refresh(task)
    return renders


async def _apply_fields(session: AsyncSession, task: Task, values: dict[str, Any]) -> None:
    for key in NOT_NULL_FIELDS:
        if key in values and values[key] is None:
            raise BadInput.field(key, "must not be null")
    for key in ("name", "description"):
        if isinstance(values.get(key), str) and "\x00" in values[key]:
            raise BadInput.field(key, "must not contain NUL characters")
    for key in SIMPLE_FIELDS:
        if key in values:
            setattr(task, key, values[key])
    if "timezone" in values:
        _check_zone(values["timezone"])
    if values.get("allowed_service_ids") is not None:
        task.allowed_service_ids = sorted(set(values["allowed_service_ids"]))
    if "sender_id" in values:
        task.sender_id = await _own_sender(session, task.user_id, values["sender_id"])
    if "recipient_rule" in values:
        rule = Rule.parse(values["recipient_rule"])
        await validate_rule(session, user_id=task.user_id, rule=rule)
        task.recipient_rule = rule.to_dict()
    if "templates" in values:
        await _set_templates(session, task, values["templates"])
    if "schedule_at" in values:
        _plan_time(task, values["schedule_at"])


def _plan_time(task: Task, at: dt.datetime | None) -> None:
    """A draft's planned send time: kept as given (even in the past) and checked only when the draft is scheduled,
    where it is the time used unless another is given. A scheduled task's time changes by unscheduling it."""
    if task.status != TaskStatus.DRAFT:
        raise TaskLocked("schedule_at changes only in a draft: unschedule the task first", fields=["schedule_at"])
    if at is not None and at.tzinfo is None:
        raise BadInput.field("schedule_at", "must include a time zone offset")
    task.schedule_at = at


def _check_zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput.field("timezone", f"unknown time zone {name!r}") from None


async def _own_sender(session: AsyncSession, user_id: int, sender_id: int | None) -> int | None:
    if sender_id is None:
        return None
    found = await session.scalar(
        select(Sender.id).where(Sender.id == sender_id, Sender.user_id == user_id, Sender.archived_at.is_(None))
    )
    if found is None:
        raise BadInput.field("sender_id", f"not found: {sender_id}")
    return found


async def _set_templates(session: AsyncSession, task: Task, templates: list[dict[str, Any]]) -> None:
    if not task.id:
        await session.flush()
    ids = [int(t["template_id"]) for t in templates]
    if len(set(ids)) != len(ids):
        raise BadInput.field("templates", "a template is listed twice")
    owned = set(
        await session.scalars(select(Template.id).where(Template.user_id == task.user_id, Template.id.in_(ids)))
    )
    missing = [i for i in ids if i not in owned]
    if missing:
        raise BadInput.field("templates.template_id", f"not found: {', '.join(map(str, missing[:10]))}")
    for entry in templates:
        weight = entry.get("weight", 1)
        if not isinstance(weight, int) or not 1 <= weight <= 100:
            raise BadInput.field("templates.weight", "must be an integer from 1 to 100")
    await session.execute(delete(TaskTemplate).where(TaskTemplate.task_id == task.id))
    for position, entry in enumerate(templates):
        session.add(
            TaskTemplate(
                task_id=task.id, template_id=int(entry["template_id"]), weight=entry.get("weight", 1), position=position
            )
        )
    await session.flush()


# ---- scheduling ---------------------------------------------------------------------------------------
#
# Scheduling renders every template once (a template that cannot render is refused now, not at send time),
# and a render may take its whole time limit. An entry point serving other users must not hold its
# transaction meanwhile (on SQLite: the database's write lock), so scheduling comes in three steps:
#
#     plan = await plan_schedule(session, task, at=..., production=...)   # reads and checks
#     <end the transaction>
#     await check_renders(plan.renders)                                    # no database
#     task = await apply_schedule(session, task, plan=plan, actor=...)     # the transition
#
# `schedule` runs the three in one transaction, for seeding and tests. Editing a scheduled task renders too:
# `plan_update`, <end the transaction>, `check_renders`, then `update_task(..., rendered=...)`.


@dataclass(frozen=True)
class _TemplateSource:
    id: int
    name: str
    subject: str
    html: str
    text: str | None
    preheader: str | None
    inline_css: bool


@dataclass(frozen=True)
class TemplateRenders:
    """The task's templates and the data the scheduling check renders them with (read beforehand). Equal
    values render alike: a write compares what it would render with what did render."""

    sources: tuple[_TemplateSource, ...]
    contact: dict[str, Any]  # the first contact's data (else sample data)
    task: dict[str, Any]  # the task's name and schedule time


@dataclass(frozen=True)
class SchedulePlan:
    """What the read part of scheduling found: the requested time, the recipient estimate, the renders still
    to check, and the task's fields the checks read (`apply_schedule` refuses when they changed since)."""

    at: dt.datetime
    estimate: dict[str, Any]
    renders: TemplateRenders
    checked: tuple[Any, ...]


async def schedule(
    session: AsyncSession, task: Task, *, at: dt.datetime | None, actor: str, production: bool = False
) -> Task:
    """draft → scheduled in one transaction, the render included (see the steps above)."""
    plan = await plan_schedule(session, task, at=at, production=production)
    await check_renders(plan.renders)
    return await apply_schedule(session, task, plan=plan, actor=actor)


async def plan_schedule(
    session: AsyncSession, task: Task, *, at: dt.datetime | None, production: bool = False
) -> SchedulePlan:
    """The checks of draft → scheduled that read the database: the time (`None` means now; generation runs
    when it is reached), sender, recipient rule, templates, compliance settings, sendable recipients and
    credit. Writes nothing."""
    now = utc_now()
    when = at or now
    if when.tzinfo is None:
        raise InvalidSchedule(
            "schedule time must include a time zone offset", details=[{"field": "at", "message": "naive time"}]
        )
    if when < now - PAST_TOLERANCE or when > now + MAX_AHEAD:
        raise InvalidSchedule(
            "schedule time must be between now and one year ahead", details=[{"field": "at", "message": "out of range"}]
        )
    estimate_, renders = await _check_schedulable(session, task, production=production)
    return SchedulePlan(when, estimate_, renders, await _checked_fields(session, task))


async def check_renders(renders: TemplateRenders) -> None:
    """Every template must render for the first sendable contact: a 422 naming the first that does not.
    Runs on the render threads (`off_loop`) and needs no database."""
    context = build_context(
        contact=renders.contact,
        sender={},
        task=renders.task,
        org={},
        unsubscribe_url="https://example.invalid/u/test",
        now=utc_now(),
    )
    await off_loop(_render_each, renders.sources, context)


async def apply_schedule(session: AsyncSession, task: Task, *, plan: SchedulePlan, actor: str) -> Task:
    """The transition of a planned schedule whose renders passed. 409 `conflict` when the task (its sender,
    recipient rule, name or templates) or what its templates render changed after the plan was made."""
    checked = await _checked_fields(session, task)
    if checked != plan.checked or await _renders(session, task, await task_templates(session, task.id)) != plan.renders:
        raise Conflict("the task changed while it was being scheduled: schedule it again")
    await transition(
        session,
        task.id,
        TaskAction.SCHEDULE,
        actor=actor,
        values={"schedule_at": max(plan.at, utc_now()), "schedule_estimate": plan.estimate},
    )
    await session.refresh(task)
    return task


async def _checked_fields(session: AsyncSession, task: Task) -> tuple[Any, ...]:
    """The task's values that scheduling checks, as stored now."""
    await session.refresh(task)
    templates = await session.execute(
        select(TaskTemplate.template_id, TaskTemplate.weight)
        .where(TaskTemplate.task_id == task.id)
        .order_by(TaskTemplate.position, TaskTemplate.id)
    )
    return (task.sender_id, task.recipient_rule, task.name, tuple(tuple(row) for row in templates.all()))


async def _check_schedulable(
    session: AsyncSession, task: Task, *, production: bool = False
) -> tuple[dict[str, Any], TemplateRenders]:
    if task.sender_id is None:
        raise BadInput.field("sender_id", "a sender is required to schedule")
    if not task.recipient_rule:
        raise BadInput.field("recipient_rule", "a recipient rule is required to schedule")
    templates = await task_templates(session, task.id)
    if not templates:
        raise BadInput.field("templates", "at least one template is required to schedule")
    runtime = await runtime_settings.load(session)
    if production and not runtime.compliance_postal_address.strip():
        raise ComplianceIncomplete("set compliance.postal_address before scheduling in production")
    rule = Rule.parse(task.recipient_rule)
    await validate_rule(session, user_id=task.user_id, rule=rule)
    numbers = await estimate(session, user_id=task.user_id, rule=rule, now=utc_now())
    if numbers["sendable"] < 1:
        raise NoRecipients("the recipient rule selects no sendable contact", estimate=numbers)
    balance = int(await session.scalar(select(User.credit_balance).where(User.id == task.user_id)) or 0)
    if balance < numbers["sendable"]:
        raise InsufficientCredit(
            f"insufficient credit: needed {numbers['sendable']}, available {balance}",
            needed=numbers["sendable"],
            available=balance,
        )
    renders = await _renders(session, task, templates)
    numbers["computed_at"] = utc_now().isoformat()
    return numbers, renders


async def _renders(session: AsyncSession, task: Task, templates: list[TaskTemplate]) -> TemplateRenders:
    """The templates and the data of the first sendable contact (else sample data) to render them with."""
    # As stored now (populate_existing): a write compares these with what its read transaction rendered.
    first = select(Contact).where(Contact.user_id == task.user_id).order_by(Contact.id).limit(1)
    contact = await session.scalar(first.execution_options(populate_existing=True))
    data = (
        {
            "email": contact.email,
            "name": contact.name,
            "first_name": contact.first_name,
            "attributes": contact.custom_attributes or {},
        }
        if contact
        else {"email": "sample@example.com"}
    )
    sources = []
    for task_template in templates:
        template = await session.get(Template, task_template.template_id, populate_existing=True)
        if template is None:
            raise BadInput.field("templates", f"template {task_template.template_id} no longer exists")
        sources.append(
            _TemplateSource(
                template.id,
                template.name,
                template.subject,
                template.html,
                template.text,
                template.preheader,
                template.inline_css,
            )
        )
    return TemplateRenders(tuple(sources), data, {"name": task.name, "scheduled_at": task.schedule_at})


def _render_each(sources: tuple[_TemplateSource, ...], context: dict[str, Any]) -> None:
    for source in sources:
        try:
            with time_limit():  # on the clock, as a preview: the person scheduling waits for the answer
                compile_template(
                    subject=source.subject,
                    html=source.html,
                    text=source.text,
                    preheader=source.preheader,
                    inline_css=source.inline_css,
                ).render(context)
        except RenderError as exc:
            detail: dict[str, Any] = {"field": "templates", "message": str(exc), "template_id": source.id}
            if isinstance(exc, RenderLimitExceeded):
                detail["limit"] = exc.limit
            raise BadInput(f"template {source.name!r} does not render: {exc}", details=[detail]) from None


async def unschedule(session: AsyncSession, task: Task, *, actor: str) -> Task:
    await transition(session, task.id, TaskAction.UNSCHEDULE, actor=actor, values={"schedule_at": None})
    await session.refresh(task)
    return task


# ---- pause, resume, cancel, close, delete -------------------------------------------------------------


async def _audit_for_other_owner(
    session: AsyncSession, by: Actor | None, action: str, task_id: int, owner: int, details: dict[str, Any]
) -> None:
    """An admin changing another user's campaign (`by` names someone else) is audited as `task.<action>`, here and
    only here, so the API, the console and the batch each leave exactly one row per change. Owners acting on their
    own campaigns, and the CLI, are recorded in the task's status history only."""
    if by is None or by.user_id is None or by.user_id == owner:
        return
    await audit(
        session,
        by,
        f"task.{action}",
        target_type="task",
        target_id=task_id,
        details={"owner_user_id": owner, **details},
    )


async def pause(
    session: AsyncSession,
    task: Task,
    *,
    actor: str,
    detail: str | None = None,
    resume_at: dt.datetime | None = None,
    by: Actor | None = None,
    in_batch: bool = False,
) -> Task:
    """Pause (the user's reason). `by`: who asked, for the audit of an admin pausing another user's campaign."""
    if resume_at is not None and resume_at <= utc_now():
        raise BadInput.field("resume_at", "must be in the future")
    before = task.status
    await transition(
        session,
        task.id,
        TaskAction.PAUSE,
        actor=actor,
        reason=PauseReason.USER,
        detail=detail,
        values={
            "pause_reason": PauseReason.USER,
            "pause_detail": detail,
            "resume_at": resume_at,
            "waiting_reason": None,
            "waiting_until": None,
        },
    )
    await session.refresh(task)
    changed = {"old_status": before, "new_status": task.status, **({"batch": True} if in_batch else {})}
    await _audit_for_other_owner(session, by, "pause", task.id, task.user_id, changed)
    return task


async def resume(session: AsyncSession, task: Task, *, actor: str, schedule_at: dt.datetime | None = None) -> Task:
    if task.status == TaskStatus.PAUSED and task.pause_reason == PauseReason.USER_QUOTA and task.recipient_rule:
        numbers = await estimate(session, user_id=task.user_id, rule=Rule.parse(task.recipient_rule), now=utc_now())
        balance = int(await session.scalar(select(User.credit_balance).where(User.id == task.user_id)) or 0)
        if balance < numbers["sendable"]:
            raise InsufficientCredit(
                f"insufficient credit: needed {numbers['sendable']}, available {balance}",
                needed=numbers["sendable"],
                available=balance,
            )
    await lifecycle.resume(session, task.id, actor=actor, now=utc_now(), schedule_at=schedule_at)
    await session.refresh(task)
    return task


async def cancel(session: AsyncSession, task: Task, *, actor: str, by: Actor | None = None) -> Task:
    """Pending SubTasks → cancelled (at once, or for a large task by the worker's sweep in batches:
    docs/tasks.md#large-tasks); in-flight attempts finish; the refund follows once none is allocated. `by`: as for
    `pause`."""
    now = utc_now()
    before = task.status
    await transition(
        session,
        task.id,
        TaskAction.CANCEL,
        actor=actor,
        values={"cancelled_at": now, "waiting_reason": None, "waiting_until": None},
    )
    await sweep.cancel_pending_if_few(session, task.id)  # else the worker's sweep cancels them in batches
    await lifecycle.settle_stopped(session, now=now)
    await session.refresh(task)
    await _audit_for_other_owner(
        session, by, "cancel", task.id, task.user_id, {"old_status": before, "new_status": task.status}
    )
    return task


async def close(session: AsyncSession, task: Task, *, actor: str, by: Actor | None = None) -> Task:
    """Close: no more sending, pending SubTasks cancelled, the refund settled. `by`: as for `pause`."""
    now = utc_now()
    before = task.status
    settled = task.status == TaskStatus.COMPLETED
    await transition(
        session,
        task.id,
        TaskAction.CLOSE,
        actor=actor,
        values={"closed_at": now, **({} if settled else {"settled_at": None})},
    )
    await sweep.cancel_pending_if_few(session, task.id)  # else the worker's sweep cancels them in batches
    if not settled:
        await lifecycle.settle_stopped(session, now=now)
    await session.refresh(task)
    await _audit_for_other_owner(
        session, by, "close", task.id, task.user_id, {"old_status": before, "new_status": task.status}
    )
    return task


async def delete_task(session: AsyncSession, task: Task, *, by: Actor | None = None) -> None:
    """Delete the task with its SubTasks, attempts and events (unsubscribe links keep working through tombstones):
    at once when it is small, else marked `deleting` (hidden from then on) for the worker's `sweep` job, which
    removes its rows in batches (docs/tasks.md#large-tasks). `by`: as for `pause`."""
    if task.status not in DELETABLE:
        raise InvalidTransition(
            f"cannot delete a task that is {task.status}",
            current_status=task.status,
            allowed_actions=allowed_actions(TaskStatus(task.status)),
        )
    task_id, owner, before = task.id, task.user_id, task.status
    if await sweep.fits_inline(session, task.id):
        await sweep.delete_rows(session, task, now=utc_now())
    else:
        task.status = TaskStatus.DELETING
        await session.flush()
    await _audit_for_other_owner(session, by, "delete", task_id, owner, {"old_status": before})


# ---- uncertain decisions (docs/sending.md#crashes-and-uncertain-sends) --------------------------------


async def decide_uncertain(session: AsyncSession, task: Task, *, action: str, subtask_ids: list[int] | None) -> int:
    """`retry` (→ pending, may duplicate) or `abandon` (→ failed `uncertain_abandoned`)."""
    where = [SubTask.task_id == task.id, SubTask.send_state == SendState.UNCERTAIN]
    if subtask_ids:
        where.append(SubTask.id.in_(subtask_ids))
    now = utc_now()
    if action == "retry":
        values: dict[str, Any] = {"send_state": SendState.PENDING, "service_id": None, "next_attempt_at": now}
    elif action == "abandon":
        values = {"send_state": SendState.FAILED, "failed_at": now, "last_error_code": "uncertain_abandoned"}
    else:
        raise BadInput.field("action", "must be retry or abandon")
    result = await session.execute(
        update(SubTask).where(*where).values(**values).execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def count_by_status(session: AsyncSession, *, user_id: int) -> dict[str, int]:
    rows = await session.execute(
        select(Task.status, func.count())
        .where(Task.user_id == user_id, Task.kind == TaskKind.BULK, Task.status != TaskStatus.DELETING)
        .group_by(Task.status)
    )
    return {status: count for status, count in rows.all()}
