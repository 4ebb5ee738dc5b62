"""A claim and an outcome transaction of the same service take their row locks in one order (the service's state
row, then the tasks, then the SubTasks), so they never deadlock (docs/sending.md#locks).

Regression: the outcome transaction locked the task first and the service row last, while a claim holds the service
row and then waits for the task. With two workers on one batch service PostgreSQL broke such a deadlock every few
claims by failing the record, which was retried after 1, 2, 4 ... s: dispatch idled at 241 recipients/s."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from edm import clock
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.dispatch.queue import selection
from edm.providers.base import Outcome, SendResult
from edm.system.runtime_settings import Policy
from tests import factories


async def _blocked_on_a_lock(dkit) -> bool:  # type: ignore[no-untyped-def]
    async with dkit.sessionmaker() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        )
    return bool(waiting)


async def test_an_outcome_transaction_and_a_claim_of_one_service_never_deadlock(dkit, monkeypatch):  # type: ignore[no-untyped-def]
    if dkit.is_sqlite:
        pytest.skip("SQLite has one writer at a time: its transactions cannot hold rows the other waits for")
    w = await factories.world(
        dkit.sessionmaker, dkit.settings, recipients=6, services_=[{"name": "a", "max_concurrency": 10}]
    )
    service_id = w.service_ids[0]
    async with unit_of_work(dkit.sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    assert (await dkit.generate(task_id)).sendable == 6
    async with unit_of_work(dkit.sessionmaker) as session:
        first = await queue.claim(session, service_id=service_id, worker_id="w1", now=clock.utc_now(), max_items=3)
    assert first is not None and len(first.items) == 3
    outcomes = [
        queue.ItemOutcome(i, SendResult(str(i.public_id), Outcome.ACCEPTED, status=250), clock.utc_now())
        for i in first.items
    ]

    async def record_first() -> None:
        async with unit_of_work(dkit.sessionmaker) as session:
            await queue.record(session, claim=first, outcomes=outcomes, now=clock.utc_now(), policy=Policy())

    # The second claim holds the service row and has read its candidate tasks; now the first claim's outcomes
    # are recorded beside it, and the claim goes on to lock the task only once that record waits on a lock.
    original = selection.candidate_tasks
    records: list[asyncio.Task[None]] = []

    async def candidates_while_the_first_claim_is_recorded(*args: Any, **kwargs: Any) -> Any:
        candidates = await original(*args, **kwargs)
        if not records:
            records.append(asyncio.create_task(record_first()))
            await dkit.wait_for(lambda: _blocked_on_a_lock(dkit), what="the record waiting on the claim's lock")
        return candidates

    monkeypatch.setattr(selection, "candidate_tasks", candidates_while_the_first_claim_is_recorded)
    async with unit_of_work(dkit.sessionmaker) as session:
        await session.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
        second = await queue.claim(session, service_id=service_id, worker_id="w2", now=clock.utc_now(), max_items=3)
    await asyncio.wait_for(records[0], timeout=30)  # raises the record's deadlock, if it was the one broken

    assert second is not None and len(second.items) == 3
    assert await dkit.count(task_id, "sent") == 3
    assert await dkit.count(task_id, "allocated") == 3
