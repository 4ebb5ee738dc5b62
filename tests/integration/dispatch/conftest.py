"""Shared helpers for the dispatch scenarios: run an in-process Worker in the background, poll the database
for a condition with a deadline, and read the facts the tests assert on (SubTask counts, credit, stats).

Everything goes through the real code: the worker, the queue, the fake provider and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.models.tasks import SubTask, Task
from edm.models.users import QuotaLedgerEntry, User
from edm.settings import Settings
from edm.system import runtime_settings
from edm.tasks import generation
from edm.tasks import service as tasks
from edm.tasks.stats import recount, task_stats
from edm.worker.dispatcher import Worker
from tests.helpers import settings_for

# A deadline here only tells a stuck test from a slow one: the suite runs in two xdist workers on a 2-core
# machine, often beside other work, where a worker's claim cycles run several times slower than alone.
DEADLINE_SLACK = 3


class DispatchKit:
    """One per test: the database under test plus helpers to drive workers and read results."""

    def __init__(self, db_url: str, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.db_url = db_url
        self.sessionmaker = sessionmaker
        self.settings: Settings = settings_for(db_url, time_scale=0.05)
        self._runners: list[asyncio.Task[None]] = []

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    # ---- workers -------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def worker(
        self, *, concurrency: int = 2, run_jobs: bool = True, metrics_port: int | None = None
    ) -> AsyncIterator[Worker]:
        """A Worker running in the background for the duration of the block; stopped (gracefully) after. With a
        `metrics_port` (0: any free one) the block starts once its /metrics listens (`worker.metrics.port`)."""
        worker = Worker(
            self.settings, self.sessionmaker, concurrency=concurrency, run_jobs=run_jobs, metrics_port=metrics_port
        )
        runner = asyncio.create_task(worker.run(install_signals=False))
        self._runners.append(runner)
        if worker.metrics is not None:
            await self.wait_for(lambda: _listening(worker), what="worker /metrics listening")
        try:
            yield worker
        finally:
            worker.request_stop()
            await asyncio.wait_for(runner, timeout=40)
            self._runners.remove(runner)

    async def wait_for(
        self, predicate: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
    ) -> None:
        """Poll `predicate` until it holds; fail after `timeout` seconds (times DEADLINE_SLACK) or when a running
        worker died."""
        loop = asyncio.get_running_loop()
        allowed = timeout * DEADLINE_SLACK
        deadline = loop.time() + allowed
        while not await predicate():
            for runner in self._runners:
                if runner.done():
                    raise AssertionError(f"worker died: {runner.exception()!r}")
            assert loop.time() < deadline, f"{what} not reached within {allowed} s"
            await asyncio.sleep(0.02)

    async def hold(self, seconds: float) -> None:
        """Let real time pass (for claim cycles to run) while checking that the workers stay alive."""
        await asyncio.sleep(seconds)
        for runner in self._runners:
            if runner.done():
                raise AssertionError(f"worker died: {runner.exception()!r}")

    # ---- writes --------------------------------------------------------------------------------------

    async def put_settings(self, **values: Any) -> None:
        """Admin settings rows; `retry__base_delay=0.2` is stored as `retry.base_delay`."""
        async with unit_of_work(self.sessionmaker) as session:
            for key, value in values.items():
                await runtime_settings.put(session, key.replace("__", "."), value)

    async def generate(self, task_id: int) -> generation.GenerationResult | None:
        async with unit_of_work(self.sessionmaker) as session:
            return await generation.generate(session, task_id, now=clock.utc_now())

    # ---- reads ---------------------------------------------------------------------------------------

    async def scalar(self, stmt: Any) -> Any:
        async with self.sessionmaker() as session:
            return await session.scalar(stmt)

    async def rows(self, stmt: Any) -> list[Any]:
        async with self.sessionmaker() as session:
            return list((await session.execute(stmt)).all())

    async def count(self, task_id: int, *states: str) -> int:
        """SubTasks of the task (in the given send states, or all)."""
        stmt = select(func.count()).select_from(SubTask).where(SubTask.task_id == task_id)
        if states:
            stmt = stmt.where(SubTask.send_state.in_(states))
        return int(await self.scalar(stmt) or 0)

    async def task(self, task_id: int) -> Task:
        async with self.sessionmaker() as session:
            task = await session.get(Task, task_id, populate_existing=True)
            assert task is not None
            return task

    async def act(self, task_id: int, action: str) -> Any:
        """Pause, resume or cancel through the task service in one unit of work; returns the time after commit."""
        async with unit_of_work(self.sessionmaker) as session:
            task = await tasks.get_task(session, task_id, user_id=None)
            await getattr(tasks, action)(session, task, actor="test")
        return clock.utc_now()

    async def status(self, task_id: int) -> str:
        return str(await self.scalar(select(Task.status).where(Task.id == task_id)))

    async def subtasks(self, task_id: int) -> list[SubTask]:
        async with self.sessionmaker() as session:
            return list(
                await session.scalars(
                    select(SubTask)
                    .where(SubTask.task_id == task_id)
                    .order_by(SubTask.id)
                    .execution_options(populate_existing=True)
                )
            )

    async def credit(self, user_id: int) -> tuple[int, int]:
        """(balance, sum of the user's ledger entries): they must always agree."""
        async with self.sessionmaker() as session:
            balance = await session.scalar(select(User.credit_balance).where(User.id == user_id))
            ledger = await session.scalar(
                select(func.coalesce(func.sum(QuotaLedgerEntry.amount), 0)).where(QuotaLedgerEntry.user_id == user_id)
            )
        return int(balance), int(ledger)

    async def ledger(self, user_id: int, kind: str | None = None) -> list[QuotaLedgerEntry]:
        async with self.sessionmaker() as session:
            stmt = select(QuotaLedgerEntry).where(QuotaLedgerEntry.user_id == user_id).order_by(QuotaLedgerEntry.id)
            if kind is not None:
                stmt = stmt.where(QuotaLedgerEntry.kind == kind)
            return list(await session.scalars(stmt))

    async def stats(self, task_id: int) -> dict[str, Any]:
        """task_stats, checked against the independent row-by-row recount."""
        async with self.sessionmaker() as session:
            stats = await task_stats(session, task_id)
            assert stats == await recount(session, task_id)
        return stats


@pytest.fixture
def dkit(db_url: str, sessionmaker: async_sessionmaker[AsyncSession]) -> DispatchKit:
    return DispatchKit(db_url, sessionmaker)


async def _listening(worker: Worker) -> bool:
    return worker.metrics is not None and worker.metrics.listening
