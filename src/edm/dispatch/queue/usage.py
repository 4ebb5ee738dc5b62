"""A service's usage per service day: what counts against its daily quota.

A row per (service, service day) holds the accepted, uncertain and failed sends and the admins'
adjustments; SubTasks allocated but not yet recorded count too, as reservations (see `snapshots`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import dialect_insert
from edm.models.email_services import EmailService, ServiceDayUsage

USED = ServiceDayUsage.accepted + ServiceDayUsage.uncertain + ServiceDayUsage.adjustment


async def used_today(session: AsyncSession, service: EmailService, day: dt.date) -> int:
    """Settled usage of `service` on `day` (reservations not included)."""
    row = await session.scalar(
        select(USED).where(ServiceDayUsage.service_id == service.id, ServiceDayUsage.service_day == day)
    )
    return int(row or 0)


def used_on(service_id: int, day: dt.date) -> Any:
    """Settled usage of a service on `day` as a scalar subquery (NULL without a row)."""
    return (
        select(USED)
        .where(ServiceDayUsage.service_id == service_id, ServiceDayUsage.service_day == day)
        .scalar_subquery()
    )


async def usage_on(session: AsyncSession, days: dict[int, dt.date]) -> dict[int, int]:
    """Settled usage of each service on its own current service day, in one query."""
    if not days:
        return {}
    rows = await session.execute(
        select(ServiceDayUsage.service_id, ServiceDayUsage.service_day, USED).where(
            ServiceDayUsage.service_id.in_(days), ServiceDayUsage.service_day.in_(set(days.values()))
        )
    )
    return {sid: int(total) for sid, day, total in rows.all() if days.get(sid) == day}


async def upsert_usage(session: AsyncSession, *, service_id: int, day: dt.date, deltas: dict[str, int]) -> None:
    """Add to the (service, service day) usage row, creating it when missing, in one statement."""
    table = cast(Table, ServiceDayUsage.__table__)
    values = {"accepted": 0, "uncertain": 0, "failed": 0, "adjustment": 0, **deltas}
    stmt = dialect_insert(session, table).values(service_id=service_id, service_day=day, **values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["service_id", "service_day"],
        set_={k: table.c[k] + stmt.excluded[k] for k in deltas},
    )
    await session.execute(stmt)
