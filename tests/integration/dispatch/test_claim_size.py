"""How much a claim takes and how often a worker asks (docs/sending.md#the-claim).

- A claim may always fill one provider call: `EDM_CLAIM_MAX` (200) bounds claims of single-recipient services, a
  batch service's claim takes up to its `batch_size` (at most 1,000). Regression: a batch service of 500 was sent
  calls of at most 200 recipients, each paying a claim and a record.
- A service whose claim found nothing to send is left out of the worker's claims for a moment
  (`NO_WORK_PAUSE`), instead of costing a claim transaction on every turn of every loop."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, text

from edm import clock
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.worker import dispatcher
from edm.worker.dispatcher import Worker
from tests import factories


async def _world_and_task(dkit, services: list[dict[str, Any]], *, recipients: int, on: list[int] | None = None):  # type: ignore[no-untyped-def]
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=recipients, services_=services)
    allowed = [w.service_ids[i] for i in on] if on is not None else None
    async with unit_of_work(dkit.sessionmaker) as session:
        task_id = await factories.task(
            session,
            w.user_id,
            sender_id=w.sender_id,
            template_ids=[w.template_id],
            rule={"type": "all_contacts"},
            allowed_service_ids=allowed,
        )
    assert (await dkit.generate(task_id)).sendable == recipients
    return w, task_id


async def _claim(dkit, service_id: int, misses: list[queue.Miss] | None = None) -> queue.Claim | None:  # type: ignore[no-untyped-def]
    async with unit_of_work(dkit.sessionmaker) as session:
        return await queue.claim(
            session,
            service_id=service_id,
            worker_id="w",
            now=clock.utc_now(),
            max_items=dkit.settings.claim_max,
            on_miss=misses.append if misses is not None else None,
        )


async def test_a_batch_service_claims_a_full_call_and_a_service_of_small_calls_the_claim_maximum(dkit):  # type: ignore[no-untyped-def]
    assert dkit.settings.claim_max == 200
    services = [
        {"name": "batch", "batch_size": 300, "max_concurrency": 2},
        {"name": "small", "batch_size": 3, "max_concurrency": 100},
    ]
    w, task_id = await _world_and_task(dkit, services, recipients=700)
    batch, small = w.service_ids

    first = await _claim(dkit, batch)
    assert first is not None and len(first.items) == 300, "one claim fills one call of the batch service"
    claimed = await _claim(dkit, small)
    assert claimed is not None and len(claimed.items) == 200, "300 calls of 3 may be in flight: EDM_CLAIM_MAX binds"
    second = await _claim(dkit, batch)
    assert second is not None and len(second.items) == 200, "what is left"
    assert await dkit.count(task_id, "allocated") == 700


async def test_a_claim_says_why_it_took_nothing(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _world_and_task(dkit, [{"name": "a", "max_concurrency": 1}, {"name": "b"}], recipients=3, on=[0])
    a, b = w.service_ids
    misses: list[queue.Miss] = []
    assert await _claim(dkit, b, misses) is None
    assert misses == [queue.Miss.NO_WORK], "the task may not use service b"
    if not dkit.is_sqlite:
        async with unit_of_work(dkit.sessionmaker) as session:  # another worker claiming at a holds its row
            await session.execute(text("SELECT 1 FROM email_service_states WHERE service_id = :s FOR UPDATE"), {"s": a})
            assert await _claim(dkit, a, misses) is None
        assert misses[-1] is queue.Miss.BUSY
    assert (taken := await _claim(dkit, a, misses)) is not None and len(taken.items) == 1
    assert await _claim(dkit, a, misses) is None
    assert misses[-1] is queue.Miss.UNAVAILABLE, "its one request in flight is all it may have"


async def test_a_worker_leaves_a_service_without_work_out_of_its_claims_for_a_moment(dkit, engine):  # type: ignore[no-untyped-def]
    w, task_id = await _world_and_task(dkit, [{"name": "a"}, {"name": "b"}], recipients=2, on=[0])
    a, b = w.service_ids
    await dkit.act(task_id, "pause")  # neither service has work now
    claims_at: list[int] = []

    def count_claims(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if "JOIN user_service_mappings" in statement:  # the claim's first read: the service's candidate tasks
            claims_at.append(_service_param(params))

    event.listen(engine.sync_engine, "before_cursor_execute", count_claims)
    try:
        worker = Worker(dkit.settings, dkit.sessionmaker, concurrency=1, run_jobs=False)
        assert await worker._claim_next() is None
        assert sorted(claims_at) == sorted([a, b]), "the first turn asks both services"
        for _ in range(5):
            assert await worker._claim_next() is None
        assert sorted(claims_at) == sorted([a, b]), "the next turns ask neither while both are remembered empty"
        await dkit.act(task_id, "resume")
        await asyncio.sleep(worker.scaled(dispatcher.NO_WORK_PAUSE) + 0.05)
        claim = await worker._claim_next()
        assert claim is not None and claim.service_id == a, "after the pause the work is found"
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count_claims)


def _service_param(params: Any) -> int:
    values = list(params.values()) if isinstance(params, dict) else list(params)
    ids = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    assert len(ids) == 1, params
    return int(ids[0])
