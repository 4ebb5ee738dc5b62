"""End to end in-process: generation → claims → fake provider → outcomes → finalization, on each database."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from edm.db.session import unit_of_work
from edm.models.tasks import SubTask, Task
from edm.models.users import QuotaLedgerEntry, User
from edm.providers.fake import FakeAdapter
from edm.tasks.stats import recount, task_stats
from edm.worker.dispatcher import Worker
from tests import factories
from tests.helpers import settings_for


async def run_until(worker: Worker, predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    runner = asyncio.create_task(worker.run(install_signals=False))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await predicate():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
            assert not runner.done(), f"worker died: {runner.exception() if runner.done() else ''}"
            await asyncio.sleep(0.05)
    finally:
        worker.request_stop()
        await runner


async def test_task_completes_through_fake_provider(db_url, sessionmaker):  # type: ignore[no-untyped-def]
    settings = settings_for(db_url, time_scale=0.05)
    w = await factories.world(sessionmaker, settings, recipients=30, services_=[{"name": "fake-a"}, {"name": "fake-b"}])
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )

    async def completed() -> bool:
        async with sessionmaker() as session:
            return await session.scalar(select(Task.status).where(Task.id == task_id)) == "completed"

    await run_until(Worker(settings, sessionmaker, concurrency=2), completed)
    async with sessionmaker() as session:
        stats = await task_stats(session, task_id)
        assert stats == await recount(session, task_id)
        assert stats["sent"] == 30 and stats["recipients"] == 30 and stats["progress"] == 1.0
        services = set(await session.scalars(select(SubTask.service_id).where(SubTask.task_id == task_id)))
        assert services == set(w.service_ids), "both services took work"
        balance = await session.scalar(select(User.credit_balance).where(User.id == w.user_id))
        ledger = await session.scalar(
            select(func.sum(QuotaLedgerEntry.amount)).where(QuotaLedgerEntry.user_id == w.user_id)
        )
        assert balance == ledger == 100000 - 30
    delivered = FakeAdapter.delivered_keys(w.service_ids[0]) + FakeAdapter.delivered_keys(w.service_ids[1])
    assert len(delivered) == len(set(delivered)) == 30
