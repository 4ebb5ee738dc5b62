"""What the system does to tasks on its own: finalization with refunds, auto-resume, auto-pause on error
rates, waiting reasons and the service-unavailable pause (docs/states.md, docs/tasks.md#generation, docs/sending.md).

Services: they take a session and flush; the maintenance jobs (entry points) commit.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm import telemetry
from edm.db.session import after_commit
from edm.errors import InvalidTransition
from edm.models.email_services import UserServiceMapping
from edm.models.tasks import SubTask, Task
from edm.models.users import LedgerKind, QuotaLedgerEntry, User
from edm.system.runtime_settings import RuntimeSettings
from edm.tasks import sweep
from edm.tasks.transitions import transition
from edm.users.credit import apply_credit
from edm.vocabulary.tasks import (
    OPEN_SEND_STATES,
    PauseReason,
    SendState,
    TaskAction,
    TaskStatus,
    WaitingReason,
    resume_target,
)

RUNNING = (TaskStatus.QUEUED, TaskStatus.SENDING)


# ---- refunds ------------------------------------------------------------------------------------------


async def refund_owed(session: AsyncSession, task_id: int, *, stopped: bool = False) -> int:
    """Charged SubTasks that ended suppressed or cancelled, minus what the task's refunds already gave back. With
    `stopped` (a cancelled or closed task) pending ones count too: each is, or is about to be, cancelled by the
    sweep (docs/tasks.md#large-tasks), so the refund of a large task does not wait for its rows to change."""
    unsent = (SendState.SUPPRESSED, SendState.CANCELLED) + ((SendState.PENDING,) if stopped else ())
    owed = await session.scalar(
        select(func.count()).where(
            SubTask.task_id == task_id, SubTask.charged.is_(True), SubTask.send_state.in_(unsent)
        )
    )
    refunded = await session.scalar(
        select(func.coalesce(func.sum(QuotaLedgerEntry.amount), 0)).where(
            QuotaLedgerEntry.task_id == task_id, QuotaLedgerEntry.kind == LedgerKind.REFUND
        )
    )
    return int(owed or 0) - int(refunded or 0)


async def refund(session: AsyncSession, task: Any, *, occasion: str, stopped: bool = False) -> int:
    amount = await refund_owed(session, task.id, stopped=stopped)
    if amount > 0:
        await apply_credit(
            session,
            user_id=task.user_id,
            kind=LedgerKind.REFUND,
            amount=amount,
            reason=f"task {task.id} {occasion}: {amount} unsent recipients",
            task_id=task.id,
        )
    return max(0, amount)


# ---- finalization -------------------------------------------------------------------------------------


def _has_open(task_col: Any) -> Any:
    return exists().where(SubTask.task_id == task_col, SubTask.send_state.in_(tuple(OPEN_SEND_STATES)))


async def finalize(session: AsyncSession, *, now: dt.datetime, limit: int = 100) -> list[int]:
    """Running tasks with no SubTask left pending, allocated or uncertain become `completed`, refunded once."""
    rows = (
        await session.execute(
            select(Task.id, Task.user_id, Task.kind, Task.schedule_at)
            .where(Task.status.in_(RUNNING), ~_has_open(Task.id))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    done = []
    for task in rows:
        # Re-check under the row lock: a claim may have committed between the SELECT and the lock.
        if await session.scalar(select(_has_open(task.id))):
            continue
        await transition(
            session,
            task.id,
            TaskAction.FINISH,
            reason="all_recipients_final",
            values={"completed_at": now, "settled_at": now, "waiting_reason": None, "waiting_until": None},
        )
        await refund(session, task, occasion="completed")
        done.append(task.id)
        after_commit(session, functools.partial(_observe_completion, task.kind, task.schedule_at, now))
    return done


def _observe_completion(kind: str, schedule_at: dt.datetime | None, at: dt.datetime) -> None:
    telemetry.observe_task_delay(telemetry.COMPLETION_DELAY, kind, schedule_at, at)


async def settle_stopped(session: AsyncSession, *, now: dt.datetime, limit: int = 100) -> list[int]:
    """Cancelled/closed tasks: one refund once no SubTask is still allocated (in-flight attempts finished)."""
    allocated = exists().where(SubTask.task_id == Task.id, SubTask.send_state == SendState.ALLOCATED)
    rows = (
        await session.execute(
            select(Task.id, Task.user_id, Task.status)
            .where(Task.status.in_((TaskStatus.CANCELLED, TaskStatus.CLOSED)), Task.settled_at.is_(None), ~allocated)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    for task in rows:
        # Anything still pending in a stopped task (a deferred outcome recorded as the stop committed) is cancelled
        # here when it is a few rows; a large task's are left to the worker's sweep (docs/tasks.md#large-tasks). The
        # refund below covers them either way.
        await sweep.cancel_pending_if_few(session, task.id)
        await refund(session, task, occasion=str(task.status), stopped=True)
        await session.execute(update(Task).where(Task.id == task.id).values(settled_at=now))
    return [t.id for t in rows]


async def auto_resume(session: AsyncSession, *, now: dt.datetime) -> list[int]:
    ids = list(
        await session.scalars(select(Task.id).where(Task.status == TaskStatus.PAUSED, Task.resume_at <= now).limit(100))
    )
    resumed = []
    for task_id in ids:
        await resume(session, task_id, actor="system", now=now)
        resumed.append(task_id)
    return resumed


async def resume(
    session: AsyncSession, task_id: int, *, actor: str, now: dt.datetime, schedule_at: dt.datetime | None = None
) -> TaskStatus:
    task = await session.get(Task, task_id, populate_existing=True)
    assert task is not None
    ever_allocated = task.first_sent_at is not None or bool(
        await session.scalar(select(exists().where(SubTask.task_id == task_id, SubTask.attempts > 0)))
    )
    target = resume_target(generated=task.generated_at is not None, ever_allocated=ever_allocated)
    values: dict[str, Any] = {"pause_reason": None, "pause_detail": None, "resume_at": None, "unavailable_since": None}
    if target is TaskStatus.SCHEDULED:
        values["schedule_at"] = max(schedule_at or now, now)
    if task.pause_reason == PauseReason.ERROR_THRESHOLD:
        values["threshold_window_started_at"] = now  # a new evaluation window (docs/states.md#task-transitions)
    return await transition(session, task_id, TaskAction.RESUME, actor=actor, to=target, values=values)


# ---- automatic pause on error rates (docs/sending.md#automatic-pause-on-errors) -----------------------


async def check_thresholds(
    session: AsyncSession,
    *,
    now: dt.datetime,
    runtime: RuntimeSettings,
    task_ids: Sequence[int] | None = None,
    samples: dict[int, int] | None = None,
) -> list[int]:
    """Pause sending tasks whose window crossed a threshold. `samples` receives each task's sent + failed."""
    query = select(Task.id, Task.error_thresholds, Task.threshold_window_started_at).where(
        Task.status == TaskStatus.SENDING
    )
    if task_ids is not None:
        query = query.where(Task.id.in_(task_ids))
    paused = []
    for task in (await session.execute(query)).all():
        rates = await _window_rates(session, task.id, task.threshold_window_started_at)
        if samples is not None:
            samples[task.id] = rates["sent"] + rates["failed"]
        reason = _threshold_crossed(rates, {**_defaults(runtime), **(task.error_thresholds or {})})
        if reason:
            await transition(
                session,
                task.id,
                TaskAction.AUTO_PAUSE,
                reason=PauseReason.ERROR_THRESHOLD,
                detail=reason,
                expected=TaskStatus.SENDING,
                values={"pause_reason": PauseReason.ERROR_THRESHOLD, "pause_detail": reason},
            )
            paused.append(task.id)
    return paused


def _defaults(runtime: RuntimeSettings) -> dict[str, float]:
    return {
        "min_sample": runtime.autopause_min_sample,
        "max_failure_rate": runtime.autopause_max_failure_rate,
        "max_bounce_rate": runtime.autopause_max_bounce_rate,
    }


async def _window_rates(session: AsyncSession, task_id: int, since: dt.datetime | None) -> dict[str, int]:
    since = since or dt.datetime.min.replace(tzinfo=dt.UTC)
    sent = and_(SubTask.send_state == SendState.SENT, SubTask.sent_at >= since)
    failed = and_(SubTask.send_state == SendState.FAILED, SubTask.failed_at >= since)
    bounced = and_(sent, SubTask.delivery_state.in_(("hard_bounced", "rejected")))
    row = (
        await session.execute(
            select(func.count().filter(sent), func.count().filter(failed), func.count().filter(bounced)).where(
                SubTask.task_id == task_id, or_(sent, failed)
            )
        )
    ).one()
    return {"sent": row[0], "failed": row[1], "bounced": row[2]}


def _threshold_crossed(rates: dict[str, int], limits: dict[str, float]) -> str | None:
    sent, failed, bounced = rates["sent"], rates["failed"], rates["bounced"]
    if sent + failed < limits["min_sample"]:
        return None
    failure_rate = failed / (sent + failed)
    bounce_rate = bounced / sent if sent else 0.0
    if failure_rate >= limits["max_failure_rate"]:
        return f"failure rate {failure_rate:.1%} ≥ {limits['max_failure_rate']:.0%} over {sent + failed} sends"
    if bounce_rate >= limits["max_bounce_rate"]:
        return f"bounce rate {bounce_rate:.1%} ≥ {limits['max_bounce_rate']:.0%} over {sent} sends"
    return None


# ---- templates that hit a render limit at send time ---------------------------------------------------


async def pause_for_render_limit(session: AsyncSession, task_id: int, *, detail: str) -> bool:
    """A template of a running task hit a render limit (time, size, work) while a worker rendered it: its
    other recipients would hit it too, so the task pauses with reason `render_limit` and the limit in its
    detail, for its owner to see. False when the task is not running any more (paused by another worker,
    cancelled, finished)."""
    detail = detail[:1000]
    try:
        await transition(
            session,
            task_id,
            TaskAction.AUTO_PAUSE,
            reason=PauseReason.RENDER_LIMIT,
            detail=detail,
            values={
                "pause_reason": PauseReason.RENDER_LIMIT,
                "pause_detail": detail,
                "waiting_reason": None,
                "waiting_until": None,
            },
        )
    except InvalidTransition:
        return False
    return True


# ---- waiting reasons and the unavailable pause (docs/states.md#waiting-reasons) -----------------------


REASON_OF = {
    "frozen": WaitingReason.FROZEN,
    "throttled": WaitingReason.THROTTLED,
    "exhausted": WaitingReason.EXHAUSTED,
    "daily_quota": WaitingReason.DAILY_QUOTA,
}


async def update_waiting(
    session: AsyncSession, *, now: dt.datetime, runtime: RuntimeSettings, snapshots: Sequence[Any]
) -> dict[int, str | None]:
    """Explain every running task that has open work but nothing to send now, or pause it when the grace
    period for having no usable service has passed."""
    by_service = {s.service.id: s for s in snapshots}
    tasks = (
        await session.execute(
            select(
                Task.id,
                Task.user_id,
                Task.status,
                Task.allowed_service_ids,
                Task.on_capacity_exhausted,
                Task.unavailable_since,
                Task.waiting_reason,
                User.is_active,
            )
            .join(User, User.id == Task.user_id)
            .where(Task.status.in_(RUNNING))
        )
    ).all()
    mapped = await _mapped_services(session, {t.user_id for t in tasks})
    changed: dict[int, str | None] = {}
    for task in tasks:
        usable = [
            by_service[sid]
            for sid in mapped.get(task.user_id, [])
            if sid in by_service and (not task.allowed_service_ids or sid in task.allowed_service_ids)
        ]
        reason, until = await _waiting_for(session, task, usable, now, runtime)
        if await _maybe_pause(session, task, usable, reason, now, runtime):
            changed[task.id] = "paused"
            continue
        if reason != task.waiting_reason or reason is not None:
            await session.execute(
                update(Task)
                .where(Task.id == task.id)
                .values(
                    waiting_reason=reason, waiting_until=until, unavailable_since=_unavailable_since(task, reason, now)
                )
            )
            changed[task.id] = reason
    return changed


async def _mapped_services(session: AsyncSession, user_ids: set[int]) -> dict[int, list[int]]:
    if not user_ids:
        return {}
    rows = await session.execute(
        select(UserServiceMapping.user_id, UserServiceMapping.service_id).where(
            UserServiceMapping.user_id.in_(user_ids), UserServiceMapping.is_active.is_(True)
        )
    )
    out: dict[int, list[int]] = {}
    for user_id, service_id in rows.all():
        out.setdefault(user_id, []).append(service_id)
    return out


async def _waiting_for(
    session: AsyncSession, task: Any, usable: list[Any], now: dt.datetime, runtime: RuntimeSettings
) -> tuple[str | None, dt.datetime | None]:
    if runtime.sending_paused:
        return WaitingReason.GLOBAL_PAUSE, None
    if not task.is_active:
        return WaitingReason.OWNER_INACTIVE, None
    open_work = await _open_work(session, task.id, now)
    if open_work["due"] == 0:
        if open_work["retry_at"] is not None:
            return WaitingReason.RETRY_BACKOFF, open_work["retry_at"]
        if open_work["uncertain"]:
            return WaitingReason.UNCERTAIN_DECISION, None
        return None, None
    live = [
        s
        for s in usable
        if s.availability.reason not in ("disabled",)
        and not (s.availability.reason == "frozen" and s.availability.until is None)
    ]
    if not live:
        return WaitingReason.NO_USABLE_SERVICE, None
    if any(s.availability.eligible or s.availability.slot_waiting for s in live):
        return None, None
    blocked = [(s.availability.until, REASON_OF.get(s.availability.reason or "", WaitingReason.FROZEN)) for s in live]
    known = [b for b in blocked if b[0] is not None]
    until, reason = min(known, key=lambda b: b[0]) if known else (None, blocked[0][1])
    return reason, until


async def _open_work(session: AsyncSession, task_id: int, now: dt.datetime) -> dict[str, Any]:
    pending = and_(SubTask.task_id == task_id, SubTask.send_state == SendState.PENDING)
    due = await session.scalar(
        select(func.count()).where(pending, or_(SubTask.attempts == 0, SubTask.next_attempt_at <= now))
    )
    retry_at = await session.scalar(
        select(func.min(SubTask.next_attempt_at)).where(pending, SubTask.attempts > 0, SubTask.next_attempt_at > now)
    )
    uncertain = await session.scalar(
        select(func.count()).where(SubTask.task_id == task_id, SubTask.send_state == SendState.UNCERTAIN)
    )
    return {"due": int(due or 0), "retry_at": retry_at, "uncertain": int(uncertain or 0)}


def _unavailable_since(task: Any, reason: str | None, now: dt.datetime) -> dt.datetime | None:
    if reason != WaitingReason.NO_USABLE_SERVICE:
        return None
    return task.unavailable_since or now


async def _maybe_pause(
    session: AsyncSession, task: Any, usable: list[Any], reason: str | None, now: dt.datetime, runtime: RuntimeSettings
) -> bool:
    grace = dt.timedelta(seconds=runtime.capacity_service_unavailable_grace)
    if reason == WaitingReason.NO_USABLE_SERVICE and task.unavailable_since and now - task.unavailable_since >= grace:
        await transition(
            session,
            task.id,
            TaskAction.AUTO_PAUSE,
            reason=PauseReason.SERVICE_UNAVAILABLE,
            detail="no usable sending service",
            expected=TaskStatus(task.status),
            values={
                "pause_reason": PauseReason.SERVICE_UNAVAILABLE,
                "waiting_reason": None,
                "pause_detail": "no usable sending service for the grace period",
            },
        )
        return True
    if reason == WaitingReason.DAILY_QUOTA and task.on_capacity_exhausted == "pause":
        await transition(
            session,
            task.id,
            TaskAction.AUTO_PAUSE,
            reason=PauseReason.NO_CAPACITY_LEFT,
            detail="every usable service reached its daily quota",
            expected=TaskStatus(task.status),
            values={
                "pause_reason": PauseReason.NO_CAPACITY_LEFT,
                "waiting_reason": None,
                "pause_detail": "every usable service reached its daily quota",
            },
        )
        return True
    return False


async def resume_unavailable(session: AsyncSession, *, now: dt.datetime, snapshots: Sequence[Any]) -> list[int]:
    """Tasks paused for `service_unavailable` resume by themselves once a usable service appears."""
    tasks = (
        await session.execute(
            select(Task.id, Task.user_id, Task.allowed_service_ids).where(
                Task.status == TaskStatus.PAUSED, Task.pause_reason == PauseReason.SERVICE_UNAVAILABLE
            )
        )
    ).all()
    mapped = await _mapped_services(session, {t.user_id for t in tasks})
    healthy = {
        s.service.id
        for s in snapshots
        if s.availability.reason != "disabled"
        and not (s.availability.reason == "frozen" and s.availability.until is None)
    }
    resumed = []
    for task in tasks:
        if any(
            sid in healthy and (not task.allowed_service_ids or sid in task.allowed_service_ids)
            for sid in mapped.get(task.user_id, [])
        ):
            await resume(session, task.id, actor="system", now=now)
            resumed.append(task.id)
    return resumed


# ---- uncertain sends (docs/sending.md#crashes-and-uncertain-sends) ------------------------------------


async def abandon_stale_uncertain(session: AsyncSession, *, now: dt.datetime, runtime: RuntimeSettings) -> int:
    cutoff = now - dt.timedelta(days=runtime.uncertain_auto_abandon_days)
    result = await session.execute(
        update(SubTask)
        .where(SubTask.send_state == SendState.UNCERTAIN, SubTask.allocated_at < cutoff)
        .values(
            send_state=SendState.FAILED,
            failed_at=now,
            last_error_code="uncertain_abandoned",
            last_error="no event confirmed acceptance within the reconcile window; abandoned",
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
