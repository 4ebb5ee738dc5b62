"""Reading services for the chooser: each service's configuration and availability right now, read without
locks (the claim checks again under its lock)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch import allocation
from edm.dispatch import availability as av
from edm.dispatch.queue.usage import usage_on
from edm.dispatch.service_day import next_reset, service_day
from edm.models.email_services import EmailService, EmailServiceState
from edm.models.tasks import SubTask
from edm.vocabulary.tasks import SendState


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
    usage = await usage_on(session, {service.id: day_of(service, now) for service, _ in rows})
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


def adjusted(s: ServiceSnapshot, *, in_flight: int, now: dt.datetime, claimed: bool) -> ServiceSnapshot:
    """The snapshot after this process claimed (`in_flight` > 0, `claimed`) or recorded/released (< 0) that
    many SubTasks of the service, without reading the database again: a reservation counts against the
    day's usage and the service's concurrency until it is recorded. Approximate until the next read (other
    workers' claims are not in it): the claim checks again under its lock."""
    flying = max(0, s.in_flight + in_flight)
    used = max(0, s.used_today + max(0, in_flight))
    availability = av.availability(
        s.state, limits_of(s.service), now=now, used_today=used, in_flight=flying, next_reset=s.next_reset
    )
    return dataclasses.replace(
        s,
        availability=availability,
        used_today=used,
        in_flight=flying,
        last_claim_at=now if claimed else s.last_claim_at,
    )


def service_view(s: ServiceSnapshot) -> allocation.ServiceView:
    """What the chooser (`allocation`) needs to know of a snapshot."""
    quota = max(1, s.service.daily_quota)
    return allocation.ServiceView(
        service_id=s.service.id,
        eligible=s.availability.eligible,
        slot_waiting=s.availability.slot_waiting,
        backup_only=s.service.backup_only,
        priority=s.service.priority,
        weight=s.service.weight,
        quota_left_ratio=max(0.0, (quota - s.used_today) / quota),
        health=allocation.health_score(s.state.recent_success_rate, s.state.recent_samples, s.state.latency_ms_ewma),
        last_claim_at=s.last_claim_at,
    )
