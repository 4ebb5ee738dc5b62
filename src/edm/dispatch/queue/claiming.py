"""The claim: bind up to k claimable SubTasks to one service and lease them to one worker, in one transaction.

The per-service mutex is the EmailServiceState row: a claim locks it with FOR UPDATE SKIP LOCKED on
PostgreSQL (a locked row means "another worker is claiming here, try another service"); SQLite has one
writer at a time (BEGIN IMMEDIATE), which gives the same guarantee. Which SubTasks are taken, in what order,
and the check that keeps unsendable ones from being mailed live in `selection`.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch import availability as av
from edm.dispatch import slots
from edm.dispatch.queue import bulk
from edm.dispatch.queue.selection import select_claimable
from edm.dispatch.queue.snapshots import day_of, limits_of, reset_after, runtime_of
from edm.dispatch.queue.usage import used_on
from edm.models.email_services import EmailService, EmailServiceState
from edm.models.tasks import SubTask
from edm.tasks.transitions import transition
from edm.vocabulary.tasks import SendState, TaskAction, TaskStatus

LEASE_GRACE = dt.timedelta(seconds=60)


class Miss(enum.Enum):
    """Why a claim took nothing."""

    BUSY = "busy"  # another worker is claiming for this service right now (its state row is locked), or it is gone
    UNAVAILABLE = "unavailable"  # frozen, cooling down, out of quota, no rate slot or concurrency free
    NO_WORK = "no_work"  # nothing claimable for this service now (no running task, or its rows are being claimed)


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
    # The service's day settings at claim time: the outcome transaction computes its next reset from them
    # instead of reading the service again.
    timezone: str = "UTC"
    quota_reset_time: str = "00:00"


async def claim(
    session: AsyncSession,
    *,
    service_id: int,
    worker_id: str,
    now: dt.datetime,
    max_items: int = slots.MAX_CLAIM,
    sending_paused: bool = False,
    lease_grace: dt.timedelta = LEASE_GRACE,
    on_miss: Callable[[Miss], None] | None = None,
) -> Claim | None:
    """Bind up to k claimable SubTasks to this service and lease them to `worker_id` (one transaction). None when
    it took nothing; `on_miss` is then told why (a worker remembers a service without work for a moment instead
    of claiming there again and again)."""
    missed = on_miss or _ignore
    if sending_paused:
        missed(Miss.UNAVAILABLE)
        return None
    locked = (
        await session.execute(
            select(EmailServiceState, EmailService)
            .join(EmailService, EmailService.id == EmailServiceState.service_id)
            .where(EmailServiceState.service_id == service_id)
            .with_for_update(of=EmailServiceState, skip_locked=True)
            .execution_options(populate_existing=True)
        )
    ).first()
    if locked is None:
        missed(Miss.BUSY)
        return None
    state_row, service = locked
    day = day_of(service, now)
    in_flight, settled = await _in_flight_and_used(session, service_id, day)
    used = settled + in_flight
    state = runtime_of(state_row)
    limits = limits_of(service)
    availability = av.availability(
        state, limits, now=now, used_today=used, in_flight=in_flight, next_reset=reset_after(service, now)
    )
    if not availability.eligible:
        missed(Miss.UNAVAILABLE)
        return None
    size = _claim_size(state, limits, now=now, used=used, in_flight=in_flight, cap=max_items, probe=availability.probe)
    if not size:  # no request or slot free: nothing to take, so no task row to lock either
        missed(Miss.UNAVAILABLE)
        return None
    rows, suppressed, cursor, queued = await select_claimable(
        session, service_id=service.id, user_cursor=state_row.rr_user_cursor, now=now, size=size
    )
    day_settings = {"timezone": service.timezone, "quota_reset_time": service.quota_reset_time}
    if not rows and not suppressed:
        missed(Miss.NO_WORK)
        return None
    if not rows:
        return Claim(service_id, worker_id, day, False, now, [], suppressed, **day_settings)
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
    await _start_tasks(session, {i.task_id for i in items} & queued, now)
    return Claim(service_id, worker_id, day, availability.probe, now, items, suppressed, **day_settings)


async def _in_flight_and_used(session: AsyncSession, service_id: int, day: dt.date) -> tuple[int, int]:
    """(SubTasks allocated to the service, its settled usage on `day`), in one statement."""
    allocated = (
        select(func.count())
        .where(SubTask.service_id == service_id, SubTask.send_state == SendState.ALLOCATED)
        .scalar_subquery()
    )
    row = (await session.execute(select(allocated, used_on(service_id, day)))).one()
    return int(row[0] or 0), int(row[1] or 0)


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
    # A claim may always fill one provider call: a batch service (up to 1,000 recipients a call) claimed 200 at a
    # time sent every call a fifth to two fifths full and paid a claim and a record per 200.
    most = max(cap, limits.batch_size)
    due = slots.slots_due(next_slot_at=state.next_slot_at, now=now, interval=limits.interval, most=most)
    # A batch call of n recipients consumes n slots, so slots bound recipients, not calls.
    return max(0, min(limits.batch_size * free_requests, due, limits.daily_quota - used, most))


def _ignore(miss: Miss) -> None:
    pass


def _lease_length(service: EmailService, count: int, grace: dt.timedelta) -> dt.timedelta:
    """request timeout + k × interval + grace: past this the worker is presumed dead."""
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
        .where(bulk.any_of(session, SubTask.id, [i.subtask_id for i in items]), SubTask.send_state == SendState.PENDING)
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
    """queued → sending on the first allocation, for the tasks the claim found queued (under its lock on
    them); a compare-and-set, so only one claim wins."""
    for task_id in sorted(task_ids):
        await transition(
            session, task_id, TaskAction.FIRST_CLAIM, expected=TaskStatus.QUEUED, reason="first_allocation"
        )
