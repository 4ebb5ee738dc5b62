"""The deployment's state, read from the database at scrape time (docs/operations.md#metrics): the queue, the services,
the tasks and the workers. Any `edm serve` or `edm worker` answers the same values, so one scrape target is enough
for these.

Every read is bounded by something small, never by the size of the SubTasks or events tables:

- pending SubTasks: `queue.pending_by_task` (the statistics counters of open tasks on PostgreSQL, the
  (task_id, send_state) index on SQLite);
- in flight and usage: `queue.snapshot_services` (the partial index of allocated rows, one usage row per service);
- uncertain: `queue.uncertain_by_service`, one index range per task that can hold such rows;
- tasks by status: the tasks table (a row per campaign); workers: a row per running worker;
- events waiting to be applied: the partial index of unprocessed events (the backlog, not the table);
- inbound mail waiting for the `inbound` job: the queue table, emptied as the job handles it.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm import __version__
from edm.conversations import inbound_queue
from edm.dispatch import queue
from edm.models.events import Event
from edm.models.system import Worker
from edm.models.tasks import Task
from edm.system import runtime_settings
from edm.system.workers import HEARTBEAT_STALE
from edm.vocabulary.tasks import TaskKind, TaskStatus

# A service's state as the metrics name it: why it takes no work, or `available` (also while it waits for a rate
# slot or is at its concurrency: it is sending). A frozen service on its half-open probe is still `frozen`.
SERVICE_STATES = ("available", "frozen", "throttled", "exhausted", "daily_quota", "disabled")
RUNNING = (TaskStatus.QUEUED, TaskStatus.SENDING)


async def database_families(session: AsyncSession, *, now: dt.datetime) -> list[Metric]:
    build = GaugeMetricFamily("edm_build_info", "The running EDM version.", labels=["version"])
    build.add_metric([__version__], 1)
    families: list[Metric] = [build]
    families += await _queue_and_services(session, now)
    families += await _tasks(session)
    families += await _workers(session, now)
    families.append(
        _single(
            "edm_events_pending",
            "Events stored and not yet applied by the events job (its backlog).",
            await session.scalar(select(func.count()).select_from(Event).where(Event.processed_at.is_(None))),
        )
    )
    waiting, oldest = await inbound_queue.waiting(session)
    families.append(
        _single(
            "edm_inbound_queued",
            "Inbound mail accepted by the webhooks and not yet handled by the inbound job.",
            waiting,
        )
    )
    families.append(
        _single(
            "edm_inbound_oldest_age_seconds",
            "Seconds the oldest queued inbound mail has waited (0 when none waits).",
            max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0,
        )
    )
    runtime = await runtime_settings.load(session)
    families.append(
        _single("edm_sending_paused", "1 while an admin has paused all sending.", int(runtime.sending_paused))
    )
    return families


async def _queue_and_services(session: AsyncSession, now: dt.datetime) -> list[Metric]:
    pending = await queue.pending_by_task(session)
    counts: Counter[tuple[str, str]] = Counter()
    oldest: dt.datetime | None = None
    for p in pending:
        counts[(str(p.status), "fresh")] += p.fresh
        counts[(str(p.status), "retry")] += p.retrying
        if p.status in RUNNING and p.generated_at is not None and (oldest is None or p.generated_at < oldest):
            oldest = p.generated_at
    pending_family = GaugeMetricFamily(
        "edm_subtasks_pending",
        "SubTasks waiting to be claimed, by their task's status and kind (fresh: never tried; retry: after a "
        "retryable failure). Pending work is bound to no service until a claim takes it.",
        labels=["task_status", "kind"],
    )
    for status in queue.OPEN_TASK_STATES:
        for kind in ("fresh", "retry"):
            pending_family.add_metric([str(status), kind], counts[(str(status), kind)])
    age = _single(
        "edm_oldest_pending_age_seconds",
        "Age of the oldest pending SubTask of a queued or sending task (since its task was generated); 0 when none.",
        max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0,
    )

    snapshots = await queue.snapshot_services(session, now=now)
    uncertain = await queue.uncertain_by_service(session)
    in_flight = GaugeMetricFamily(
        "edm_subtasks_in_flight", "SubTasks claimed and being sent, by service.", labels=["service_id"]
    )
    doubtful = GaugeMetricFamily(
        "edm_subtasks_uncertain",
        "SubTasks that may have been sent (waiting for an event or a decision), by the service that tried them.",
        labels=["service_id"],
    )
    used = GaugeMetricFamily(
        "edm_service_used_today",
        "What counts against the service's daily quota in its current service day, claims in flight included.",
        labels=["service_id"],
    )
    quota = GaugeMetricFamily("edm_service_daily_quota", "The service's daily quota.", labels=["service_id"])
    state = GaugeMetricFamily(
        "edm_service_state",
        "1 for the service's current state: " + ", ".join(SERVICE_STATES) + ".",
        labels=["service_id", "state"],
    )
    info = GaugeMetricFamily(
        "edm_service_info",
        "1 per service not archived: its name and provider, to join on service_id.",
        labels=["service_id", "service", "provider", "backup"],
    )
    for s in snapshots:
        sid = str(s.service.id)
        in_flight.add_metric([sid], s.in_flight)
        doubtful.add_metric([sid], uncertain.pop(s.service.id, 0))
        used.add_metric([sid], s.used_today)
        quota.add_metric([sid], s.service.daily_quota)
        current = service_state(s)
        for name in SERVICE_STATES:
            state.add_metric([sid, name], int(name == current))
        backup = "true" if s.service.backup_only else "false"
        info.add_metric([sid, service_label(s.service.name, s.service.id), s.service.provider, backup], 1)
    for service_id, n in sorted(uncertain.items()):  # archived services, or rows of a deleted one (0)
        doubtful.add_metric([str(service_id)], n)
    return [pending_family, age, in_flight, doubtful, used, quota, state, info]


def service_state(snapshot: queue.ServiceSnapshot) -> str:
    reason = snapshot.availability.reason
    if reason in SERVICE_STATES:
        return str(reason)
    return "frozen" if snapshot.state.frozen else "available"


def service_label(name: str, service_id: int) -> str:
    """A service's name as a label. Admins name services; a name that looks like an address is not shown."""
    return f"service-{service_id}" if "@" in name else name


