"""Recording outcomes: one transaction per claimed batch writes what happened to each recipient.

Each SubTask moves with a compare-and-set on (allocated, our lease), so a row the reclaimer took back in
the meantime is left as it is (an accepted send still marks it sent: it was mailed). Every outcome gets a
SendAttempt row; the day's usage, the contacts' and tasks' send times, the service's runtime state
(`service_state`) and, for a conversation answer sent, its conversation (`replies`) are updated in the same
transaction.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import TypeEngine

from edm import telemetry
from edm.db.dialect import is_postgresql
from edm.db.session import after_commit
from edm.dispatch import retry
from edm.dispatch.queue import bulk
from edm.dispatch.queue.claiming import Claim, ClaimedItem
from edm.dispatch.queue.replies import SentAnswer, record_sent
from edm.dispatch.queue.service_state import lock_service_state, update_service_state
from edm.dispatch.queue.usage import upsert_usage
from edm.models.contacts import Contact
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.providers.base import Outcome, SendResult
from edm.system.runtime_settings import Policy
from edm.vocabulary.tasks import SendState, TaskKind, TaskStatus

SUBTASKS = cast(Table, SubTask.__table__)
ATTEMPTS = cast(Table, SendAttempt.__table__)
STOPPED = (TaskStatus.CANCELLED, TaskStatus.CLOSED)


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    item: ClaimedItem
    result: SendResult
    started_at: dt.datetime | None
    from_address: str | None = None
    message_id: str | None = None
    subject: str | None = None


@dataclass
class RecordSummary:
    by_state: Counter[str] = field(default_factory=Counter)
    lost_lease: int = 0
    status_log: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Decision:
    state: SendState
    counted: bool  # counts toward retry.max_attempts
    due_now: bool  # deferred and immediately claimable elsewhere
    error_code: str | None = None


DEFER_NOW = {Outcome.THROTTLED, Outcome.QUOTA_EXHAUSTED, Outcome.AUTH_CONFIG}


def decide(result: SendResult, *, retryable_failures: int, task_status: str, max_attempts: int) -> Decision:
    """The next send state for one attempt's result. Pure."""
    outcome = result.outcome
    if outcome is Outcome.ACCEPTED:
        return Decision(SendState.SENT, False, False)
    if outcome is Outcome.PERMANENT:
        return Decision(SendState.FAILED, False, False, result.provider_code)
    if outcome is Outcome.MAYBE_SENT:
        # Even with an idempotent provider: the worker already resent it to the same service with the same
        # key; a pending row could be claimed by another service, where the key means nothing.
        return Decision(SendState.UNCERTAIN, True, False)
    if task_status in STOPPED:
        return Decision(SendState.CANCELLED, outcome not in DEFER_NOW, False)
    if outcome in DEFER_NOW:
        return Decision(SendState.PENDING, False, True)
    if retryable_failures + 1 >= max_attempts:
        return Decision(SendState.FAILED, True, False, "max_attempts_exceeded")
    return Decision(SendState.PENDING, True, False)


async def record(
    session: AsyncSession,
    *,
    claim: Claim,
    outcomes: Sequence[ItemOutcome],
    now: dt.datetime,
    policy: Policy,
    jitter: retry.Jitter = retry.default_jitter,
) -> RecordSummary:
    """One outcome transaction for a claimed batch: SubTask states (compare-and-set on our lease), one
    SendAttempt per item, the day's usage, the service state and the status log."""
    summary = RecordSummary()
    if not outcomes:
        return summary
    # Locks in the claim's order: the service's state row, then the tasks, then the SubTasks. This transaction
    # used to lock the tasks first and the service row last, while a claim of the same service held the service
    # row and waited for the task: a deadlock, which PostgreSQL broke after a second by failing the record (retried
    # after 1, 2, 4 ... s). With two workers on one batch service half the records failed so, and dispatch
    # idled at 241 recipients/s on an idle machine (bench/RESULTS.md, batch ESP).
    state_row = await lock_service_state(session, claim.service_id)
    current = await _current_rows(session, [o.item.subtask_id for o in outcomes], {o.item.task_id for o in outcomes})
    updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
    attempts: list[dict[str, Any]] = []
    usage: Counter[str] = Counter()
    answers: list[SentAnswer] = []
    for o in outcomes:
        row = current.get(o.item.subtask_id)
        attempts.append(_attempt_row(claim, o, now))
        if row is None:
            continue
        ours = row.send_state == SendState.ALLOCATED and row.lease_owner == claim.lease_owner
        if not ours:
            summary.lost_lease += 1
            if o.result.outcome is Outcome.ACCEPTED and row.send_state in (SendState.PENDING, SendState.UNCERTAIN):
                updates["late_sent"].append(_sent_values(o, now))
                if row.task_kind == TaskKind.REPLY:
                    answers.append(SentAnswer(o.item.subtask_id, o.from_address, o.message_id))
            continue
        decision = decide(
            o.result,
            retryable_failures=row.retryable_failures,
            task_status=row.task_status,
            max_attempts=policy.max_attempts,
        )
        summary.by_state[decision.state] += 1
        usage[_usage_column(decision, o.result)] += 1
        updates[decision.state].append(_values_for(decision, o, row, now, policy, jitter))
        if decision.state is SendState.SENT and row.task_kind == TaskKind.REPLY:
            answers.append(SentAnswer(o.item.subtask_id, o.from_address, o.message_id))
    await _write_subtasks(session, claim, updates)
    await _insert_attempts(session, attempts)
    await _add_usage(session, claim, usage)
    await _touch_contacts_and_tasks(session, outcomes, now)
    await record_sent(session, service_id=claim.service_id, answers=answers, now=now)
    summary.status_log = await update_service_state(
        session, state_row, claim, [o.result for o in outcomes], now, policy
    )
    return summary


