"""Template test sends (docs/templates.md#test-sends): a template sent to 1–5 of the marketer's own addresses.

A test send is a Task of kind `test`, created already `queued` in one transaction with its frozen template
snapshot (as generation takes it), one SubTask per address and a `charge` of 1 credit per address. From
there it is ordinary work: the claim takes it before bulk SubTasks of the same service (docs/sending.md#the-claim), with
the same rate slots, concurrency and daily quota; the finalize job completes it. What differs is decided elsewhere
from `Task.kind`: the composer prefixes the subject with `[TEST] ` and leaves tracking off, and the
unsubscribe page of a test SubTask says it was a test and records nothing.

The SubTasks have no contact (`contact_id` NULL): the addresses were typed by the marketer, for their own
inboxes. They are therefore not checked against suppression lists or contact state, neither here nor at
claim time; the bounds on misuse are the 5 addresses per send, 50 test recipients per user per UTC day and
the credit each costs. The contact whose data fills the variables (else the preview's sample data) is kept
in the task's `recipient_rule` as {"type": "test", "contact_id": …, "template_id": …}.

Test tasks are hidden from the task lists and refused (404) by the /tasks endpoints: they live under
/test-sends. Services: they flush, the entry point commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.addresses import normalize_email
from edm.clock import utc_now
from edm.content import service as content
from edm.errors import BadInput, Conflict, EdmError, NotFound
from edm.models.content import Sender, Template
from edm.models.email_services import EmailService
from edm.models.events import Event
from edm.models.tasks import SendAttempt, SubTask, Task, TaskStatusChange, TaskTemplate
from edm.models.users import LedgerKind
from edm.paging import Page, encode_cursor
from edm.users.credit import apply_credit, lock_user
from edm.vocabulary.tasks import OPEN_SEND_STATES, SendState, TaskKind, TaskStatus

KIND = TaskKind.TEST
MAX_ADDRESSES = 5
DAILY_LIMIT = 50  # test recipients per user per UTC day (docs/templates.md#test-sends)


class TestSendLimitReached(EdmError):
    """429 `test_send_limit`: the user's test recipients of the UTC day would pass the limit."""

    __test__ = False  # not a pytest class
    status, code = 429, "test_send_limit"


@dataclass(frozen=True)
class TestSendRequest:
    __test__ = False

    template_id: int
    emails: Sequence[str]
    contact_id: int | None = None
    sender_id: int | None = None


def clean_addresses(emails: Sequence[str]) -> list[str]:
    """1–5 valid addresses, normalized, duplicates dropped (first spelling kept); 422 names a bad one."""
    if not 1 <= len(emails) <= MAX_ADDRESSES:
        raise BadInput.field("emails", f"give 1 to {MAX_ADDRESSES} addresses (got {len(emails)})")
    out: list[str] = []
    for value in emails:
        address = normalize_email(value if isinstance(value, str) else "", field="emails").normalized
        if address not in out:
            out.append(address)
    return out


