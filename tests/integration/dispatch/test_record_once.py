"""An outcome batch is recorded exactly once, whatever fails around its transaction.

The worker retries the outcome transaction while the database fails (the outcomes must be recorded). Two
faults used to make it record a batch twice — a second SendAttempt per recipient, and the service's health
samples counted twice:

- the connection dropping in the step after a committed record (the post-batch threshold check): that
  step was inside the record's retry;
- the connection dropping while the record's COMMIT is answered: committed, but the worker cannot tell.

PostgreSQL is reached through a TCP proxy that makes each fault happen for real, at the exact statement:
it reads the protocol bytes the worker sends (the SQL text travels in them) and cuts the connection there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.engine import make_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.email_services import EmailServiceState
from edm.models.tasks import SendAttempt, SubTask
from edm.providers.base import Outcome, SendResult
from edm.providers.fake import FakeAdapter
from edm.system.runtime_settings import Policy
from edm.tasks import generation
from tests import factories
from tests.integration.dispatch.conftest import DispatchKit

RECIPIENTS = 4
# The post-batch threshold check's query (`lifecycle.check_thresholds`): the only SELECT that starts so.
THRESHOLD_QUERY = b"SELECT tasks.id, tasks.error_thresholds, tasks.threshold_window_started_at"
ATTEMPTS_INSERT = b"INSERT INTO send_attempts"


@dataclass
class _Fault:
    """One fault, fired once: `cut_at` cuts the connection instead of sending a message holding it;
    `lose_commit_after` lets the next COMMIT of the connection that sent it reach the server, then swallows
    the server's answer and cuts the connection."""

    cut_at: bytes | None = None
    lose_commit_after: bytes | None = None
    fired: asyncio.Event = field(default_factory=asyncio.Event)


class FaultProxy:
    """A loopback TCP proxy to PostgreSQL that injects one `_Fault`."""

    def __init__(self, target: tuple[str, int], fault: _Fault) -> None:
        self.target, self.fault = target, fault
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        swallowing = asyncio.Event()  # the server's answers stop reaching the client from now on

        def cut() -> None:
            client_writer.transport.abort()
            server_writer.transport.abort()

        async def upstream() -> None:
            armed = False
            while data := await client_reader.read(65536):
                fault = self.fault
                if not fault.fired.is_set():
                    if fault.cut_at and fault.cut_at in data:
                        fault.fired.set()
                        cut()
                        return
                    if fault.lose_commit_after and fault.lose_commit_after in data:
                        armed = True
                    if armed and b"COMMIT" in data:
                        fault.fired.set()
                        swallowing.set()
                server_writer.write(data)
                await server_writer.drain()
            cut()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                if swallowing.is_set():  # the COMMIT's answer: the server committed, the client never learns it
                    cut()
                    return
                client_writer.write(data)
                await client_writer.drain()
            cut()

        for pipe in (upstream(), downstream()):
            task = asyncio.create_task(_quietly(pipe))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


async def _quietly(pipe: object) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
        await pipe  # type: ignore[misc]