async def already_recorded(session: AsyncSession, *, claim: Claim, subtask_ids: Sequence[int], at: dt.datetime) -> bool:
    """Whether an outcome transaction of this claim, recorded with `now=at`, committed. A worker whose
    connection dropped while its COMMIT was being answered cannot tell whether it took effect; the
    SendAttempt rows it wrote carry that exact `finished_at`, and no other writer uses it for these rows
    (the reclaimer and a release stamp their own time). Retrying with the same `at` and asking this first
    makes the record happen once."""
    if not subtask_ids:
        return False
    found = await session.scalar(
        select(SendAttempt.id)
        .where(
            SendAttempt.subtask_id.in_(subtask_ids),
            SendAttempt.service_id == claim.service_id,
            SendAttempt.finished_at == at,
        )
        .limit(1)
    )
    return found is not None


async def _current_rows(session: AsyncSession, ids: list[int], task_ids: set[int]) -> dict[int, Any]:
    """Our rows and their task's status, with the task rows locked before them (id order, like the claim), so
    a cancel either committed before — deferred outcomes become `cancelled` — or waits for us and then
    cancels what we left pending. A SubTask never changes task, so the claim's task ids are its rows' tasks."""
    await session.execute(
        select(Task.id).where(bulk.any_of(session, Task.id, task_ids)).order_by(Task.id).with_for_update()
    )
    rows = await session.execute(
        select(
            SubTask.id,
            SubTask.send_state,
            SubTask.lease_owner,
            SubTask.retryable_failures,
            Task.status.label("task_status"),
            Task.kind.label("task_kind"),
        )
        .join(Task, Task.id == SubTask.task_id)
        .where(bulk.any_of(session, SubTask.id, ids))
        .order_by(SubTask.id)
        .with_for_update(of=SubTask)
    )
    return {r.id: r for r in rows.all()}


def _usage_column(decision: Decision, result: SendResult) -> str:
    if decision.state is SendState.SENT:
        return "accepted"
    if decision.state is SendState.UNCERTAIN:
        return "uncertain"
    return "failed" if result.outcome is not Outcome.ACCEPTED else "accepted"


def _attempt_row(claim: Claim, o: ItemOutcome, now: dt.datetime) -> dict[str, Any]:
    r = o.result
    outcome = "uncertain" if r.outcome is Outcome.MAYBE_SENT else r.outcome.value
    return {
        "subtask_id": o.item.subtask_id,
        "attempt_no": o.item.attempt_no,
        "service_id": claim.service_id,
        "started_at": o.started_at,
        "finished_at": now,
        "duration_ms": r.latency_ms,
        "outcome": outcome,
        "status": r.status,
        "provider_code": (r.provider_code or None) and r.provider_code[:64],
        "message": r.message[:500] or None,
        "provider_message_id": r.provider_message_id,
    }


def _sent_values(o: ItemOutcome, now: dt.datetime) -> dict[str, Any]:
    return {
        "b_id": o.item.subtask_id,
        "provider_message_id": o.result.provider_message_id,
        "sent_at": now,
        "from_address": o.from_address,
        "message_id": o.message_id,
        "subject_sent": o.subject,
    }


