"""The `workers` table: each running `edm worker` registers a row at start, beats every 20 s while it runs,
and removes its row when it stops. The admin queue view reads the rows to tell live workers from dead ones."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from edm.models.system import Worker

HEARTBEAT_STALE = dt.timedelta(seconds=60)  # workers beat every 20 s; three missed beats = not alive


async def register(
    session: AsyncSession, *, worker_id: str, hostname: str, pid: int, version: str, now: dt.datetime
) -> None:
    session.add(
        Worker(id=worker_id, hostname=hostname, pid=pid, version=version, started_at=now, last_heartbeat_at=now)
    )
    await session.flush()


async def heartbeat(session: AsyncSession, worker_id: str, *, now: dt.datetime) -> None:
    """Record that the worker is alive; a worker whose row is gone (removed by hand) is left unregistered."""
    row = await session.get(Worker, worker_id)
    if row is not None:
        row.last_heartbeat_at = now


async def unregister(session: AsyncSession, worker_id: str) -> None:
    row = await session.get(Worker, worker_id)
    if row is not None:
        await session.delete(row)
