"""User-facing task operations (SPEC §5.2, §6): create, edit, schedule, pause, resume, cancel, close, delete,
and decisions on uncertain SubTasks. Services: they flush, entry points commit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.content.render import RenderError, RenderLimitExceeded, build_context, compile_template, off_loop
from edm.errors import (
    BadInput,
    ComplianceIncomplete,
    InsufficientCredit,
    InvalidSchedule,
    InvalidTransition,
    NoRecipients,
    NotFound,
    TaskLocked,
)
from edm.models.contacts import Contact
from edm.models.content import Sender, Template
from edm.models.events import Event
from edm.models.tasks import SendAttempt, SubTask, Task, TaskStatusChange, TaskTemplate
from edm.models.users import User
from edm.system import runtime_settings
from edm.tasks import lifecycle
from edm.tasks.generation import mark_pending_cancelled
from edm.tasks.recipients import Rule, estimate, validate_rule
from edm.tasks.transitions import transition
from edm.tracking import tombstones
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
    if task is None or (user_id is not None and task.user_id != user_id) or task.kind != "bulk":
        raise NotFound("task not found")
    return task


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


async def update_task(session: AsyncSession, task: Task, values: dict[str, Any]) -> Task:
    generated = task.status not in (TaskStatus.DRAFT, TaskStatus.SCHEDULED)
    if generated:
        locked = set(values) - EDITABLE_AFTER_GENERATION
        if locked:
            raise TaskLocked(f"{sorted(locked)[0]} cannot change after generation", fields=sorted(locked))
    await _apply_fields(session, task, values)
    if task.status == TaskStatus.SCHEDULED:
        await _check_schedulable(session, task, at=task.schedule_at or utc_now())  # stays valid or refuses
    await session.flush()
    return task


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


async def schedule(
    session: AsyncSession, task: Task, *, at: dt.datetime | None, actor: str, production: bool = False
) -> Task:
    """draft → scheduled (SPEC §5.2 guards). `at=None` means now; generation runs when it is reached."""
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
    estimate_ = await _check_schedulable(session, task, at=when, production=production)
    await transition(
        session,
        task.id,
        TaskAction.SCHEDULE,
        actor=actor,
        values={"schedule_at": max(when, now), "schedule_estimate": estimate_},
    )
    await session.refresh(task)
    return task


async def _check_schedulable(
    session: AsyncSession, task: Task, *, at: dt.datetime, production: bool = False
) -> dict[str, Any]:
    if task.sender_id is None:
        raise BadInput.field("sender_id", "a sender is required to schedule")
    if not task.recipient_rule:
        raise BadInput.field("recipient_rule", "a recipient rule is required to schedule")
    templates = list(await session.scalars(select(TaskTemplate).where(TaskTemplate.task_id == task.id)))
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
    await _test_render(session, task, templates)
    numbers["computed_at"] = utc_now().isoformat()
    return numbers


async def _test_render(session: AsyncSession, task: Task, templates: list[TaskTemplate]) -> None:
    """Every template must render for the first sendable contact (SPEC §14.1)."""
    contact = await session.scalar(select(Contact).where(Contact.user_id == task.user_id).order_by(Contact.id).limit(1))
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
    context = build_context(
        contact=data,
        sender={},
        task={"name": task.name, "scheduled_at": task.schedule_at},
        org={},
        unsubscribe_url="https://example.invalid/u/test",
        now=utc_now(),
    )
    sources = []
    for task_template in templates:
        template = await session.get(Template, task_template.template_id)
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
    await off_loop(_render_each, sources, context)  # rendering may take its whole time limit: not on the loop


@dataclass(frozen=True)
class _TemplateSource:
    id: int
    name: str
    subject: str
    html: str
    text: str | None
    preheader: str | None
    inline_css: bool


def _render_each(sources: list[_TemplateSource], context: dict[str, Any]) -> None:
    for source in sources:
        try:
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


async def pause(
    session: AsyncSession, task: Task, *, actor: str, detail: str | None = None, resume_at: dt.datetime | None = None
) -> Task:
    if resume_at is not None and resume_at <= utc_now():
        raise BadInput.field("resume_at", "must be in the future")
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


async def cancel(session: AsyncSession, task: Task, *, actor: str) -> Task:
    """Pending SubTasks → cancelled at once; in-flight attempts finish; the refund follows (settle job)."""
    now = utc_now()
    await transition(
        session,
        task.id,
        TaskAction.CANCEL,
        actor=actor,
        values={"cancelled_at": now, "waiting_reason": None, "waiting_until": None},
    )
    await mark_pending_cancelled(session, task.id)
    await lifecycle.settle_stopped(session, now=now)
    await session.refresh(task)
    return task


async def close(session: AsyncSession, task: Task, *, actor: str) -> Task:
    now = utc_now()
    settled = task.status == TaskStatus.COMPLETED
    await transition(
        session,
        task.id,
        TaskAction.CLOSE,
        actor=actor,
        values={"closed_at": now, **({} if settled else {"settled_at": None})},
    )
    await mark_pending_cancelled(session, task.id)
    if not settled:
        await lifecycle.settle_stopped(session, now=now)
    await session.refresh(task)
    return task


async def delete_task(session: AsyncSession, task: Task) -> None:
    if task.status not in DELETABLE:
        raise InvalidTransition(
            f"cannot delete a task that is {task.status}",
            current_status=task.status,
            allowed_actions=allowed_actions(TaskStatus(task.status)),
        )

    # Mail already delivered keeps its unsubscribe link working for 365 days (§5.2): written before the rows go.
    await tombstones.write_for_task(session, task, now=utc_now())
    # §5.2: the task's events go with it (matched events carry task_id; the index on it serves this delete).
    await session.execute(delete(Event).where(Event.task_id == task.id))
    await session.execute(
        delete(SendAttempt).where(SendAttempt.subtask_id.in_(select(SubTask.id).where(SubTask.task_id == task.id)))
    )
    await session.execute(delete(SubTask).where(SubTask.task_id == task.id))
    await session.delete(task)
    await session.flush()


# ---- uncertain decisions (SPEC §7.8) ------------------------------------------------------------------


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
        .where(Task.user_id == user_id, Task.kind == TaskKind.BULK)
        .group_by(Task.status)
    )
    return {status: count for status, count in rows.all()}