def _values_for(
    decision: Decision, o: ItemOutcome, row: Any, now: dt.datetime, policy: Policy, jitter: retry.Jitter
) -> dict[str, Any]:
    base: dict[str, Any] = {"b_id": o.item.subtask_id}
    r = o.result
    if decision.state is SendState.SENT:
        return _sent_values(o, now)
    failures = row.retryable_failures + (1 if decision.counted else 0)
    base.update(
        retryable_failures=failures,
        last_error_class=r.outcome.value,
        last_error_code=(decision.error_code or r.provider_code or (str(r.status) if r.status else None)),
        last_error=r.message[:500] or r.outcome.value,
        from_address=o.from_address,
        message_id=o.message_id,
        subject_sent=o.subject,
    )
    if decision.state is SendState.PENDING:
        delay = (
            dt.timedelta(0)
            if decision.due_now
            else retry.retry_delay(failures, base=policy.retry_base, cap=policy.retry_max, jitter=jitter)
        )
        base["next_attempt_at"] = now + delay
    if decision.state is SendState.FAILED:
        base["failed_at"] = now
        # Only a rejected recipient changes the delivery state; None keeps the row's (see _state_values).
        base["delivery_state"] = "rejected" if r.recipient_rejected else None
    return base


# The per-row values of the outcome UPDATEs and their types (the arrays of the PostgreSQL statement).
ROW_VALUES: dict[str, TypeEngine[Any]] = {
    "b_id": bulk.BIGINT,
    "provider_message_id": bulk.TEXT,
    "sent_at": bulk.TIMESTAMPTZ,
    "from_address": bulk.TEXT,
    "message_id": bulk.TEXT,
    "subject_sent": bulk.TEXT,
    "retryable_failures": bulk.INT,
    "last_error_class": bulk.TEXT,
    "last_error_code": bulk.TEXT,
    "last_error": bulk.TEXT,
    "next_attempt_at": bulk.TIMESTAMPTZ,
    "failed_at": bulk.TIMESTAMPTZ,
    "delivery_state": bulk.TEXT,
}


async def _write_subtasks(session: AsyncSession, claim: Claim, updates: dict[str, list[dict[str, Any]]]) -> None:
    """One UPDATE per target state, each a compare-and-set on (allocated, our lease): on PostgreSQL one
    statement over the batch's arrays (`bulk`), on SQLite an executemany."""
    if is_postgresql(session):
        for state, rows in updates.items():
            if rows:
                await session.execute(_set_based_update(claim, state, rows))
        return
    ours = and_(
        SUBTASKS.c.id == bindparam("b_id"),
        SUBTASKS.c.send_state == SendState.ALLOCATED,
        SUBTASKS.c.lease_owner == claim.lease_owner,
    )
    for state, rows in updates.items():
        if not rows:
            continue
        if state == "late_sent":
            where = and_(
                SUBTASKS.c.id == bindparam("b_id"), SUBTASKS.c.send_state.in_((SendState.PENDING, SendState.UNCERTAIN))
            )
            values = _late_sent_values(claim.service_id)
        else:
            where = ours
            values = _state_values(SendState(state), {k: bindparam(k) for k in rows[0]})
        await session.execute(SUBTASKS.update().where(where).values(**values), rows)


def _set_based_update(claim: Claim, state: str, rows: list[dict[str, Any]]) -> Any:
    keys = [k for k in ROW_VALUES if k in rows[0]]
    v = bulk.unnest("v", {k: ROW_VALUES[k] for k in keys}, rows)
    if state == "late_sent":
        where = and_(SUBTASKS.c.id == v.c.b_id, SUBTASKS.c.send_state.in_((SendState.PENDING, SendState.UNCERTAIN)))
        values = {**_late_sent_values(claim.service_id), **{k: v.c[k] for k in keys if k != "b_id"}}
    else:
        where = and_(
            SUBTASKS.c.id == v.c.b_id,
            SUBTASKS.c.send_state == SendState.ALLOCATED,
            SUBTASKS.c.lease_owner == claim.lease_owner,
        )
        values = _state_values(SendState(state), {k: v.c[k] for k in keys})
    return SUBTASKS.update().where(where).values(**values)


def _observe_first_sends(tasks: Sequence[Any], at: dt.datetime) -> None:
    for kind, schedule_at in tasks:
        telemetry.observe_task_delay(telemetry.FIRST_SEND_DELAY, kind, schedule_at, at)


