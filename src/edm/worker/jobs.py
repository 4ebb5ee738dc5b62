"""Maintenance jobs (docs/sending.md#maintenance-jobs). Each runs in every worker, is idempotent, and takes its rows
with compare-and-set or SKIP LOCKED, so concurrent runs in several workers never repeat work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from edm import clock
from edm.contacts.imports import HEARTBEAT_EVERY, run_imports
from edm.conversations import answers as conversation_answers
from edm.conversations import inbound_queue
from edm.conversations import sources as inbound_sources
from edm.db.availability import log_failure
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.events import apply as event_apply
from edm.operations import retention
from edm.tasks import generation, lifecycle, stats, sweep

if TYPE_CHECKING:
    from edm.worker.dispatcher import Worker

log = logging.getLogger("edm.jobs")

# The `events` job is continuous (docs/sending.md#maintenance-jobs): it drains stored events in batches, then polls this
# often, which keeps an event's reflection on its SubTask well inside the 5 s p99 of
# docs/events.md#pipeline-and-responses.
EVENTS_PERIOD = 0.5
EVENTS_BATCH = 1000
# Loops of the `events` job side by side, each on its own connection and share of the queue (PostgreSQL only,
# edm.events.apply.drain): one computes while another waits for the database (bench/RESULTS.md, "Webhook ingest").
EVENTS_LOOPS = 2
INBOUND_PERIOD = 1.0  # seconds between looks at the inbound queue when it was found empty


class Maintenance:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def start(self) -> list[asyncio.Task[None]]:
        jobs: list[tuple[str, float, Callable[[], Awaitable[object]]]] = [
            ("generate", 5.0, self.generate),
            ("reclaim", 15.0, self.reclaim),
            ("finalize", 5.0, self.finalize),
            ("thresholds", 60.0, self.thresholds),
            ("waiting", 30.0, self.waiting),
            ("answers", 5.0, self.answers),
            ("uncertain", 300.0, self.uncertain),
            ("heartbeat", 20.0, self.worker.heartbeat),
            ("events", EVENTS_PERIOD, self.events),
            ("inbound", INBOUND_PERIOD, self.inbound),
            ("mailboxes", 60.0, self.mailboxes),
            ("stats", 60.0, self.stats),
            ("retention", 86400.0, self.retention),
            ("sweep", 5.0, self.sweep_large_tasks),
            (
                "imports",
                1.0,
                lambda: run_imports(
                    self.worker.sessionmaker,
                    worker_id=self.worker.id,
                    heartbeat_every=self.worker.scaled(HEARTBEAT_EVERY),
                ),
            ),
            ("idempotency", 3600.0, self.idempotency),
        ]
        return [asyncio.create_task(self._every(name, period, job), name=f"job-{name}") for name, period, job in jobs]

    async def _every(self, name: str, period: float, job: Callable[[], Awaitable[object]]) -> None:
        while not self.worker.stopping.is_set():
            try:
                await job()
            except Exception as exc:  # logged, and the job runs again next period
                log_failure(log, "job.failed", exc, job=name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.worker.stopping.wait(), timeout=self.worker.scaled(period))

    async def generate(self) -> int:
        """Generate every due scheduled task, one transaction each; wake the dispatch loops after."""
        done = 0
        async with self.worker.sessionmaker() as session:
            due = await generation.due_task_ids(session, now=clock.utc_now())
        for task_id in due:
            async with unit_of_work(self.worker.sessionmaker) as session:
                result = await generation.generate(session, task_id, now=clock.utc_now())
            if result is not None:
                done += 1
                log.info(
                    "task.generated",
                    extra={"task_id": task_id, "status": str(result.status), "sendable": result.sendable},
                )
        if done:
            self.worker.wakeup.set()
        return done

    async def sweep_large_tasks(self) -> object:
        """Large tasks' rows changed in batches (docs/tasks.md#large-tasks), a transaction each, until none is left
        or the worker stops: the pending SubTasks of cancelled and closed tasks, the rows of deleted ones."""
        drained = await sweep.drain(self.worker.sessionmaker, should_stop=self.worker.stopping.is_set)
        for task_id in drained.tasks:
            log.info("task.deleted", extra={"task_id": task_id})
        if drained.cancelled:
            log.info("task.pending_cancelled", extra={"count": drained.cancelled})
        return drained

    async def reclaim(self) -> object:
        caps = await self.worker.composer.idempotency_lookup(self.worker.vault)
        async with unit_of_work(self.worker.sessionmaker) as session:
            counts = await queue.reclaim_expired(session, now=clock.utc_now(), idempotency=caps)
        if sum(counts.values()):
            log.warning("dispatch.reclaimed", extra=dict(counts))
            self.worker.wakeup.set()
        return counts

    async def finalize(self) -> object:
        now = clock.utc_now()
        async with unit_of_work(self.worker.sessionmaker) as session:
            completed = await lifecycle.finalize(session, now=now)
            settled = await lifecycle.settle_stopped(session, now=now)
            resumed = await lifecycle.auto_resume(session, now=now)
        if resumed:
            self.worker.wakeup.set()
        return completed, settled, resumed

    async def thresholds(self) -> object:
        runtime = await self.worker.refresh_runtime()
        async with unit_of_work(self.worker.sessionmaker) as session:
            return await lifecycle.check_thresholds(session, now=clock.utc_now(), runtime=runtime)

    async def waiting(self) -> object:
        runtime = await self.worker.refresh_runtime()
        self.worker.invalidate_snapshot()
        snapshots = await self.worker.snapshots()
        async with unit_of_work(self.worker.sessionmaker) as session:
            now = clock.utc_now()
            changed = await lifecycle.update_waiting(session, now=now, runtime=runtime, snapshots=snapshots)
            resumed = await lifecycle.resume_unavailable(session, now=now, snapshots=snapshots)
        return changed, resumed

    async def answers(self) -> object:
        """Conversation answers whose preferred services all became unusable move to the next tier
        (docs/conversations-answers.md#which-service-sends): a frozen or exhausted service never strands one."""
        runtime = await self.worker.refresh_runtime()
        snapshots = await self.worker.snapshots()
        async with unit_of_work(self.worker.sessionmaker) as session:
            changed = await conversation_answers.widen_stranded(
                session, now=clock.utc_now(), snapshots=snapshots, runtime=runtime
            )
        if changed:
            log.info("answers.widened", extra={"task_ids": sorted(changed)})
            self.worker.wakeup.set()
        return changed

    async def uncertain(self) -> int:
        runtime = await self.worker.refresh_runtime()
        async with unit_of_work(self.worker.sessionmaker) as session:
            return await lifecycle.abandon_stale_uncertain(session, now=clock.utc_now(), runtime=runtime)

    async def events(self) -> int:
        """Apply stored webhook/report events until none is left (each batch its own transaction)."""
        counts = await event_apply.drain(
            self.worker.sessionmaker,
            batch=EVENTS_BATCH,
            loops=EVENTS_LOOPS,
            simulated_matches_any=self.worker.settings.fake_provider_allowed,
            should_stop=self.worker.stopping.is_set,
        )
        if counts.reconciled:
            log.info("events.reconciled_uncertain", extra={"count": counts.reconciled})
        return counts.processed

    async def inbound(self) -> int:
        """Inbound mail the webhooks accepted: threaded to conversations, reports to the event store
        (docs/conversations.md#accepted-then-processed)."""
        counts = await inbound_queue.drain(
            self.worker.sessionmaker,
            max_bytes=self.worker.settings.inbound_message_max_bytes,
            should_stop=self.worker.stopping.is_set,
        )
        if counts.handled:
            log.info("inbound.drained", extra=counts.as_dict())
        return counts.handled

    async def mailboxes(self) -> int:
        """Bounce reports and replies from the SMTP services' mailboxes (docs/providers.md#bounces-from-smtp-services,
        docs/conversations.md#sources)."""
        return await inbound_sources.poll_mailboxes(
            self.worker.sessionmaker, self.worker.vault, max_bytes=self.worker.settings.inbound_message_max_bytes
        )

    async def retention(self) -> int:
        """Retention (docs/operations.md#retention), daily: trim every table that grows without end, in batches."""
        runtime = await self.worker.refresh_runtime()
        outcomes = await retention.run(self.worker.sessionmaker, now=clock.utc_now(), runtime=runtime)
        trimmed = {o.target: o.rows for o in outcomes if o.rows}
        if trimmed or any(o.busy for o in outcomes):
            log.info("retention.trimmed", extra={"rows": trimmed, "busy": [o.target for o in outcomes if o.busy]})
        return sum(trimmed.values())

    async def idempotency(self) -> int:
        """Stored `Idempotency-Key` answers may carry personal data: they go hourly, once past their 24 hours."""
        runtime = await self.worker.refresh_runtime()
        outcomes = await retention.run(
            self.worker.sessionmaker, now=clock.utc_now(), runtime=runtime, only=("idempotency_keys",)
        )
        return sum(o.rows for o in outcomes)

    async def stats(self) -> int:
        """Fold the per-backend stripes of the statistics counters (PostgreSQL), so reads stay a few rows."""
        async with unit_of_work(self.worker.sessionmaker) as session:
            return await stats.fold_counter_stripes(session)
