"""The admin queue view and the global pause (docs/admin.md).

The view reads without locks: pending SubTasks per user (rows not yet bound to a service, grouped by the
task's owner), in-flight (allocated) SubTasks per service, the oldest pending age, the workers with their
last heartbeat, and whether sending is paused. The SubTask SQL lives in `dispatch.queue`; on PostgreSQL the
pending counts come from the statistics counters, so the view costs a few rows per open task and per
service, not a scan of the SubTasks.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch import queue
from edm.models.email_services import EmailService
from edm.models.system import Worker
from edm.models.users import User
from edm.system import runtime_settings
from edm.system.service import Actor, audit
from edm.system.workers import HEARTBEAT_STALE
from edm.vocabulary.tasks import TaskStatus

MAX_USERS = 200  # the users with the most pending rows; `users_total` says how many there are


def _age(at: dt.datetime | None, now: dt.datetime) -> float | None:
    return None if at is None else round(max((now - at).total_seconds(), 0.0), 1)


async def queue_view(session: AsyncSession, *, now: dt.datetime) -> dict[str, Any]:
    runtime = await runtime_settings.load(session)
    pending = await queue.pending_by_task(session)
    users: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"pending": 0, "retrying": 0, "in_paused_tasks": 0, "tasks": 0, "oldest_pending_at": None}
    )
    for p in pending:
        u = users[p.user_id]
        u["pending"] += p.fresh + p.retrying
        u["retrying"] += p.retrying
        u["tasks"] += 1
        if p.status == TaskStatus.PAUSED:
            u["in_paused_tasks"] += p.fresh + p.retrying
        if p.generated_at is not None and (u["oldest_pending_at"] is None or p.generated_at < u["oldest_pending_at"]):
            u["oldest_pending_at"] = p.generated_at
    top = sorted(users.items(), key=lambda kv: (-kv[1]["pending"], kv[0]))[:MAX_USERS]
    names = (
        dict((await session.execute(select(User.id, User.username).where(User.id.in_([uid for uid, _ in top])))).all())
        if top
        else {}
    )
    user_rows = [
        {
            "user_id": uid,
            "username": names.get(uid),
            **u,
            "oldest_pending_age_seconds": _age(u["oldest_pending_at"], now),
        }
        for uid, u in top
    ]

    flights = await queue.in_flight_by_service(session, now=now)
    services = list(
        await session.scalars(select(EmailService).where(EmailService.archived_at.is_(None)).order_by(EmailService.id))
    )
    service_rows = []
    for s in services:
        f = flights.get(s.id)
        service_rows.append(
            {
                "service_id": s.id,
                "name": s.name,
                "provider": s.provider,
                "enabled": s.is_enabled,
                "in_flight": f.count if f else 0,
                "oldest_allocated_at": f.oldest_allocated_at if f else None,
                "expired_leases": f.expired_leases if f else 0,
            }
        )

    workers = [
        {
            "id": w.id,
            "hostname": w.hostname,
            "pid": w.pid,
            "version": w.version,
            "started_at": w.started_at,
            "last_heartbeat_at": w.last_heartbeat_at,
            "heartbeat_age_seconds": _age(w.last_heartbeat_at, now),
            "alive": now - w.last_heartbeat_at <= HEARTBEAT_STALE,
        }
        for w in await session.scalars(select(Worker).order_by(Worker.last_heartbeat_at.desc()))
    ]

    oldest = min((p.generated_at for p in pending if p.generated_at is not None), default=None)
    return {
        "sending_paused": runtime.sending_paused,
        "pending": sum(u["pending"] for u in users.values()),
        "retrying": sum(u["retrying"] for u in users.values()),
        "in_flight": sum(f.count for f in flights.values()),
        "oldest_pending_at": oldest,
        "oldest_pending_age_seconds": _age(oldest, now),
        "users": user_rows,
        "users_total": len(users),
        "services": service_rows,
        "workers": workers,
        "workers_alive": sum(1 for w in workers if w["alive"]),
        "at": now,
    }


async def set_paused(session: AsyncSession, paused: bool, *, actor: Actor) -> dict[str, Any]:
    """Pause or resume all sending: the `sending.paused` setting every claim checks (workers see it within
    their settings refresh). Audited as `queue.pause_all` / `queue.resume_all`, also when nothing changed."""
    was = (await runtime_settings.load(session)).sending_paused
    if was != paused:
        await runtime_settings.put(session, "sending.paused", paused, actor_user_id=actor.user_id)
    await audit(
        session,
        actor,
        "queue.pause_all" if paused else "queue.resume_all",
        target_type="setting",
        target_id="sending.paused",
        details={"old": was, "new": paused},
    )
    return {"sending_paused": paused, "changed": was != paused}