def _late_sent_values(service_id: int) -> dict[str, Any]:
    return {
        "send_state": SendState.SENT,
        "service_id": service_id,
        "lease_owner": None,
        "lease_expires_at": None,
        **{k: bindparam(k) for k in ("provider_message_id", "sent_at", "from_address", "message_id", "subject_sent")},
    }


def _state_values(state: SendState, sample: dict[str, Any]) -> dict[str, Any]:
    """SET clause of an outcome UPDATE; `sample` maps each per-row column to its value expression (a bind
    parameter of the executemany, a column of the unnested arrays)."""
    values: dict[str, Any] = {"send_state": state, "lease_owner": None, "lease_expires_at": None}
    values.update({k: e for k, e in sample.items() if k != "b_id"})
    if "delivery_state" in values:
        values["delivery_state"] = func.coalesce(values["delivery_state"], SUBTASKS.c.delivery_state)
    if state is SendState.PENDING:
        values["service_id"] = None  # deferred work may be taken by any service
    return values


ATTEMPT_VALUES: dict[str, TypeEngine[Any]] = {
    "subtask_id": bulk.BIGINT,
    "attempt_no": bulk.INT,
    "service_id": bulk.BIGINT,
    "started_at": bulk.TIMESTAMPTZ,
    "finished_at": bulk.TIMESTAMPTZ,
    "duration_ms": bulk.INT,
    "outcome": bulk.TEXT,
    "status": bulk.INT,
    "provider_code": bulk.TEXT,
    "message": bulk.TEXT,
    "provider_message_id": bulk.TEXT,
}


async def _insert_attempts(session: AsyncSession, attempts: list[dict[str, Any]]) -> None:
    """One INSERT for the batch: `INSERT … SELECT FROM unnest(arrays)` on PostgreSQL, a multi-row INSERT
    on SQLite."""
    if is_postgresql(session):
        v = bulk.unnest("a", ATTEMPT_VALUES, attempts)
        columns = list(ATTEMPT_VALUES)
        await session.execute(
            insert(ATTEMPTS).from_select(columns, select(*(v.c[c] for c in columns))),
        )
    else:
        await session.execute(insert(ATTEMPTS), attempts)
    after_commit(session, lambda: telemetry.count_attempts(attempts))


async def _add_usage(session: AsyncSession, claim: Claim, usage: Counter[str]) -> None:
    if not usage:
        return
    await upsert_usage(session, service_id=claim.service_id, day=claim.service_day, deltas=dict(usage))


async def _touch_contacts_and_tasks(session: AsyncSession, outcomes: Sequence[ItemOutcome], now: dt.datetime) -> None:
    accepted = [o.item for o in outcomes if o.result.outcome is Outcome.ACCEPTED]
    if not accepted:
        return
    contact_ids = [i.contact_id for i in accepted if i.contact_id is not None]
    if contact_ids:
        await session.execute(
            update(Contact)
            .where(bulk.any_of(session, Contact.id, contact_ids))
            # `updated_at` says when the contact was last edited, and a send is no edit. Left as it is, the row
            # changes no indexed column, so PostgreSQL updates it in place (a HOT update) instead of adding an
            # entry to each of the contacts' eight indexes: at 10,000,000 contacts those writes made recording a
            # batch 55× slower than at 1,000,000 (bench/RESULTS.md, scale).
            .values(last_sent_at=now, updated_at=Contact.updated_at)
            .execution_options(synchronize_session=False)
        )
    # One statement for both: the task's first send time, set once; and, since a send means the task is no
    # longer waiting, its waiting fields cleared. Tasks with neither to do are not written.
    changed = (
        await session.execute(
            update(Task)
            .where(
                bulk.any_of(session, Task.id, {i.task_id for i in accepted}),
                (Task.first_sent_at.is_(None)) | (Task.waiting_reason.is_not(None)),
            )
            .values(
                first_sent_at=func.coalesce(Task.first_sent_at, literal(now, Task.first_sent_at.type)),
                waiting_reason=None,
                waiting_until=case((Task.waiting_reason.is_not(None), None), else_=Task.waiting_until),
            )
            .returning(Task.kind, Task.schedule_at, Task.first_sent_at)
            .execution_options(synchronize_session=False)
        )
    ).all()
    first = [(kind, schedule_at) for kind, schedule_at, first_sent_at in changed if first_sent_at == now]
    if first:
        after_commit(session, lambda: _observe_first_sends(first, now))