async def _tasks(session: AsyncSession) -> list[Metric]:
    rows = await session.execute(select(Task.status, Task.kind, func.count()).group_by(Task.status, Task.kind))
    counts = {(str(status), str(kind)): int(n) for status, kind, n in rows.all()}
    family = GaugeMetricFamily(
        "edm_tasks",
        "Tasks by status and kind (bulk: campaigns; test: template test sends; reply: conversation answers).",
        labels=["status", "kind"],
    )
    for status in TaskStatus:
        for kind in TaskKind:
            family.add_metric([str(status), str(kind)], counts.get((str(status), str(kind)), 0))
    return [family]


async def _workers(session: AsyncSession, now: dt.datetime) -> list[Metric]:
    rows = (await session.execute(select(Worker.id, Worker.last_heartbeat_at).order_by(Worker.id))).all()
    ages = GaugeMetricFamily(
        "edm_worker_heartbeat_age_seconds",
        "Seconds since each registered worker's last heartbeat (workers beat every 20 s).",
        labels=["worker"],
    )
    alive = 0
    for worker_id, beat in rows:
        age = max((now - beat).total_seconds(), 0.0)
        ages.add_metric([worker_id], age)
        alive += age <= HEARTBEAT_STALE.total_seconds()
    return [
        ages,
        _single("edm_workers_alive", "Workers whose heartbeat is at most 60 s old.", alive),
    ]


def _single(name: str, documentation: str, value: float | int | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value or 0))
