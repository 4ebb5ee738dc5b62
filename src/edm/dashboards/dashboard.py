"""Dashboards (docs/admin.md#dashboards-get-dashboard-get-admindashboard): what a user sees first, and what an admin
sees on top of it.

User: credit (with the low-credit warning), campaigns by status, the campaigns that need attention (paused, or
waiting for capacity, each with its reason), sends and people who opened or clicked in the last 24 hours, 7 and
30 days, replies, unread notifications and the latest imports.

Admin, additionally: every service's state, usage against its quota, next reset, success rate and latency; the
queue (pending per user, in flight per service, workers and their heartbeats, from `ops.queue_view`); credit
totals per day (`users.credit.summary`); and alerts computed from all of that.

Activity counts the facts of the user's campaigns that sent within the window or finished at most 30 days before
it (opens and clicks arrive after the last send), from `tasks.facts`: per-quarter-hour counters on PostgreSQL, so the
cost follows how many campaigns the user ran recently, not how many recipients they had. "Opened" counts recipients
who opened (human: an open or a click, `tasks.stats.opened_human`, the definition of the task statistics) and whose
first such open or click falls in the window; machine hits never count. Clicks count by the first human click,
replies by `replied_at`. A window starts at the quarter hour holding its start.

The daily series (`daily`) counts the same facts per day of the last 30 in the user's time zone, each on the day it
happened: sent, delivered, opened and clicked (first human open or click), hard bounces (`bounced_at`), complaints
and unsubscribes. Quarters fold into local days exactly (every zone offset is a multiple of 15 minutes).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dashboards import queue_view
from edm.dispatch import queue
from edm.email_services.health import snapshot_view
from edm.models.contacts import Import
from edm.models.tasks import Task
from edm.models.users import User
from edm.system.service import unread_count
from edm.tasks import service as tasks
from edm.tasks.facts import fact_quarters, quarter_of, start_of
from edm.users import credit
from edm.vocabulary.tasks import PauseReason, TaskKind, TaskStatus

WINDOWS = {"24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7), "30d": dt.timedelta(days=30)}
# Engagement keeps arriving after a campaign's last send: campaigns finished this long before the widest window
# still count.
ENGAGEMENT_TAIL = dt.timedelta(days=30)
ATTENTION_LIMIT = 20
RECENT_IMPORTS = 5
DAYS = 30  # the daily series: today and the 29 days before it, in the user's time zone


async def user_dashboard(session: AsyncSession, user: User, *, now: dt.datetime) -> dict[str, Any]:
    return {
        "at": now,
        "credit": credit_view(user),
        "tasks_by_status": await tasks.count_by_status(session, user_id=user.id),
        "attention": await attention(session, user_ids=[user.id]),
        "activity": await activity(session, user_id=user.id, now=now),
        "daily": await daily(session, user, now=now),
        "unread_notifications": await unread_count(session, user.id),
        "recent_imports": await recent_imports(session, user_id=user.id),
    }


def credit_view(user: User) -> dict[str, Any]:
    threshold = user.low_credit_threshold
    return {
        "balance": user.credit_balance,
        "low_credit_threshold": threshold,
        "low": threshold is not None and user.credit_balance < threshold,
    }


async def attention(session: AsyncSession, *, user_ids: list[int] | None) -> list[dict[str, Any]]:
    """Campaigns paused, or running but waiting (no capacity, outside a window), newest change first."""
    query = (
        select(Task)
        .where(
            Task.kind == TaskKind.BULK,
            or_(
                Task.status == TaskStatus.PAUSED,
                and_(Task.status.in_((TaskStatus.QUEUED, TaskStatus.SENDING)), Task.waiting_reason.is_not(None)),
            ),
        )
        .order_by(Task.updated_at.desc(), Task.id.desc())
        .limit(ATTENTION_LIMIT)
    )
    if user_ids is not None:
        query = query.where(Task.user_id.in_(user_ids))
    return [
        {
            "task_id": t.id,
            "user_id": t.user_id,
            "name": t.name,
            "status": t.status,
            "pause_reason": t.pause_reason,
            "pause_detail": t.pause_detail,
            "resume_at": t.resume_at,
            "waiting_reason": t.waiting_reason,
            "waiting_until": t.waiting_until,
        }
        for t in await session.scalars(query)
    ]


def _recent_tasks(user_id: int, since: dt.datetime) -> Any:
    """The user's campaigns that may hold facts after `since`: sent something, and not finished more than the
    engagement tail before it."""
    return select(Task.id).where(
        Task.user_id == user_id,
        Task.kind == TaskKind.BULK,
        Task.first_sent_at.is_not(None),
        or_(Task.completed_at.is_(None), Task.completed_at >= since - ENGAGEMENT_TAIL),
        or_(Task.cancelled_at.is_(None), Task.cancelled_at >= since - ENGAGEMENT_TAIL),
    )


# Activity window measure ← fact of `tasks.facts`.
_ACTIVITY_FACTS = {"sent": "sent", "opened": "opened", "clicked": "clicked", "replied": "replied"}


async def activity(session: AsyncSession, *, user_id: int, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Per window, the facts whose quarter hour lies in it: a window starts at the quarter hour holding
    `now - span` (so "24 hours" spans 24 to 24¼ hours)."""
    widest = now - max(WINDOWS.values())
    found = await fact_quarters(
        session, _recent_tasks(user_id, widest), _ACTIVITY_FACTS.values(), since=widest, until=now
    )
    return {
        window: {
            name: sum(n for q, n in found[fact] if q >= quarter_of(now - span))
            for name, fact in _ACTIVITY_FACTS.items()
        }
        for window, span in WINDOWS.items()
    }


