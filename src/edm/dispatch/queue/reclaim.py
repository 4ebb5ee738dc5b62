"""Giving claimed SubTasks back: `release` (a worker gives back what it did not start: shutdown, or the
database lost before sending) and `reclaim_expired` (the leases of a worker that died mid-send)."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm import telemetry
from edm.db.session import after_commit
from edm.dispatch.queue.claiming import Claim, ClaimedItem
from edm.dispatch.queue.snapshots import day_of
from edm.dispatch.queue.usage import upsert_usage
from edm.models.email_services import EmailService, EmailServiceState
from edm.models.tasks import SendAttempt, SubTask
from edm.vocabulary.tasks import SendState


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
    attempts = [
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
    ]
    await session.execute(insert(SendAttempt), attempts)
    after_commit(session, lambda: telemetry.count_attempts(attempts))
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
    key within its window, otherwise `uncertain` — never blindly resent."""
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
        after_commit(session, lambda: telemetry.count_attempts(attempts))
    await _settle_reclaimed_usage(session, uncertain, now)
    counts["pending"], counts["uncertain"] = len(resend), len(uncertain)
    await _clear_dead_probes(session, {r.service_id for r in rows})
    return counts


async def _settle_reclaimed_usage(session: AsyncSession, rows: list[Any], now: dt.datetime) -> None:
    """Reservations of uncertain rows become `uncertain` usage on the day they were claimed."""
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