@contextlib.asynccontextmanager
async def worker_through(db_url: str, fault: _Fault) -> AsyncIterator[DispatchKit]:
    """A DispatchKit whose worker reaches the database through a FaultProxy injecting `fault`."""
    url = make_url(db_url)
    proxy = FaultProxy((url.host or "127.0.0.1", url.port or 5432), fault)
    await proxy.start()
    engine = make_engine(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    try:
        yield DispatchKit(db_url, make_sessionmaker(engine))
    finally:
        await engine.dispose()
        await proxy.close()


async def _generated_task(kit: DispatchKit, options: dict[str, object]) -> tuple[int, int]:
    """A task of RECIPIENTS contacts, generated, for one fake service with `options`: (task id, service id)."""
    w = await factories.world(
        kit.sessionmaker, kit.settings, recipients=RECIPIENTS, services_=[{"name": "esp", "options": options}]
    )
    async with unit_of_work(kit.sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
        result = await generation.generate(session, task_id, now=utc_now())
    assert result is not None and result.sendable == RECIPIENTS
    return task_id, w.service_ids[0]


def _postgres_only(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: a TCP proxy in front of the server makes the fault")


async def _recorded_once(kit: DispatchKit, task_id: int, state: str) -> None:
    """Every recipient in `state` with one attempt, one SendAttempt each, and RECIPIENTS health samples."""
    assert await kit.count(task_id, state) == RECIPIENTS
    attempts = await kit.rows(
        select(SendAttempt.subtask_id, func.count())
        .join(SubTask, SubTask.id == SendAttempt.subtask_id)
        .where(SubTask.task_id == task_id)
        .group_by(SendAttempt.subtask_id)
    )
    assert sorted(n for _, n in attempts) == [1] * RECIPIENTS, f"SendAttempts per recipient: {attempts}"
    assert await kit.scalar(select(EmailServiceState.recent_samples)) == RECIPIENTS


async def test_a_threshold_check_failing_after_the_record_does_not_record_again(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    _postgres_only(db_url)
    caplog.set_level(logging.WARNING, logger="edm.worker")
    fault = _Fault(cut_at=THRESHOLD_QUERY)
    async with worker_through(db_url, fault) as kit:
        # Every send fails permanently: the batch has failures, so the threshold check runs after it.
        task_id, _ = await _generated_task(DispatchKit(db_url, sessionmaker), {"permanent_pct": 100})
        async with kit.worker(concurrency=1, run_jobs=False):
            await kit.wait_for(
                lambda: _fired_and_counted(kit, fault, task_id, "failed"), what="the fault and every outcome"
            )
    # The worker stopped gracefully: a retry of the record, had there been one, has run by now.
    await _recorded_once(DispatchKit(db_url, sessionmaker), task_id, "failed")
    assert any(r.getMessage() == "dispatch.threshold_check_failed" for r in caplog.records)


async def test_a_commit_whose_answer_is_lost_is_not_recorded_again(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _postgres_only(db_url)
    fault = _Fault(lose_commit_after=ATTEMPTS_INSERT)
    async with worker_through(db_url, fault) as kit:
        task_id, service_id = await _generated_task(DispatchKit(db_url, sessionmaker), {})
        async with kit.worker(concurrency=1, run_jobs=False) as worker:
            await kit.wait_for(lambda: _fired_and_counted(kit, fault, task_id, "sent"), what="the fault and every send")
            # The record's retry runs a second after the cut; it must find the batch recorded.
            await kit.wait_for(lambda: _true(worker.sent_batches >= 1), what="the retried record to finish")
    await _recorded_once(DispatchKit(db_url, sessionmaker), task_id, "sent")
    assert len(FakeAdapter.deliveries_for(service_id)) == RECIPIENTS  # each recipient mailed once


async def _fired_and_counted(kit: DispatchKit, fault: _Fault, task_id: int, state: str) -> bool:
    return fault.fired.is_set() and await kit.count(task_id, state) == RECIPIENTS


async def _true(value: bool) -> bool:
    return value


async def test_already_recorded_tells_a_committed_record_by_its_time(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """What the worker's retry asks, on both databases: only the record of this claim at this exact time
    counts, not one at another time, nor the claim alone."""
    kit = DispatchKit(db_url, sessionmaker)
    _, service_id = await _generated_task(kit, {})
    async with unit_of_work(sessionmaker) as session:
        claim = await queue.claim(session, service_id=service_id, worker_id="w1", now=utc_now())
    assert claim is not None and len(claim.items) == RECIPIENTS
    ids = [i.subtask_id for i in claim.items]
    at = utc_now()
    async with sessionmaker() as session:
        assert not await queue.already_recorded(session, claim=claim, subtask_ids=ids, at=at)
    outcomes = [queue.ItemOutcome(i, SendResult(str(i.public_id), Outcome.ACCEPTED), at) for i in claim.items]
    async with unit_of_work(sessionmaker) as session:
        await queue.record(session, claim=claim, outcomes=outcomes, now=at, policy=Policy())
    async with sessionmaker() as session:
        assert await queue.already_recorded(session, claim=claim, subtask_ids=ids, at=at)
        assert await queue.already_recorded(session, claim=claim, subtask_ids=ids[-1:], at=at)
        assert not await queue.already_recorded(
            session, claim=claim, subtask_ids=ids, at=at + dt.timedelta(microseconds=1)
        )
        assert not await queue.already_recorded(session, claim=claim, subtask_ids=[], at=at)
