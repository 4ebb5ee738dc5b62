"""A service's health history (docs/providers.md#the-health-view): its send attempts over the last 24 hours, by the
hour, or the last 7 days, by six hours — attempts, accept rate, average latency and errors by class.

On PostgreSQL the figures are read from `service_attempt_hours`, which the trigger on `send_attempts` keeps in the
same transaction as every attempt (migration 0012): at most a few rows per service and hour. On SQLite they are
aggregated from `send_attempts`. The two must agree: `hour_expression` and the migration's SQL spell the same
definitions (the hour `finished_at` falls in; a missing service counts as 0; durations summed, and counted where
present), and `edm stats verify` compares them (`verify`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any, Literal

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.email_services import service as services
from edm.email_services.schemas import HealthHistoryOut, HealthPointOut
from edm.models.email_services import ServiceAttemptHour
from edm.models.tasks import SendAttempt
from edm.providers.base import Outcome

HOUR = 3600  # seconds
Window = Literal["24h", "7d"]
# window → (points, hours per point): hourly for a day, six-hourly for a week
WINDOWS: dict[str, tuple[int, int]] = {"24h": (24, 1), "7d": (28, 6)}
ERROR_CLASSES = tuple(o.value for o in Outcome if o is not Outcome.ACCEPTED)
Counts = dict[tuple[int, str], tuple[int, int, int]]  # (hour, outcome) → (attempts, total ms, timed attempts)


def hour_of(moment: dt.datetime) -> int:
    return int(moment.timestamp()) // HOUR


def start_of(hour: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(hour * HOUR, dt.UTC)


def hour_expression(session: AsyncSession, column: Any) -> ColumnElement[int]:
    """The UTC hour a timestamp falls in, as an integer, in SQL (the migration's definition on PostgreSQL)."""
    if _dialect(session) == "postgresql":
        return cast(func.floor(func.date_part("epoch", column) / HOUR), BigInteger)
    return cast(func.strftime("%s", column), Integer) // HOUR


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else "sqlite"


async def hour_counts(
    session: AsyncSession, service_id: int, low: int | None, high: int | None, *, from_rows: bool = False
) -> Counts:
    """Per (hour, outcome) of the service's attempts in hours `low`..`high` (either open): attempts, summed
    duration and attempts with a duration. From the counters on PostgreSQL, from the rows on SQLite or when
    `from_rows` (what `verify` compares them with)."""
    if _dialect(session) == "postgresql" and not from_rows:
        c = ServiceAttemptHour
        query = select(c.hour, c.outcome, func.sum(c.n), func.sum(c.total_ms), func.sum(c.timed)).where(
            c.service_id == service_id, *_between(c.hour, low, high)
        )
        query = query.group_by(c.hour, c.outcome)
    else:
        a = SendAttempt
        hour = hour_expression(session, a.finished_at)
        timed = func.count(a.duration_ms)  # the attempts with a duration
        query = select(hour, a.outcome, func.count(), func.sum(func.coalesce(a.duration_ms, 0)), timed).where(
            func.coalesce(a.service_id, 0) == service_id
        )
        # By time rather than by the hour expression: the same rows, and a comparison the planner can use.
        if low is not None:
            query = query.where(a.finished_at >= start_of(low))
        if high is not None:
            query = query.where(a.finished_at < start_of(high + 1))
        query = query.group_by(hour, a.outcome)
    rows = await session.execute(query)
    found: Counts = {}
    for hour_, outcome, n, total_ms, timed_ in rows:
        if n or total_ms or timed_:  # a group the fold has not dropped yet may have summed to nothing
            found[(int(hour_), str(outcome))] = (int(n), int(total_ms or 0), int(timed_ or 0))
    return found


def _between(column: Any, low: int | None, high: int | None) -> list[Any]:
    conditions = []
    if low is not None:
        conditions.append(column >= low)
    if high is not None:
        conditions.append(column <= high)
    return conditions


async def health_history(session: AsyncSession, service_id: int, *, window: str, now: dt.datetime) -> HealthHistoryOut:
    """The service's attempts over `window` ("24h" or "7d") up to `now`, in UTC-aligned points of 1 or 6 hours;
    attempts older than the first point are not counted. `NotFound` for an unknown service."""
    await services.get_service(session, service_id)
    points, step = WINDOWS[window]
    last = hour_of(now) // step  # the point holding the current hour
    first = last - points + 1
    counts = await hour_counts(session, service_id, first * step, last * step + step - 1)
    buckets: dict[int, list[tuple[str, tuple[int, int, int]]]] = defaultdict(list)
    for (hour, outcome), figures in counts.items():
        buckets[hour // step].append((outcome, figures))
    series = [_point(start_of(p * step), step, buckets.get(p, [])) for p in range(first, last + 1)]
    everything = [item for p in range(first, last + 1) for item in buckets.get(p, [])]
    return HealthHistoryOut(
        service_id=service_id,
        window=window,
        step_hours=step,
        start=start_of(first * step),
        end=start_of((last + 1) * step),
        points=series,
        totals=_point(start_of(first * step), points * step, everything),
    )


def _point(start: dt.datetime, hours: int, items: list[tuple[str, tuple[int, int, int]]]) -> HealthPointOut:
    attempts = sum(n for _, (n, _, _) in items)
    accepted = sum(n for outcome, (n, _, _) in items if outcome == Outcome.ACCEPTED)
    total_ms = sum(ms for _, (_, ms, _) in items)
    timed = sum(t for _, (_, _, t) in items)
    errors = dict.fromkeys(ERROR_CLASSES, 0)
    for outcome, (n, _, _) in items:
        if outcome != Outcome.ACCEPTED:
            errors[outcome] = errors.get(outcome, 0) + n
    return HealthPointOut(
        start=start,
        hours=hours,
        attempts=attempts,
        accepted=accepted,
        accept_rate=round(accepted / attempts, 4) if attempts else None,
        latency_ms_avg=round(total_ms / timed, 1) if timed else None,
        errors=errors,
    )


async def verify(session: AsyncSession) -> list[dict[str, Any]]:
    """Per service with attempts or counters: whether the hours served equal the hours recounted from the rows,
    and each differing (hour/outcome) as (served, recounted). On SQLite both are the rows: always equal."""
    ids = set(await session.scalars(select(ServiceAttemptHour.service_id).distinct()))
    ids |= {int(i or 0) for i in await session.scalars(select(SendAttempt.service_id).distinct())}
    report = []
    for service_id in sorted(ids):
        served = await hour_counts(session, service_id, None, None)
        counted = await hour_counts(session, service_id, None, None, from_rows=True)
        differences = {
            f"hours[{start_of(h):%Y-%m-%dT%H}Z/{o}]": (served.get((h, o)), counted.get((h, o)))
            for h, o in sorted(set(served) | set(counted))
            if served.get((h, o)) != counted.get((h, o))
        }
        report.append({"service_id": service_id, "ok": not differences, "differences": differences})
    return report
