"""The queue: the ONLY module with claim, record, release and reclaim SQL (SPEC §7.2, §7.6, §7.8).

Every function runs inside a transaction its caller (the worker, an entry point) opens and commits; none
makes a network call. The per-service mutex is the EmailServiceState row: a claim locks it with
FOR UPDATE SKIP LOCKED on PostgreSQL (a locked row means "another worker is claiming here, try another
service"); SQLite has one writer at a time (BEGIN IMMEDIATE), which gives the same guarantee.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, exists, func, insert, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch import availability as av
from edm.dispatch import retry, slots
from edm.dispatch.allocation import CandidateTask, plan_claim
from edm.dispatch.service_day import next_reset, service_day
from edm.models.contacts import Contact
from edm.models.email_services import (
    EmailService,
    EmailServiceState,
    EmailServiceStatusLog,
    FreezeReason,
    ServiceDayUsage,
    StatusChange,
    UserServiceMapping,
)
from edm.models.suppressions import Suppression
from edm.models.tasks import SendAttempt, SubTask, Task, TaskStatCounter
from edm.models.users import User
from edm.providers.base import Outcome, SendResult
from edm.system import alerts
from edm.system.runtime_settings import Policy
from edm.tasks.transitions import transition
from edm.vocabulary.tasks import SendState, TaskAction, TaskKind, TaskStatus

SUBTASKS = cast(Table, SubTask.__table__)
RUNNING = (TaskStatus.QUEUED, TaskStatus.SENDING)
STOPPED = (TaskStatus.CANCELLED, TaskStatus.CLOSED)
LEASE_GRACE = dt.timedelta(seconds=60)


# --------------------------------------------------------------------------------------------------------
# Reading services for the chooser


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """A service's configuration and its availability right now (read without locks, for choosing)."""

    service: EmailService
    state: av.RuntimeState
    availability: av.Availability
    used_today: int
    in_flight: int
    last_claim_at: dt.datetime | None
    next_reset: dt.datetime


def limits_of(service: EmailService) -> av.Limits:
    return av.Limits(
        is_enabled=service.is_enabled and service.archived_at is None,
        max_concurrency=service.max_concurrency,
        batch_size=service.batch_size,
        daily_quota=service.daily_quota,
        interval=float(service.sending_interval_seconds),
    )


def runtime_of(row: EmailServiceState) -> av.RuntimeState:
    return av.RuntimeState(**{f: getattr(row, f) for f in av.RuntimeState.__dataclass_fields__})


def day_of(service: EmailService, at: dt.datetime) -> dt.date:
    return service_day(at, timezone=service.timezone, reset_time=service.quota_reset_time)


def reset_after(service: EmailService, at: dt.datetime) -> dt.datetime:
    return next_reset(at, timezone=service.timezone, reset_time=service.quota_reset_time)


async def in_flight_counts(session: AsyncSession) -> dict[int, int]:
    """Allocated SubTasks per service: the reservations in flight (the partial index makes this cheap)."""
    rows = await session.execute(
        select(SubTask.service_id, func.count())
        .where(SubTask.send_state == SendState.ALLOCATED)
        .group_by(SubTask.service_id)
    )
    return {service_id: count for service_id, count in rows.all() if service_id is not None}


async def used_today(session: AsyncSession, service: EmailService, day: dt.date) -> int:
    row = await session.scalar(
        select(ServiceDayUsage.accepted + ServiceDayUsage.uncertain + ServiceDayUsage.adjustment).where(
            ServiceDayUsage.service_id == service.id, ServiceDayUsage.service_day == day
        )
    )
    return int(row or 0)


async def snapshot_services(session: AsyncSession, *, now: dt.datetime) -> list[ServiceSnapshot]:
    rows = (
        await session.execute(
            select(EmailService, EmailServiceState)
            .join(EmailServiceState, EmailServiceState.service_id == EmailService.id)
            .where(EmailService.archived_at.is_(None))
            .execution_options(populate_existing=True)
        )
    ).all()
    flights = await in_flight_counts(session)
    usage = await _usage_on(session, {service.id: day_of(service, now) for service, _ in rows})
    snapshots = []
    for service, state_row in rows:
        in_flight = flights.get(service.id, 0)
        used = usage.get(service.id, 0) + in_flight
        state = runtime_of(state_row)
        reset = reset_after(service, now)
        availability = av.availability(
            state, limits_of(service), now=now, used_today=used, in_flight=in_flight, next_reset=reset
        )
        snapshots.append(ServiceSnapshot(service, state, availability, used, in_flight, state_row.last_claim_at, reset))
    return snapshots


