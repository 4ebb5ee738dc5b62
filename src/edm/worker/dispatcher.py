"""`edm worker`: dispatch loops (claim → send → record) and the maintenance jobs. An entry point: it owns
its units of work and commits once per claim and once per outcome batch (docs/sending.md).

Any number of workers may run against one PostgreSQL database; every limit lives in the database, so the
only thing a worker keeps in memory is configuration (≤ 30 s old) and provider connections. With a metrics port, a
worker answers /metrics itself (`edm.metrics.server`, docs/operations.md#metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import __version__, clock
from edm.db.availability import log_failure
from edm.db.session import unit_of_work
from edm.dispatch import allocation, queue
from edm.dispatch.compose import Composer, RenderFailure
from edm.metrics.server import MetricsServer
from edm.models.email_services import EmailService
from edm.providers.base import Adapter, OutboundMessage, Outcome, SendResult
from edm.providers.registry import AdapterCache
from edm.security.crypto import Vault
from edm.settings import Settings
from edm.system import runtime_settings, workers
from edm.tasks import lifecycle
from edm.worker.jobs import Maintenance

log = logging.getLogger("edm.worker")

SHUTDOWN_GRACE_SECONDS = 30.0
JOB_STOP_GRACE_SECONDS = 10.0
SNAPSHOT_TTL = 0.1  # seconds a service snapshot is shared between dispatch loops
IDLE_POLL = 0.5  # seconds between claim attempts when nothing is claimable
# Seconds a service whose claim found nothing to send is left out of this worker's claims. Without it every loop
# opened a claim transaction at every eligible service on every turn, most of them at services that had no work
# (a task limited to other services, or all its rows being claimed): 217 empty claims for 100 full ones in a
# batch run. New work waits at most this long for a claim (plus the idle poll).
NO_WORK_PAUSE = 1.0


@dataclass
class _Snapshot:
    taken: float
    services: list[queue.ServiceSnapshot]


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        concurrency: int | None = None,
        worker_id: str | None = None,
        run_jobs: bool = True,
        metrics_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.concurrency = concurrency or settings.worker_concurrency
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.vault = Vault.from_settings(settings)
        self.adapters = AdapterCache(fake_allowed=settings.fake_provider_allowed)
        self.composer = Composer(settings, sessionmaker, self.vault)
        self.stopping = asyncio.Event()
        self.wakeup = asyncio.Event()
        self.runtime = runtime_settings.RuntimeSettings()
        self._runtime_loaded = 0.0
        self._snapshot: _Snapshot | None = None
        self._snapshot_lock = asyncio.Lock()
        self._swrr = allocation.SmoothWeighted()
        self._run_jobs = run_jobs
        self.maintenance = Maintenance(self)
        self.sent_batches = 0
        self._threshold_checked: dict[int, tuple[float, int]] = {}
        self._no_work_until: dict[int, float] = {}  # service id -> monotonic time its claims resume
        port = settings.worker_metrics_port if metrics_port is None else metrics_port
        self.metrics = (
            None
            if port is None
            else MetricsServer(settings, sessionmaker, host=settings.worker_metrics_host, port=port)
        )

    # ---- lifecycle -------------------------------------------------------------------------------------

    def scaled(self, seconds: float) -> float:
        return seconds * self.settings.time_scale

    async def run(self, *, install_signals: bool = True) -> None:
        if self.metrics is not None:  # first: a port already taken stops the worker before it does anything
            await self.metrics.start()
        if install_signals:
            self._install_signal_handlers()
        await self._register()
        loops = [asyncio.create_task(self._dispatch_loop(i), name=f"dispatch-{i}") for i in range(self.concurrency)]
        jobs = self.maintenance.start() if self._run_jobs else []
        log.info("worker.started", extra={"worker_id": self.id, "concurrency": self.concurrency})
        await self.stopping.wait()
        # Loops stop claiming at once; started sends get the grace period to finish and be recorded.
        done, pending = await asyncio.wait(loops, timeout=SHUTDOWN_GRACE_SECONDS + 5)
        # Jobs end after the iteration they are in rather than being cancelled wherever they happen to be
        # (inside a transaction, between two statements); one still busy after the grace (a long import,
        # which another worker takes over once its heartbeat is stale) is cancelled.
        late_jobs = (await asyncio.wait(jobs, timeout=JOB_STOP_GRACE_SECONDS))[1] if jobs else set()
        for task in [*pending, *late_jobs]:
            task.cancel()
        await asyncio.gather(*pending, *jobs, return_exceptions=True)
        for task in done:
            if task.exception():
                log.error("worker.loop_failed", exc_info=task.exception())
        await self.adapters.aclose()
        await self._unregister()
        if self.metrics is not None:
            await self.metrics.stop()
        log.info("worker.stopped", extra={"worker_id": self.id})

    def request_stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.request_stop)

    async def _register(self) -> None:
        async with unit_of_work(self.sessionmaker) as session:
            await workers.register(
                session,
                worker_id=self.id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
                now=clock.utc_now(),
            )

    async def _unregister(self) -> None:
        with contextlib.suppress(Exception):
            async with unit_of_work(self.sessionmaker) as session:
                await workers.unregister(session, self.id)

    async def heartbeat(self) -> None:
        async with unit_of_work(self.sessionmaker) as session:
            await workers.heartbeat(session, self.id, now=clock.utc_now())

    async def refresh_runtime(self, *, force: bool = False) -> runtime_settings.RuntimeSettings:
        if force or time.monotonic() - self._runtime_loaded > self.scaled(30.0):
            async with self.sessionmaker() as session:
                self.runtime = await runtime_settings.load(session)
            self._runtime_loaded = time.monotonic()
        return self.runtime

    # ---- dispatch --------------------------------------------------------------------------------------

    async def _dispatch_loop(self, index: int) -> None:
        while not self.stopping.is_set():
            try:
                claim = await self._claim_next()
            except Exception as exc:  # a database hiccup must not kill the loop
                log_failure(log, "dispatch.claim_failed", exc)
                claim = None
                await self._sleep(self.scaled(1.0))
            if claim is None:
                await self._idle()
                continue
            if claim.items:
                await self._process(claim)

    async def _idle(self) -> None:
        self.wakeup.clear()
        await self._sleep(self.scaled(IDLE_POLL), event=self.wakeup)

    async def _sleep(self, seconds: float, *, event: asyncio.Event | None = None) -> None:
        waiter = event or self.stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), timeout=max(0.0, seconds))

    async def snapshots(self) -> list[queue.ServiceSnapshot]:
        async with self._snapshot_lock:
            if self._snapshot is None or time.monotonic() - self._snapshot.taken > SNAPSHOT_TTL:
                async with self.sessionmaker() as session:
                    services = await queue.snapshot_services(session, now=clock.utc_now())
                self._snapshot = _Snapshot(time.monotonic(), services)
            return self._snapshot.services

    def invalidate_snapshot(self) -> None:
        self._snapshot = None

    def _note_in_flight(self, service_id: int, count: int, *, claimed: bool = False) -> None:
        """After this process claimed (count > 0) or recorded/released (< 0) SubTasks of a service, update the
        shared snapshot instead of reading every service again. Without it each claim and record made the
        next attempt of every idle loop re-read the snapshot, and a freed service drew one claim transaction
        from each of them, all but one finding nothing. A service with a sending interval is read again
        (its next slot moved, which only the database knows)."""
        snapshot = self._snapshot
        if snapshot is None:
            return
        now = clock.utc_now()
        services = []
        for s in snapshot.services:
            if s.service.id == service_id:
                if float(s.service.sending_interval_seconds) > 0:
                    self.invalidate_snapshot()
                    return
                s = queue.adjusted(s, in_flight=count, now=now, claimed=claimed)
            services.append(s)
        self._snapshot = _Snapshot(snapshot.taken, services)

    async def _claim_next(self) -> queue.Claim | None:
        runtime = await self.refresh_runtime()
        if runtime.sending_paused:
            return None
        views = [_view(s) for s in await self.snapshots()]
        # Left out after the order is made, so a primary without work does not hand the pool to the backups.
        now = time.monotonic()
        ordered = allocation.order_services(views, runtime.strategy, self._swrr)
        for service_id in [s for s in ordered if self._no_work_until.get(s, 0.0) <= now]:
            # Every loop tries the services in the strategy's order, even one another loop of this worker is claiming
            # from (it waits for that claim's lock): skipping such a service sent the work of a slow-to-claim service
            # to the others and starved it (on SQLite, where claims queue for the one writer, a service never got any).
            async with unit_of_work(self.sessionmaker) as session:
                claim = await queue.claim(
                    session,
                    service_id=service_id,
                    worker_id=self.id,
                    now=clock.utc_now(),
                    sending_paused=runtime.sending_paused,
                    max_items=self.settings.claim_max,
                    lease_grace=dt.timedelta(seconds=self.scaled(60.0)),
                    on_miss=functools.partial(self._missed, service_id),
                )
            if claim is not None:
                self._note_in_flight(service_id, len(claim.items), claimed=True)
                return claim
        return None

    def _missed(self, service_id: int, miss: queue.Miss) -> None:
        if miss is queue.Miss.NO_WORK:
            self._no_work_until[service_id] = time.monotonic() + self.scaled(NO_WORK_PAUSE)

    async def _process(self, claim: queue.Claim) -> None:
        try:
            service, adapter = await self._adapter_for(claim.service_id)
            composed = await self.composer.compose(claim)
        except Exception as exc:  # the database went away after the claim: nothing was sent yet
            log_failure(log, "dispatch.compose_failed", exc, service_id=claim.service_id)
            await self._give_back(claim)
            await self._sleep(self.scaled(1.0))  # as after a failed claim: no tight loop while it lasts
            return
        await self._pause_render_limited(claim, composed)
        # A service saved before its provider's limit was checked must still never exceed it.
        batches = _batches(claim.items, min(service.batch_size, adapter.capabilities.max_batch))
        runs = [self._send_batch(adapter, batch, composed) for batch in batches]
        results = await asyncio.gather(*runs)
        outcomes = [o for batch_outcomes, _ in results for o in batch_outcomes]
        unstarted = [i for _, batch_unstarted in results for i in batch_unstarted]
        await self._record(claim, outcomes, unstarted, adapter)

    async def _give_back(self, claim: queue.Claim) -> None:
        """Release a claim none of whose items was sent, so they are claimed again with no attempt counted.
        Retried until the database answers: this loop has nothing else to do meanwhile, and a shutdown cancels
        it after its grace (the lease then expires and the reclaimer settles the rows)."""
        attempt = 0
        while True:
            try:
                async with unit_of_work(self.sessionmaker) as session:
                    await queue.release(
                        session,
                        claim=claim,
                        items=claim.items,
                        now=clock.utc_now(),
                        message="not sent: the database was unreachable before sending",
                    )
                self._note_in_flight(claim.service_id, -len(claim.items))
                return
            except Exception as exc:
                attempt += 1
                log_failure(log, "dispatch.release_failed", exc, attempt=attempt)
                await asyncio.sleep(self.scaled(min(2.0**attempt, 20.0)))

    async def _pause_render_limited(
        self, claim: queue.Claim, composed: dict[int, OutboundMessage | RenderFailure]
    ) -> None:
        """A template that hit a render limit would fail every recipient the same way: its task pauses
        (reason `render_limit`) instead of burning through its list. The claimed SubTasks still fail
        `render_error` when the claim is recorded."""
        limited: dict[int, str] = {}
        for item in claim.items:
            failure = composed.get(item.subtask_id)
            if isinstance(failure, RenderFailure) and failure.limit is not None:
                limited.setdefault(item.task_id, failure.message)
        if not limited:
            return
        try:
            async with unit_of_work(self.sessionmaker) as session:
                for task_id, message in limited.items():
                    await lifecycle.pause_for_render_limit(session, task_id, detail=message)
        except Exception as exc:  # the claim must still be sent and recorded; a later claim pauses the task
            log_failure(log, "dispatch.render_limit_pause_failed", exc, task_ids=sorted(limited))
            return
        log.warning("dispatch.render_limit", extra={"task_ids": sorted(limited)})

    async def _adapter_for(self, service_id: int) -> tuple[EmailService, Adapter]:
        config, service = await self.composer.service_config(service_id, self.vault)
        return service, self.adapters.get(config)

    async def _send_batch(
        self, adapter: Adapter, batch: Sequence[queue.ClaimedItem], composed: dict[int, OutboundMessage | RenderFailure]
    ) -> tuple[list[queue.ItemOutcome], list[queue.ClaimedItem]]:
        """Wait for the batch's rate slot, then send. Items not started when a stop arrives are released."""
        await self._sleep(max(0.0, (batch[0].slot_at - clock.utc_now()).total_seconds()))
        if self.stopping.is_set():
            return [], list(batch)
        started = clock.utc_now()
        outcomes: list[queue.ItemOutcome] = []
        sendable = []
        for item in batch:
            message = composed.get(item.subtask_id)
            if isinstance(message, OutboundMessage):
                sendable.append((item, message))
            else:
                failure = message if isinstance(message, RenderFailure) else RenderFailure("missing", "not composed")
                outcomes.append(queue.ItemOutcome(item, failure.result(str(item.public_id)), started))
        if sendable:
            results = await self._send_settling_doubt(adapter, [m for _, m in sendable])
            for (item, message), result in zip(sendable, results, strict=True):
                outcomes.append(
                    queue.ItemOutcome(
                        item, result, started, message.from_address, message.headers.get("Message-ID"), message.subject
                    )
                )
        return outcomes, []

    async def _send_settling_doubt(self, adapter: Adapter, messages: list[OutboundMessage]) -> list[SendResult]:
        """Send; when the provider honours our idempotency key, resend the `maybe_sent` ones at once to the
        same service with the same key, which answers with the first result instead of sending twice.

        Why here and not later: a later retry may be claimed by another service (another account, where the
        key means nothing) and duplicate the mail, so what stays in doubt after these retries is recorded
        `uncertain` (docs/sending.md#crashes-and-uncertain-sends) and settled by the provider's events."""
        results = await self._call_adapter(adapter, messages)
        if not adapter.capabilities.honours_idempotency:
            return results
        for delay in IDEMPOTENT_RETRY_DELAYS:
            doubtful = [i for i, r in enumerate(results) if r.outcome is Outcome.MAYBE_SENT]
            if not doubtful or self.stopping.is_set():
                break
            await self._sleep(self.scaled(delay))
            retried = await self._call_adapter(adapter, [messages[i] for i in doubtful])
            for i, result in zip(doubtful, retried, strict=True):
                results[i] = result
        return results

    async def _call_adapter(self, adapter: Adapter, messages: list[OutboundMessage]) -> list[SendResult]:
        try:
            results = await adapter.send(messages)
            if len(results) == len(messages):
                return results
            error = "adapter returned a wrong number of results"
        except Exception as exc:  # an adapter bug: record it instead of losing the outcome
            log.exception("dispatch.adapter_error")
            error = f"adapter error: {type(exc).__name__}"
        # We cannot know whether the request left: treat as maybe-sent so nothing is resent blindly.
        return [SendResult(m.key, Outcome.MAYBE_SENT, message=error) for m in messages]

    async def _check_thresholds_after(self, claim: queue.Claim, outcomes: list[queue.ItemOutcome]) -> None:
        """Thresholds are evaluated after each outcome batch too (docs/sending.md#automatic-pause-on-errors), so a task
        failing fast is paused before it burns through its list. Only batches with failures can cross a threshold."""
        now = time.monotonic()
        due = [t for t in _failed_tasks(outcomes) if self._threshold_due(t, now)]
        if not due:
            return
        samples: dict[int, int] = {}
        async with unit_of_work(self.sessionmaker) as session:
            await lifecycle.check_thresholds(
                session, now=clock.utc_now(), runtime=self.runtime, task_ids=due, samples=samples
            )
        for task_id in due:
            self._threshold_checked[task_id] = (now, samples.get(task_id, 0))

    def _threshold_due(self, task_id: int, now: float) -> bool:
        """Below the minimum sample the count is cheap and every batch may matter; above it, once a second."""
        last_at, last_sample = self._threshold_checked.get(task_id, (0.0, 0))
        small = last_sample < self.runtime.autopause_min_sample
        return small or now - last_at >= THRESHOLD_CHECK_EVERY

    async def _record(
        self,
        claim: queue.Claim,
        outcomes: list[queue.ItemOutcome],
        unstarted: list[queue.ClaimedItem],
        adapter: Adapter,
    ) -> None:
        """Record the batch, then what follows from it. Only the record itself is retried: a step after it
        failing (the threshold check losing its connection) must not record the outcomes a second time."""
        summary = await self._record_once(claim, outcomes, unstarted)
        if summary is None:
            return
        self.sent_batches += 1
        self._note_in_flight(claim.service_id, -(len(outcomes) + len(unstarted)))
        self.wakeup.set()  # capacity was just freed: idle loops may claim now instead of polling
        if summary.status_log:
            self.invalidate_snapshot()
            log.warning("service.state_changed", extra={"service_id": claim.service_id, "changes": summary.status_log})
        try:
            await self._check_thresholds_after(claim, outcomes)
        except Exception as exc:  # the `thresholds` job checks every sending task within a minute anyway
            log_failure(log, "dispatch.threshold_check_failed", exc, service_id=claim.service_id)

    async def _record_once(
        self, claim: queue.Claim, outcomes: list[queue.ItemOutcome], unstarted: list[queue.ClaimedItem]
    ) -> queue.RecordSummary | None:
        """The outcome transaction, retried briefly while the database fails: the outcomes must be recorded.
        Every try records with the same time, and a retry first asks whether an earlier try committed after
        all (its connection lost while COMMIT was answered), so the outcomes are recorded exactly once.
        None when every try failed: the lease then expires and the reclaimer settles the rows (uncertain
        unless the provider honours our idempotency key)."""
        recorded_at, policy = clock.utc_now(), self.runtime.policy
        item_ids = [o.item.subtask_id for o in outcomes] + [i.subtask_id for i in unstarted]
        for attempt in range(RECORD_ATTEMPTS):
            try:
                async with unit_of_work(self.sessionmaker) as session:
                    if attempt and await queue.already_recorded(
                        session, claim=claim, subtask_ids=item_ids, at=recorded_at
                    ):
                        log.info("dispatch.record_already_committed", extra={"service_id": claim.service_id})
                        return queue.RecordSummary()
                    summary = await queue.record(
                        session, claim=claim, outcomes=outcomes, now=recorded_at, policy=policy
                    )
                    await queue.release(session, claim=claim, items=unstarted, now=recorded_at)
                return summary
            except Exception as exc:
                log_failure(log, "dispatch.record_failed", exc, attempt=attempt + 1, service_id=claim.service_id)
                await asyncio.sleep(min(2.0**attempt, 10.0))
        return None


RECORD_ATTEMPTS = 5  # tries of an outcome transaction before the lease is left to expire
IDEMPOTENT_RETRY_DELAYS = (0.5, 2.0)  # seconds before each same-service resend of a maybe-sent message
THRESHOLD_CHECK_EVERY = 1.0  # seconds between post-batch threshold checks of one task (each is a count)


def _failed_tasks(outcomes: list[queue.ItemOutcome]) -> set[int]:
    return {o.item.task_id for o in outcomes if o.result.outcome is not Outcome.ACCEPTED}


def _view(s: queue.ServiceSnapshot) -> allocation.ServiceView:
    return queue.service_view(s)


def _batches(items: Sequence[queue.ClaimedItem], size: int) -> list[list[queue.ClaimedItem]]:
    return [list(items[i : i + size]) for i in range(0, len(items), max(1, size))]


async def run_worker(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    concurrency: int | None = None,
    on_ready: Callable[[Worker], Awaitable[None]] | None = None,
) -> None:
    worker = Worker(settings, sessionmaker, concurrency=concurrency)
    if on_ready is not None:
        await on_ready(worker)
    await worker.run()