DAILY_FACTS = ("sent", "delivered", "opened", "clicked", "bounced", "complained", "unsubscribed")
# Daily series count ← fact of `tasks.facts` (a bounce here is a hard bounce, `bounced_at`).
_DAILY_FACTS = dict(
    zip(
        DAILY_FACTS,
        ("sent", "delivered", "opened", "clicked", "hard_bounced", "complained", "unsubscribed"),
        strict=True,
    )
)


def user_zone(user: User) -> ZoneInfo:
    try:
        return ZoneInfo(user.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):  # validated when set; a bad stored value falls back to UTC
        return ZoneInfo("UTC")


async def daily(session: AsyncSession, user: User, *, now: dt.datetime) -> dict[str, Any]:
    """Per local day of the last `DAYS` (oldest first, today last, empty days included) the count of each of
    `DAILY_FACTS` that happened that day, and the totals over them."""
    zone = user_zone(user)
    today = now.astimezone(zone).date()
    first = today - dt.timedelta(days=DAYS - 1)
    start = dt.datetime.combine(first, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    days = {first + dt.timedelta(days=i): dict.fromkeys(DAILY_FACTS, 0) for i in range(DAYS)}
    found = await fact_quarters(session, _recent_tasks(user.id, start), _DAILY_FACTS.values(), since=start, until=now)
    for name, fact in _DAILY_FACTS.items():
        for q, n in found[fact]:
            day = start_of(q).astimezone(zone).date()
            if day in days:
                days[day][name] += n
    totals = {fact: sum(counts[fact] for counts in days.values()) for fact in DAILY_FACTS}
    points = [{"date": day, **counts} for day, counts in sorted(days.items())]
    return {"timezone": zone.key, "days": points, "totals": totals}


async def recent_imports(session: AsyncSession, *, user_id: int) -> list[dict[str, Any]]:
    rows = await session.scalars(
        select(Import).where(Import.user_id == user_id).order_by(Import.id.desc()).limit(RECENT_IMPORTS)
    )
    return [
        {
            "id": i.id,
            "kind": i.kind,
            "filename": i.filename,
            "status": i.status,
            "processed": i.processed,
            "created": i.created,
            "updated": i.updated,
            "errors": i.errors,
            "created_at": i.created_at,
            "finished_at": i.finished_at,
        }
        for i in rows
    ]


async def admin_dashboard(session: AsyncSession, user: User, *, now: dt.datetime) -> dict[str, Any]:
    services = [snapshot_view(s) for s in await queue.snapshot_services(session, now=now)]
    queue_state = await queue_view.queue_view(session, now=now)
    credit_week = await credit.summary(session, period="7d", now=now)
    attention_all = await attention(session, user_ids=None)
    return {
        **await user_dashboard(session, user, now=now),
        "services": services,
        "queue": queue_state,
        "credit_per_day": {
            "totals": credit_week["totals"],
            "days": credit_week["trend"]["points"],
            "users_by_balance": credit_week["users_by_balance"],
        },
        "attention_all_users": attention_all,
        "alerts": alerts(services, queue_state, attention_all),
    }


def alerts(
    services: list[dict[str, Any]], queue_state: dict[str, Any], paused: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What an operator should look at now, most severe first."""
    found: list[dict[str, Any]] = []
    if queue_state["sending_paused"]:
        found.append({"severity": "critical", "kind": "sending_paused", "message": "all sending is paused"})
    if queue_state["pending"] and not queue_state["workers_alive"]:
        found.append(
            {
                "severity": "critical",
                "kind": "no_worker",
                "message": f"{queue_state['pending']} SubTasks are pending and no worker is alive",
            }
        )
    usable = [s for s in services if s["enabled"] and s["available"]]
    if queue_state["pending"] and not usable:
        found.append(
            {
                "severity": "critical",
                "kind": "no_usable_service",
                "message": "SubTasks are pending and no sending service is usable",
            }
        )
    for s in services:
        if s["enabled"] and s["state"] in ("frozen", "throttled", "exhausted"):
            found.append(
                {
                    "severity": "warning",
                    "kind": f"service_{s['state']}",
                    "service_id": s["id"],
                    "message": f"service {s['name']} is {s['state'].replace('_', ' ')}"
                    + (f": {s['frozen_reason']}" if s.get("frozen_reason") else ""),
                }
            )
    expired = sum(s["expired_leases"] for s in queue_state["services"])
    if expired:
        found.append(
            {
                "severity": "warning",
                "kind": "expired_leases",
                "message": f"{expired} claimed SubTasks outlived their lease (a worker died or hangs)",
            }
        )
    automatic = [t for t in paused if t["status"] == TaskStatus.PAUSED and t["pause_reason"] != PauseReason.USER]
    if automatic:
        found.append(
            {
                "severity": "warning",
                "kind": "tasks_auto_paused",
                "task_ids": [t["task_id"] for t in automatic],
                "message": f"{len(automatic)} campaigns were paused automatically",
            }
        )
    return found