async def _usage_on(session: AsyncSession, days: dict[int, dt.date]) -> dict[int, int]:
    """Settled usage of each service on its own current service day, in one query."""
    if not days:
        return {}
    used = ServiceDayUsage.accepted + ServiceDayUsage.uncertain + ServiceDayUsage.adjustment
    rows = await session.execute(
        select(ServiceDayUsage.service_id, ServiceDayUsage.service_day, used).where(
            ServiceDayUsage.service_id.in_(days), ServiceDayUsage.service_day.in_(set(days.values()))
        )
    )
    return {sid: int(total) for sid, day, total in rows.all() if days.get(sid) == day}


# --------------------------------------------------------------------------------------------------------
# The claim


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    subtask_id: int
    public_id: uuid.UUID
    task_id: int
    user_id: int
    contact_id: int | None
    recipient_email: str
    task_template_id: int | None
    attempt_no: int
    slot_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Claim:
    service_id: int
    lease_owner: str
    service_day: dt.date
    probe: bool
    allocated_at: dt.datetime
    items: list[ClaimedItem]
    suppressed: int = 0


async def claim(
    session: AsyncSession,
    *,
    service_id: int,
    worker_id: str,
    now: dt.datetime,
    max_items: int = slots.MAX_CLAIM,
    sending_paused: bool = False,
    lease_grace: dt.timedelta = LEASE_GRACE,
) -> Claim | None:
    """Bind up to k claimable SubTasks to this service and lease them to `worker_id` (one transaction)."""
    if sending_paused:
        return None
    state_row = await session.scalar(
        select(EmailServiceState)
        .where(EmailServiceState.service_id == service_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    if state_row is None:
        return None  # another worker is claiming for this service right now
    service = await session.get(EmailService, service_id, populate_existing=True)
    if service is None:
        return None
    day = day_of(service, now)
    in_flight = await _allocated_count(session, service_id)
    used = await used_today(session, service, day) + in_flight
    state = runtime_of(state_row)
    limits = limits_of(service)
    availability = av.availability(
        state, limits, now=now, used_today=used, in_flight=in_flight, next_reset=reset_after(service, now)
    )
    if not availability.eligible:
        return None
    size = _claim_size(state, limits, now=now, used=used, in_flight=in_flight, cap=max_items, probe=availability.probe)
    rows, suppressed, cursor = await _select_claimable(
        session, service=service, state_row=state_row, now=now, size=size
    )
    if not rows:
        return None if not suppressed else Claim(service_id, worker_id, day, False, now, [], suppressed)
    slot_times, next_slot = slots.assign_slots(
        next_slot_at=state.next_slot_at,
        now=now,
        interval=limits.interval,
        count=math.ceil(len(rows) / limits.batch_size),
    )
    items = _items(rows, slot_times, limits.batch_size)
    await _allocate(
        session,
        service=service,
        worker_id=worker_id,
        now=now,
        items=items,
        lease_for=_lease_length(service, len(items), lease_grace),
    )
    await _advance_service(session, state_row, now=now, next_slot=next_slot, cursor=cursor, probe=availability.probe)
    await _start_tasks(session, {i.task_id for i in items}, now)
    return Claim(service_id, worker_id, day, availability.probe, now, items, suppressed)


async def _allocated_count(session: AsyncSession, service_id: int) -> int:
    count = await session.scalar(
        select(func.count()).where(SubTask.service_id == service_id, SubTask.send_state == SendState.ALLOCATED)
    )
    return int(count or 0)


def _claim_size(
    state: av.RuntimeState,
    limits: av.Limits,
    *,
    now: dt.datetime,
    used: int,
    in_flight: int,
    cap: int,
    probe: bool,
) -> int:
    if probe:
        return 1
    free_requests = limits.max_concurrency - math.ceil(in_flight / limits.batch_size)
    due = slots.slots_due(next_slot_at=state.next_slot_at, now=now, interval=limits.interval)
    # A batch call of n recipients consumes n slots (SPEC §7.2), so slots bound recipients, not calls.
    return max(0, min(limits.batch_size * free_requests, due, limits.daily_quota - used, slots.MAX_CLAIM, cap))


def _lease_length(service: EmailService, count: int, grace: dt.timedelta) -> dt.timedelta:
    """request timeout + k × interval + grace (SPEC §7.2): past this the worker is presumed dead."""
    interval = float(service.sending_interval_seconds)
    return dt.timedelta(seconds=service.request_timeout_seconds + count * interval) + grace


def _items(rows: list[Any], slot_times: list[dt.datetime], batch_size: int) -> list[ClaimedItem]:
    return [
        ClaimedItem(
            subtask_id=r.id,
            public_id=r.public_id,
            task_id=r.task_id,
            user_id=r.user_id,
            contact_id=r.contact_id,
            recipient_email=r.recipient_email,
            task_template_id=r.task_template_id,
            attempt_no=r.attempts + 1,
            slot_at=slot_times[i // batch_size],
        )
        for i, r in enumerate(rows)
    ]


async def candidate_tasks(session: AsyncSession, *, service_id: int, now: dt.datetime) -> list[CandidateTask]:
    """Running tasks of active owners mapped to this service that have claimable SubTasks now."""
    claimable = exists().where(
        SubTask.task_id == Task.id,
        SubTask.send_state == SendState.PENDING,
        or_(SubTask.attempts == 0, SubTask.next_attempt_at <= now),
    )
    rows = (
        await session.execute(
            select(
                Task.id,
                Task.user_id,
                Task.priority,
                Task.schedule_at,
                Task.last_claimed_at,
                Task.allowed_service_ids,
                Task.kind,
            )
            .join(User, User.id == Task.user_id)
            .join(
                UserServiceMapping,
                and_(
                    UserServiceMapping.user_id == Task.user_id,
                    UserServiceMapping.service_id == service_id,
                    UserServiceMapping.is_active.is_(True),
                ),
            )
            .where(Task.status.in_(RUNNING), User.is_active.is_(True), claimable)
        )
    ).all()
    return [
        CandidateTask(r.id, r.user_id, r.priority, r.schedule_at, r.last_claimed_at, is_test=r.kind == TaskKind.TEST)
        for r in rows
        if not r.allowed_service_ids or service_id in r.allowed_service_ids
    ]


async def _select_claimable(
    session: AsyncSession,
    *,
    service: EmailService,
    state_row: EmailServiceState,
    now: dt.datetime,
    size: int,
) -> tuple[list[Any], int, int | None]:
    """Pick up to `size` SubTasks in fairness order, locking them; suppress the unsendable ones found.

    Test sends go first (§7.2: claimed before bulk SubTasks of the same service), shared fairly among
    their users, and leave the users' round-robin cursor of the bulk work as it was; bulk tasks share
    what is left of the claim."""
    tasks = await _lock_running(session, await candidate_tasks(session, service_id=service.id, now=now))
    chosen, _, _ = await _fill(session, [t for t in tasks if t.is_test], size=size, cursor=None, now=now, check=False)
    bulk, suppressed, cursor = await _fill(
        session,
        [t for t in tasks if not t.is_test],
        size=size - len(chosen),
        cursor=state_row.rr_user_cursor,
        now=now,
        check=True,
    )
    chosen.extend(bulk)
    if chosen:
        await session.execute(
            update(Task)
            .where(Task.id.in_({r.task_id for r in chosen}))
            .values(last_claimed_at=now)
            .execution_options(synchronize_session=False)
        )
    return chosen, suppressed, cursor


async def _fill(
    session: AsyncSession,
    tasks: list[CandidateTask],
    *,
    size: int,
    cursor: int | None,
    now: dt.datetime,
    check: bool,
) -> tuple[list[Any], int, int | None]:
    """Lock up to `size` rows of `tasks` in fairness order (§7.5): (rows, suppressed count, new cursor).
    With `check`, rows the claim-time suppression check blocks become `suppressed` instead. Test sends skip
    the check: their addresses are the marketer's own inboxes and they have no contact to check."""
    chosen: list[Any] = []
    suppressed = 0
    exhausted: set[int] = set()
    while len(chosen) < size and len(exhausted) < len(tasks):
        plan, cursor = plan_claim(tasks, size=size - len(chosen), user_cursor=cursor, exhausted=frozenset(exhausted))
        if not plan:
            break
        for task_id, wanted in plan:
            rows = await _lock_rows(session, task_id, wanted, now)
            sendable, blocked = await _suppression_check(session, rows, now) if check else (rows, 0)
            suppressed += blocked
            chosen.extend(sendable)
            if len(rows) < wanted:
                exhausted.add(task_id)
            # else: when rows were suppressed, the next round asks this task again
    return chosen, suppressed, cursor


async def _lock_running(session: AsyncSession, tasks: list[CandidateTask]) -> list[CandidateTask]:
    """Lock the candidate tasks (in id order) and keep those still running. A pause or cancel either
    committed before this lock — then the task is no longer running and gets nothing — or waits for this
    claim to commit, so no SubTask is ever allocated after a pause commits (SPEC §5.2)."""
    if not tasks:
        return tasks
    running = set(
        await session.scalars(
            select(Task.id)
            .where(Task.id.in_([t.task_id for t in tasks]), Task.status.in_(RUNNING))
            .order_by(Task.id)
            .with_for_update()
        )
    )
    return [t for t in tasks if t.task_id in running]


async def _lock_rows(session: AsyncSession, task_id: int, wanted: int, now: dt.datetime) -> list[Any]:
    """Due retries first (earliest next_attempt_at), then fresh rows in generation order (SPEC §7.5)."""
    columns = (
        SubTask.id,
        SubTask.public_id,
        SubTask.task_id,
        SubTask.user_id,
        SubTask.contact_id,
        SubTask.recipient_email,
        SubTask.task_template_id,
        SubTask.attempts,
    )
    retries = (
        await session.execute(
            select(*columns)
            .where(
                SubTask.task_id == task_id,
                SubTask.send_state == SendState.PENDING,
                SubTask.attempts > 0,
                SubTask.next_attempt_at <= now,
            )
            .order_by(SubTask.next_attempt_at, SubTask.id)
            .limit(wanted)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if len(retries) >= wanted:
        return list(retries)
    fresh = (
        await session.execute(
            select(*columns)
            .where(SubTask.task_id == task_id, SubTask.send_state == SendState.PENDING, SubTask.attempts == 0)
            .order_by(SubTask.seq)
            .limit(wanted - len(retries))
            .with_for_update(skip_locked=True)
        )
    ).all()
    return list(retries) + list(fresh)


async def _suppression_check(session: AsyncSession, rows: list[Any], now: dt.datetime) -> tuple[list[Any], int]:
    """Claim-time check (SPEC §5.5, §10.5): a new suppression, unsubscribe, bounce, complaint, inactive or
    deleted contact turns a pending row `suppressed` instead of sending it."""
    if not rows:
        return [], 0
    reasons = await _blocked_reasons(session, [r.id for r in rows], now)
    if not reasons:
        return rows, 0
    for reason in set(reasons.values()):
        ids = [i for i, r in reasons.items() if r == reason]
        await session.execute(
            update(SubTask)
            .where(SubTask.id.in_(ids), SubTask.send_state == SendState.PENDING)
            .values(send_state=SendState.SUPPRESSED, suppressed_reason=reason)
            .execution_options(synchronize_session=False)
        )
    return [r for r in rows if r.id not in reasons], len(reasons)


async def _blocked_reasons(session: AsyncSession, ids: list[int], now: dt.datetime) -> dict[int, str]:
    domain = func.substr(SubTask.recipient_email, func.instr(SubTask.recipient_email, "@") + 1)
    if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        domain = func.split_part(SubTask.recipient_email, "@", 2)
    suppressed = exists().where(
        or_(Suppression.scope == "global", and_(Suppression.scope == "user", Suppression.user_id == SubTask.user_id)),
        or_(
            and_(Suppression.kind == "address", Suppression.value == SubTask.recipient_email),
            and_(Suppression.kind == "domain", Suppression.value == domain),
        ),
        or_(Suppression.expires_at.is_(None), Suppression.expires_at > now),
    )
    reason = case(
        (Contact.id.is_(None), literal("contact_deleted")),  # no contact row (deleted, or never had one)
        (Contact.status.in_(("inactive", "archived")), literal("contact_inactive")),
        (Contact.unsubscribed_at.is_not(None), literal("unsubscribed")),
        (Contact.hard_bounced_at.is_not(None), literal("hard_bounced")),
        (Contact.complained_at.is_not(None), literal("complained")),
        (suppressed, literal("suppression_list")),
        else_=literal(None),
    )
    rows = await session.execute(
        select(SubTask.id, reason).outerjoin(Contact, Contact.id == SubTask.contact_id).where(SubTask.id.in_(ids))
    )
    return {sid: r for sid, r in rows.all() if r is not None}


async def _allocate(
    session: AsyncSession,
    *,
    service: EmailService,
    worker_id: str,
    now: dt.datetime,
    items: list[ClaimedItem],
    lease_for: dt.timedelta,
) -> None:
    await session.execute(
        update(SubTask)
        .where(SubTask.id.in_([i.subtask_id for i in items]), SubTask.send_state == SendState.PENDING)
        .values(
            send_state=SendState.ALLOCATED,
            service_id=service.id,
            lease_owner=worker_id,
            lease_expires_at=now + lease_for,
            allocated_at=now,
            attempts=SubTask.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )


async def _advance_service(
    session: AsyncSession,
    state_row: EmailServiceState,
    *,
    now: dt.datetime,
    next_slot: dt.datetime,
    cursor: int | None,
    probe: bool,
) -> None:
    state_row.next_slot_at = next_slot
    state_row.rr_user_cursor = cursor
    state_row.last_claim_at = now
    if probe:
        state_row.probe_in_flight = True
    await session.flush()


async def _start_tasks(session: AsyncSession, task_ids: set[int], now: dt.datetime) -> None:
    """queued → sending on the first allocation (compare-and-set: only one claim wins)."""
    queued = await session.scalars(select(Task.id).where(Task.id.in_(task_ids), Task.status == TaskStatus.QUEUED))
    for task_id in queued:
        await transition(
            session, task_id, TaskAction.FIRST_CLAIM, expected=TaskStatus.QUEUED, reason="first_allocation"
        )


# --------------------------------------------------------------------------------------------------------
# Recording outcomes


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
    """The next send state for one attempt's result (SPEC §5.5, §7.7). Pure."""
    outcome = result.outcome
    if outcome is Outcome.ACCEPTED:
        return Decision(SendState.SENT, False, False)
    if outcome is Outcome.PERMANENT:
        return Decision(SendState.FAILED, False, False, result.provider_code)
    if outcome is Outcome.MAYBE_SENT:
        # Even with an idempotent provider: the worker already resent it to the same service with the same
        # key; a pending row could be claimed by another service, where the key means nothing (§7.8).
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
    current = await _current_rows(session, [o.item.subtask_id for o in outcomes])
    updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
    attempts: list[dict[str, Any]] = []
    usage: Counter[str] = Counter()
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
    await _write_subtasks(session, claim, updates)
    await _insert_attempts(session, attempts)
    await _add_usage(session, claim, usage)
    await _touch_contacts_and_tasks(session, outcomes, now)
    summary.status_log = await _update_service_state(session, claim, outcomes, now, policy)
    return summary


async def _current_rows(session: AsyncSession, ids: list[int]) -> dict[int, Any]:
    """Our rows and their task's status, with the task rows locked first (id order, like the claim), so
    a cancel either committed before — deferred outcomes become `cancelled` — or waits for us and then
    cancels what we left pending (SPEC §5.5)."""
    task_ids = select(SubTask.task_id).where(SubTask.id.in_(ids)).distinct().scalar_subquery()
    await session.execute(select(Task.id).where(Task.id.in_(task_ids)).order_by(Task.id).with_for_update())
    rows = await session.execute(
        select(
            SubTask.id,
            SubTask.send_state,
            SubTask.lease_owner,
            SubTask.retryable_failures,
            Task.status.label("task_status"),
        )
        .join(Task, Task.id == SubTask.task_id)
        .where(SubTask.id.in_(ids))
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
    if decision.state is SendState.FAILED and r.recipient_rejected:
        base["delivery_state"] = "rejected"
    return base


async def _write_subtasks(session: AsyncSession, claim: Claim, updates: dict[str, list[dict[str, Any]]]) -> None:
    """One executemany UPDATE per target state, each a compare-and-set on (allocated, our lease)."""
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
            values = _state_values(SendState(state), rows[0])
        await session.execute(SUBTASKS.update().where(where).values(**values), rows)


def _late_sent_values(service_id: int) -> dict[str, Any]:
    return {
        "send_state": SendState.SENT,
        "service_id": service_id,
        "lease_owner": None,
        "lease_expires_at": None,
        **{k: bindparam(k) for k in ("provider_message_id", "sent_at", "from_address", "message_id", "subject_sent")},
    }


def _state_values(state: SendState, sample: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {"send_state": state, "lease_owner": None, "lease_expires_at": None}
    values.update({k: bindparam(k) for k in sample if k != "b_id"})
    if state is SendState.PENDING:
        values["service_id"] = None  # deferred work may be taken by any service (SPEC §5.5)
    return values


async def _insert_attempts(session: AsyncSession, attempts: list[dict[str, Any]]) -> None:
    await session.execute(insert(SendAttempt), attempts)


async def _add_usage(session: AsyncSession, claim: Claim, usage: Counter[str]) -> None:
    if not usage:
        return
    await upsert_usage(session, service_id=claim.service_id, day=claim.service_day, deltas=dict(usage))


async def upsert_usage(session: AsyncSession, *, service_id: int, day: dt.date, deltas: dict[str, int]) -> None:
    """Add to the (service, service day) usage row, creating it when missing, in one statement."""
    table = cast(Table, ServiceDayUsage.__table__)
    dialect = session.bind.dialect.name  # type: ignore[union-attr]
    stmt_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    values = {"accepted": 0, "uncertain": 0, "failed": 0, "adjustment": 0, **deltas}
    stmt = stmt_insert(table).values(service_id=service_id, service_day=day, **values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["service_id", "service_day"],
        set_={k: table.c[k] + stmt.excluded[k] for k in deltas},
    )
    await session.execute(stmt)


async def _touch_contacts_and_tasks(session: AsyncSession, outcomes: Sequence[ItemOutcome], now: dt.datetime) -> None:
    accepted = [o.item for o in outcomes if o.result.outcome is Outcome.ACCEPTED]
    if not accepted:
        return
    contact_ids = [i.contact_id for i in accepted if i.contact_id is not None]
    if contact_ids:
        await session.execute(
            update(Contact)
            .where(Contact.id.in_(contact_ids))
            .values(last_sent_at=now)
            .execution_options(synchronize_session=False)
        )
    task_ids = {i.task_id for i in accepted}
    await session.execute(
        update(Task)
        .where(Task.id.in_(task_ids), Task.first_sent_at.is_(None))
        .values(first_sent_at=now)
        .execution_options(synchronize_session=False)
    )
    # A send means the task is no longer waiting (SPEC §5.4: the fields are cleared at the next send).
    await session.execute(
        update(Task)
        .where(Task.id.in_(task_ids), Task.waiting_reason.is_not(None))
        .values(waiting_reason=None, waiting_until=None)
        .execution_options(synchronize_session=False)
    )


async def _update_service_state(
    session: AsyncSession, claim: Claim, outcomes: Sequence[ItemOutcome], now: dt.datetime, policy: Policy
) -> list[str]:
    state_row = await session.scalar(
        select(EmailServiceState)
        .where(EmailServiceState.service_id == claim.service_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    service = await session.get(EmailService, claim.service_id)
    if state_row is None or service is None:
        return []
    state = runtime_of(state_row)
    change = av.apply_results(
        state,
        [o.result for o in outcomes],
        now=now,
        probe=claim.probe,
        policy=policy,
        next_reset=reset_after(service, now),
    )
    for name in av.RuntimeState.__dataclass_fields__:
        setattr(state_row, name, getattr(change.state, name))
    for kind, old, new, reason in change.log:
        session.add(
            EmailServiceStatusLog(
                service_id=claim.service_id, change=kind, old_value=old, new_value=new, reason=reason, at=now
            )
        )
        await _alert_if_needed(session, service, kind, new, reason)
    await session.flush()
    return [entry[0] for entry in change.log]


async def _alert_if_needed(
    session: AsyncSession, service: EmailService, kind: str, new: str | None, reason: str | None
) -> None:
    """A person must act when credentials/configuration are refused or the provider quota is gone (§7.7)."""
    if kind == StatusChange.FROZEN and new == FreezeReason.AUTH_CONFIG:
        title = f"Service {service.name} frozen: the provider refused its credentials or configuration"
    elif kind == StatusChange.EXHAUSTED:
        title = f"Service {service.name} is out of provider quota until {new}"
    else:
        return
    await alerts.alert_admins(
        session, kind=f"service_{kind}", title=title, body=reason, link=f"/api/v1/admin/services/{service.id}"
    )


# --------------------------------------------------------------------------------------------------------
# Release and reclaim


async def release(
    session: AsyncSession,
    *,
    claim: Claim,
    items: Sequence[ClaimedItem],
    now: dt.datetime,
    message: str = "worker shut down",
) -> int:
    """Give unstarted items back (graceful shutdown, or the database lost before sending): pending, attempt not
    counted, outcome `released` with `message`."""
    if not items:
        return 0
    ids = [i.subtask_id for i in items]
    result = await session.execute(
        update(SubTask)
        .where(SubTask.id.in_(ids), SubTask.send_state == SendState.ALLOCATED, SubTask.lease_owner == claim.lease_owner)
        .values(
            send_state=SendState.PENDING,
            service_id=None,
            lease_owner=None,
            lease_expires_at=None,
            attempts=SubTask.attempts - 1,
            next_attempt_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        insert(SendAttempt),
        [
            {
                "subtask_id": i.subtask_id,
                "attempt_no": i.attempt_no,
                "service_id": claim.service_id,
                "started_at": None,
                "finished_at": now,
                "outcome": "released",
                "message": message,
            }
            for i in items
        ],
    )
    if claim.probe:
        await session.execute(
            update(EmailServiceState)
            .where(EmailServiceState.service_id == claim.service_id)
            .values(probe_in_flight=False)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


IdempotencyLookup = Callable[[int], tuple[bool, int]]  # service id -> (honours keys, window seconds)


async def reclaim_expired(
    session: AsyncSession, *, now: dt.datetime, idempotency: IdempotencyLookup, limit: int = 1000
) -> Counter[str]:
    """Expired leases (a worker died mid-send): pending again when the provider honours our idempotency
    key within its window, otherwise `uncertain` — never blindly resent (SPEC §7.8)."""
    rows = (
        await session.execute(
            select(SubTask.id, SubTask.service_id, SubTask.allocated_at, SubTask.attempts, SubTask.lease_owner)
            .where(SubTask.send_state == SendState.ALLOCATED, SubTask.lease_expires_at < now)
            .order_by(SubTask.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    counts: Counter[str] = Counter()
    resend: list[Any] = []
    uncertain: list[Any] = []
    for r in rows:
        honours, window = idempotency(r.service_id)
        first_attempt_age = (now - r.allocated_at).total_seconds() if r.allocated_at else math.inf
        (resend if honours and first_attempt_age < window else uncertain).append(r)
    if resend:
        await session.execute(
            update(SubTask)
            .where(SubTask.id.in_([r.id for r in resend]), SubTask.send_state == SendState.ALLOCATED)
            .values(
                send_state=SendState.PENDING,
                service_id=None,
                lease_owner=None,
                lease_expires_at=None,
                next_attempt_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    if uncertain:
        await session.execute(
            update(SubTask)
            .where(SubTask.id.in_([r.id for r in uncertain]), SubTask.send_state == SendState.ALLOCATED)
            .values(
                send_state=SendState.UNCERTAIN,
                lease_owner=None,
                lease_expires_at=None,
                last_error_class="uncertain",
                last_error="lease expired: the worker died mid-send",
            )
            .execution_options(synchronize_session=False)
        )
    attempts = [
        {
            "subtask_id": r.id,
            "attempt_no": r.attempts,
            "service_id": r.service_id,
            "started_at": r.allocated_at,
            "finished_at": now,
            "outcome": "released" if r in resend else "uncertain",
            "message": "lease expired",
        }
        for r in rows
    ]
    if attempts:
        await session.execute(insert(SendAttempt), attempts)
    await _settle_reclaimed_usage(session, uncertain, now)
    counts["pending"], counts["uncertain"] = len(resend), len(uncertain)
    await _clear_dead_probes(session, {r.service_id for r in rows})
    return counts


async def _settle_reclaimed_usage(session: AsyncSession, rows: list[Any], now: dt.datetime) -> None:
    """Reservations of uncertain rows become `uncertain` usage on the day they were claimed (§7.4)."""
    per_day: Counter[tuple[int, dt.date]] = Counter()
    services: dict[int, EmailService] = {}
    for r in rows:
        if r.service_id not in services:
            services[r.service_id] = await session.get(EmailService, r.service_id)  # type: ignore[assignment]
        per_day[(r.service_id, day_of(services[r.service_id], r.allocated_at or now))] += 1
    for (service_id, day), count in per_day.items():
        await upsert_usage(session, service_id=service_id, day=day, deltas={"uncertain": count})


async def _clear_dead_probes(session: AsyncSession, service_ids: set[int]) -> None:
    if service_ids:
        await session.execute(
            update(EmailServiceState).where(EmailServiceState.service_id.in_(service_ids)).values(probe_in_flight=False)
        )


# --------------------------------------------------------------------------------------------------------
# The admin queue view (SPEC §15.4): read-only, no locks, cheap at 1,000,000 SubTasks

OPEN_TASK_STATES = (TaskStatus.QUEUED, TaskStatus.SENDING, TaskStatus.PAUSED)  # the only ones holding pending rows


@dataclass(frozen=True, slots=True)
class PendingTask:
    task_id: int
    user_id: int
    status: str
    generated_at: dt.datetime | None
    fresh: int  # pending, never tried
    retrying: int  # pending after a retryable failure (waits for next_attempt_at)


async def pending_by_task(session: AsyncSession) -> list[PendingTask]:
    """Pending (unbound) SubTasks of every task that can hold them. On PostgreSQL the counts come from the
    trigger-kept `task_stat_counters` (a few rows per task, whatever its size: no scan of SubTasks); on SQLite
    from the (task_id, send_state) index."""

    open_ids = select(Task.id).where(Task.status.in_(OPEN_TASK_STATES)).scalar_subquery()
    if session.get_bind().dialect.name == "postgresql":
        c = TaskStatCounter
        stmt = (
            select(c.task_id, c.tried, func.sum(c.n))
            .where(c.task_id.in_(open_ids), c.send_state == SendState.PENDING)
            .group_by(c.task_id, c.tried)
        )
    else:
        tried = case((SubTask.attempts > 0, True), else_=False)
        stmt = (
            select(SubTask.task_id, tried, func.count())
            .where(SubTask.task_id.in_(open_ids), SubTask.send_state == SendState.PENDING)
            .group_by(SubTask.task_id, tried)
        )
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for task_id, was_tried, n in (await session.execute(stmt)).all():
        counts[task_id][1 if was_tried else 0] += int(n or 0)
    wanted = [tid for tid, (fresh, retrying) in counts.items() if fresh or retrying]
    if not wanted:
        return []
    tasks = (
        await session.execute(select(Task.id, Task.user_id, Task.status, Task.generated_at).where(Task.id.in_(wanted)))
    ).all()
    return [PendingTask(t.id, t.user_id, t.status, t.generated_at, *counts[t.id]) for t in tasks]


@dataclass(frozen=True, slots=True)
class InFlight:
    service_id: int
    count: int
    oldest_allocated_at: dt.datetime | None
    expired_leases: int  # the reclaimer's work: leases past their expiry


async def in_flight_by_service(session: AsyncSession, *, now: dt.datetime) -> dict[int, InFlight]:
    """Allocated SubTasks per service (the ix_subtasks_allocated partial index: only in-flight rows)."""
    rows = await session.execute(
        select(
            SubTask.service_id,
            func.count(),
            func.min(SubTask.allocated_at),
            func.sum(case((SubTask.lease_expires_at < now, 1), else_=0)),
        )
        .where(SubTask.send_state == SendState.ALLOCATED)
        .group_by(SubTask.service_id)
    )
    return {
        sid: InFlight(sid, int(n), oldest, int(expired or 0))
        for sid, n, oldest, expired in rows.all()
        if sid is not None
    }