def day_start(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def used_today(session: AsyncSession, *, user_id: int, now: dt.datetime) -> int:
    """Test recipients the user queued since the start of the UTC day."""
    count = await session.scalar(
        select(func.count())
        .select_from(SubTask)
        .join(Task, Task.id == SubTask.task_id)
        .where(Task.user_id == user_id, Task.kind == KIND, Task.created_at >= day_start(now))
    )
    return int(count or 0)


@dataclass(frozen=True)
class TestSendPlan:
    """What the read part of a test send checked and found; `check_render` renders it, `queue` writes it.

    Rendering may take its whole time limit: an entry point serving other users ends its transaction after
    `plan` and before `check_render` (on SQLite the transaction holds the database's write lock)."""

    __test__ = False

    template_id: int
    addresses: tuple[str, ...]
    sender_id: int
    contact_id: int | None
    source: content.PreviewSource
    preview: content.PreviewJob


async def create(
    session: AsyncSession, *, user_id: int, request: TestSendRequest, actor: str, now: dt.datetime | None = None
) -> Task:
    """Queue a test send in one transaction, the render included (seeding and tests; see `TestSendPlan`)."""
    plan_ = await plan(session, user_id=user_id, request=request)
    await check_render(plan_)
    return await queue(session, user_id=user_id, plan=plan_, actor=actor, now=now)


async def plan(session: AsyncSession, *, user_id: int, request: TestSendRequest) -> TestSendPlan:
    """The checks that read the database: 404 for a template that is not the user's; 422 for a bad address,
    sender or contact (the contact must be the user's). Writes nothing."""
    template = await content.get_template(session, user_id=user_id, template_id=request.template_id)
    addresses = clean_addresses(request.emails)
    sender = await _sender(session, user_id, request.sender_id)
    source = _source(template)
    job = await content.prepare_preview(
        session, user_id=user_id, contact_id=request.contact_id, sender_id=sender.id, source=source
    )
    return TestSendPlan(template.id, tuple(addresses), sender.id, request.contact_id, source, job)


async def check_render(plan: TestSendPlan) -> None:
    """Renders once now, with the same data the worker will use: a template or contact problem is a 422 here
    rather than a failed test later. Needs no database."""
    await content.render_preview(plan.preview)


async def queue(
    session: AsyncSession, *, user_id: int, plan: TestSendPlan, actor: str, now: dt.datetime | None = None
) -> Task:
    """Write a planned test send whose render passed (202 at the API): 429 past the daily limit, 409 without
    credit, 409 `conflict` when the template changed after the plan was made (what rendered is what is sent)."""
    now = now or utc_now()
    template = await content.get_template(session, user_id=user_id, template_id=plan.template_id)
    await session.refresh(template)  # as stored now, not as the plan's transaction read it
    if _source(template) != plan.source:
        raise Conflict("the template changed while the test send was being prepared: send it again")
    sender = await _sender(session, user_id, plan.sender_id)
    addresses = plan.addresses
    user = await lock_user(session, user_id)  # serializes the user's test sends: the limit check holds
    await _check_daily_limit(session, user_id=user_id, adding=len(addresses), now=now)
    task = Task(
        user_id=user_id,
        kind=KIND,
        name=f"Test send: {template.name}"[:200],
        status=TaskStatus.QUEUED,
        sender_id=sender.id,
        timezone=user.timezone or "UTC",
        priority=9,
        track_opens=False,
        track_clicks=False,
        schedule_at=now,
        generated_at=now,
        threshold_window_started_at=now,
        recipient_rule={"type": KIND, "contact_id": plan.contact_id, "template_id": template.id},
        generation_summary={"recipients": len(addresses), "sendable": len(addresses)},
    )
    session.add(task)
    await session.flush()
    snapshot = TaskTemplate(
        task_id=task.id,
        template_id=template.id,
        weight=1,
        position=0,
        snapshot_at=now,
        name=template.name,
        subject=template.subject,
        preheader=template.preheader,
        html=template.html,
        text=template.text,
        inline_css=template.inline_css,
    )
    session.add(snapshot)
    session.add(
        TaskStatusChange(
            task_id=task.id, from_status=None, to_status=TaskStatus.QUEUED, reason="test_send", actor=actor, at=now
        )
    )
    await session.flush()
    session.add_all(
        [
            SubTask(
                public_id=uuid.uuid4(),
                task_id=task.id,
                user_id=user_id,
                contact_id=None,
                recipient_email=address,
                task_template_id=snapshot.id,
                seq=seq,
                send_state=SendState.PENDING,
                charged=True,
                attempts=0,
                retryable_failures=0,
                next_attempt_at=now,
            )
            for seq, address in enumerate(addresses, start=1)
        ]
    )
    await session.flush()
    # Charged when queued, like the reserve of a generated task; not refunded when a send fails
    # (docs/templates.md#credit-and-limits).
    await apply_credit(
        session,
        user_id=user_id,
        kind=LedgerKind.CHARGE,
        amount=-len(addresses),
        reason=f"test send {task.id} of template {template.id}: {len(addresses)} recipients",
        task_id=task.id,
    )
    return task


def _source(template: Template) -> content.PreviewSource:
    return content.PreviewSource(
        subject=template.subject,
        html=template.html,
        text=template.text,
        preheader=template.preheader,
        inline_css=template.inline_css,
    )


async def _sender(session: AsyncSession, user_id: int, sender_id: int | None) -> Sender:
    """The chosen sender of the user, else the user's first sender that is not archived."""
    query = select(Sender).where(Sender.user_id == user_id, Sender.archived_at.is_(None))
    if sender_id is not None:
        query = query.where(Sender.id == sender_id)
    sender = await session.scalar(query.order_by(Sender.id).limit(1))
    if sender is None:
        raise BadInput.field(
            "sender_id",
            f"not found: {sender_id}"
            if sender_id is not None
            else "you have no sender yet: create one (POST /api/v1/senders) first",
        )
    return sender


async def _check_daily_limit(session: AsyncSession, *, user_id: int, adding: int, now: dt.datetime) -> None:
    used = await used_today(session, user_id=user_id, now=now)
    if used + adding > DAILY_LIMIT:
        resets_at = day_start(now) + dt.timedelta(days=1)
        raise TestSendLimitReached(
            f"test send limit reached: {used} of {DAILY_LIMIT} test recipients used today (UTC), "
            f"{adding} more asked; the limit resets at {resets_at.isoformat()}",
            limit=DAILY_LIMIT,
            used=used,
            resets_at=resets_at.isoformat(),
        )


# ---- reading -------------------------------------------------------------------------------------------


async def get(session: AsyncSession, *, user_id: int, test_send_id: int) -> Task:
    """The user's test send; another user's, or a bulk task's id, is 404."""
    task = await session.get(Task, test_send_id, populate_existing=True)
    if task is None or task.user_id != user_id or task.kind != KIND:
        raise NotFound("test send not found")
    return task


async def describe(session: AsyncSession, task: Task) -> dict[str, Any]:
    """The test send with each recipient's state (the answer of the API and the CLI)."""
    return view(task, (await recipients(session, [task.id]))[task.id])


async def newest_first(session: AsyncSession, *, user_id: int, page: Page) -> dict[str, Any]:
    """One page of the user's test sends, newest first: `items` (as `describe`) and `next_cursor`."""
    tasks = await list_ids(session, user_id=user_id, before_id=page.after_id, limit=page.limit + 1)
    more = len(tasks) > page.limit
    tasks = tasks[: page.limit]
    found = await recipients(session, [t.id for t in tasks])
    return {
        "items": [view(t, found[t.id]) for t in tasks],
        "next_cursor": encode_cursor(tasks[-1].id) if more and tasks else None,
    }


async def template_owner(session: AsyncSession, template_id: int) -> int:
    """The id of the user who owns the template (for the operator's CLI, which acts as that user)."""
    template = await session.get(Template, template_id)
    if template is None:
        raise NotFound(f"template {template_id} not found")
    return int(template.user_id)


async def list_ids(session: AsyncSession, *, user_id: int, before_id: int | None, limit: int) -> list[Task]:
    """The user's test sends, newest first."""
    query = select(Task).where(Task.user_id == user_id, Task.kind == KIND)
    if before_id is not None:
        query = query.where(Task.id < before_id)
    return list(await session.scalars(query.order_by(Task.id.desc()).limit(limit)))


async def recipients(session: AsyncSession, task_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Per test send, its recipients in the order given, with the label of the service that sent each."""
    rows = (
        await session.execute(
            select(SubTask, EmailService.label)
            .outerjoin(EmailService, EmailService.id == SubTask.service_id)
            .where(SubTask.task_id.in_(task_ids))
            .order_by(SubTask.task_id, SubTask.seq)
        )
    ).all()
    out: dict[int, list[dict[str, Any]]] = {task_id: [] for task_id in task_ids}
    for subtask, label in rows:
        out[subtask.task_id].append(recipient_view(subtask, label))
    return out


def recipient_view(s: SubTask, service_label: str | None) -> dict[str, Any]:
    return {
        "email": s.recipient_email,
        "state": state_of(s),
        "send_state": s.send_state,
        "delivery_state": s.delivery_state,
        "settled": s.send_state not in OPEN_SEND_STATES,
        "attempts": s.attempts,
        "sent_at": s.sent_at,
        "failed_at": s.failed_at,
        "service": service_label,
        "subject_sent": s.subject_sent,
        "error_code": s.last_error_code,
        "error": s.last_error,
        "subtask_id": s.id,
    }


def state_of(s: SubTask) -> str:
    """One word per recipient: pending, sending, sent, delivered, bounced…, failed, uncertain, cancelled."""
    if s.send_state == SendState.ALLOCATED:
        return "sending"
    if s.send_state == SendState.SENT and s.delivery_state not in (None, "none"):
        return str(s.delivery_state)
    return str(s.send_state)


def view(task: Task, recipients_: list[dict[str, Any]]) -> dict[str, Any]:
    rule = task.recipient_rule or {}
    return {
        "id": task.id,
        "status": task.status,
        "waiting_reason": task.waiting_reason,
        "pause_reason": task.pause_reason,
        "template_id": rule.get("template_id"),
        "contact_id": rule.get("contact_id"),
        "sample_data": rule.get("contact_id") is None,
        "sender_id": task.sender_id,
        "created_at": task.created_at,
        "first_sent_at": task.first_sent_at,
        "completed_at": task.completed_at,
        "settled": all(r["settled"] for r in recipients_),
        "recipients": recipients_,
    }


# Test sends that are over: what the retention job may delete (docs/operations.md#retention).
FINISHED = (TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.CLOSED)


def expired(before: dt.datetime) -> list[Any]:
    """The conditions of a test send the retention job deletes: finished, and created before `before`."""
    return [Task.kind == KIND, Task.status.in_(FINISHED), Task.created_at < before]


async def delete_expired(session: AsyncSession, *, before: dt.datetime, limit: int) -> int:
    """Delete up to `limit` finished test sends created before `before`, with their SubTasks, attempts and events
    (their snapshot, links and history go with the task by cascade). Returns how many tasks. The credit they cost
    stays in the ledger."""
    ids = list(await session.scalars(select(Task.id).where(*expired(before)).order_by(Task.id).limit(limit)))
    if not ids:
        return 0
    subtasks = select(SubTask.id).where(SubTask.task_id.in_(ids))
    await session.execute(delete(Event).where(Event.task_id.in_(ids)))
    await session.execute(delete(SendAttempt).where(SendAttempt.subtask_id.in_(subtasks)))
    await session.execute(delete(SubTask).where(SubTask.task_id.in_(ids)))
    result = await session.execute(delete(Task).where(Task.id.in_(ids), *expired(before)))
    return int(getattr(result, "rowcount", 0) or 0)
