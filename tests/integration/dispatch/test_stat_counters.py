"""Task statistics counters (docs/statistics.md#where-the-numbers-come-from): on PostgreSQL a trigger keeps
`task_stat_counters` in the same transaction as every SubTask change; the reads must equal a row-by-row recount after
any mix of changes, concurrent writers must not wait on each other's counter rows, and folding the stripes changes
nothing."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import delete, func, select, update

from edm import clock
from edm.db.session import unit_of_work
from edm.models.events import Event
from edm.models.tasks import SendAttempt, SubTask, Task, TaskStatCounter
from edm.tasks import facts, reports
from edm.tasks import stats as task_stats_module
from edm.tasks.service import cancel
from edm.tasks.stats import _assemble
from tests import factories


async def _task(dkit, recipients: int, services: list[dict] | None = None):  # type: ignore[no-untyped-def]
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=recipients, services_=services or [])
    async with unit_of_work(dkit.sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    await dkit.generate(task_id)
    return w, task_id


async def _counter_rows(dkit, task_id: int) -> list[TaskStatCounter]:  # type: ignore[no-untyped-def]
    async with dkit.sessionmaker() as session:
        return list(await session.scalars(select(TaskStatCounter).where(TaskStatCounter.task_id == task_id)))


async def test_counters_equal_a_recount_after_every_kind_of_change(dkit):  # type: ignore[no-untyped-def]
    _, task_id = await _task(
        dkit,
        60,
        services=[
            {"name": "fake-a", "options": {"transient_pct": 20, "permanent_pct": 10, "seed": 7}},
            {"name": "fake-b"},
        ],
    )
    await dkit.stats(task_id)  # generation: 60 pending rows, recounted

    async with dkit.worker(concurrency=4):
        await dkit.wait_for(lambda: _sent_at_least(dkit, task_id, 20), timeout=20, what="20 sent")
    stats = await dkit.stats(task_id)
    assert stats["sent"] >= 20

    # Engagement, delivery and a later cancel: each an UPDATE the counters must follow.
    async with unit_of_work(dkit.sessionmaker) as session:
        sent_ids = list(
            await session.scalars(
                select(SubTask.id)
                .where(SubTask.task_id == task_id, SubTask.send_state == "sent")
                .order_by(SubTask.id)
                .limit(6)
            )
        )
        await session.execute(
            update(SubTask)
            .where(SubTask.id.in_(sent_ids[:3]))
            .values(open_count=SubTask.open_count + 2, delivery_state="delivered")
        )
        await session.execute(
            update(SubTask)
            .where(SubTask.id == sent_ids[3])
            .values(machine_click_count=1, delivery_state="hard_bounced")
        )
        await session.execute(
            update(SubTask)
            .where(SubTask.id == sent_ids[4])
            .values(unsubscribed_at=clock.utc_now(), replied_at=clock.utc_now(), click_count=1)
        )
    async with unit_of_work(dkit.sessionmaker) as session:
        task = await session.get(Task, task_id)
        await cancel(session, task, actor="test")
    stats = await dkit.stats(task_id)
    assert stats["opens"] == 6 and stats["machine_clicks"] == 1 and stats["hard_bounced"] == 1
    assert stats["unsubscribed"] == stats["replied"] == stats["clicked_human"] == 1
    assert stats["opened_human"] == 4 and stats["opened_total"] == 5

    # Tracking hits: two human opens, a machine open, a human click, and an open matched later.
    async with unit_of_work(dkit.sessionmaker) as session:
        hits = [
            _hit(task_id, sent_ids[0], "opened", {}),
            _hit(task_id, sent_ids[0], "opened", {}),
            _hit(task_id, sent_ids[1], "opened", {"machine": True}),
            _hit(task_id, sent_ids[4], "clicked", {"link_id": 1}),
            _hit(task_id, sent_ids[2], "opened", {}, match_status="pending"),
        ]
        session.add_all(hits)
        await session.flush()
        late = hits[-1].id
    async with unit_of_work(dkit.sessionmaker) as session:
        await session.execute(update(Event).where(Event.id == late).values(match_status="matched"))
    await _reports_equal_their_rows(dkit, task_id, open_hits=3, click_hits=1)

    rows = await _counter_rows(dkit, task_id)
    if dkit.is_sqlite:
        assert rows == [], "SQLite aggregates the rows; it keeps no counters"
        return
    assert len({r.stripe for r in rows}) >= 2, "several backends wrote, each to its own stripe"
    async with unit_of_work(dkit.sessionmaker) as session:
        assert await task_stats_module.fold_counter_stripes(session) > 0
    rows = await _counter_rows(dkit, task_id)
    assert {r.stripe for r in rows} == {0} and all(r.n > 0 for r in rows)
    assert await dkit.stats(task_id) == stats
    await _reports_equal_their_rows(dkit, task_id, open_hits=3, click_hits=1)

    # Deleting rows subtracts them; once a deleted task's rows are gone, the next fold drops its counters.
    async with unit_of_work(dkit.sessionmaker) as session:
        await session.execute(delete(SubTask).where(SubTask.task_id == task_id, SubTask.send_state == "cancelled"))
    assert (await dkit.stats(task_id))["cancelled"] == 0
    async with unit_of_work(dkit.sessionmaker) as session:
        await session.execute(delete(SubTask).where(SubTask.task_id == task_id))
        await session.execute(delete(Task).where(Task.id == task_id))
    async with unit_of_work(dkit.sessionmaker) as session:
        await task_stats_module.fold_counter_stripes(session)
    assert await _counter_rows(dkit, task_id) == []


def _hit(task_id: int, subtask_id: int, kind: str, details: dict, match_status: str = "matched") -> Event:  # type: ignore[type-arg]
    return Event(
        source="tracking",
        dedupe_key=uuid.uuid4().hex,
        event_type=kind,
        occurred_at=clock.utc_now(),
        task_id=task_id,
        subtask_id=subtask_id,
        match_status=match_status,
        details=details,
        raw={},
    )


async def _reports_equal_their_rows(dkit, task_id: int, *, open_hits: int, click_hits: int) -> None:  # type: ignore[no-untyped-def]
    """The breakdowns read from counters on PostgreSQL (migration 0007) equal the same breakdowns aggregated from
    the rows: per template, per service, per quarter hour, and the attempts per service."""
    sent = await dkit.count(task_id, "sent")
    async with dkit.sessionmaker() as session:
        served = await facts.fact_quarters(session, task_id, facts.FACTS)
        counted = await facts.from_rows(session, task_id, list(facts.FACTS))
        assert {f: sorted(q) for f, q in served.items()} == {f: sorted(q) for f, q in counted.items()}
        assert sum(n for _, n in served["open_hits"]) == open_hits, "machine hits and unmatched events never count"
        assert sum(n for _, n in served["click_hits"]) == click_hits
        assert sum(n for _, n in served["sent"]) == sent
        for split in task_stats_module.SPLITS:
            by_counters = await task_stats_module.stat_groups(session, task_id, by=split)
            by_rows = await task_stats_module._row_groups(session, task_id, split)
            assert {k: _assemble(g) for k, g in by_counters.items()} == {k: _assemble(g) for k, g in by_rows.items()}
        attempts = await session.execute(
            select(SendAttempt.service_id, SendAttempt.outcome, func.count(), func.sum(SendAttempt.duration_ms))
            .join(SubTask, SubTask.id == SendAttempt.subtask_id)
            .where(SubTask.task_id == task_id)
            .group_by(SendAttempt.service_id, SendAttempt.outcome)
        )
        expected = sorted((sid, outcome, n, int(ms or 0)) for sid, outcome, n, ms in attempts)
        served_attempts = await reports.attempts_by_service(session, task_id)
        assert sorted((sid or None, o, int(n), int(ms or 0)) for sid, o, n, ms, _ in served_attempts) == expected
        assert expected, "the task made attempts"


async def _sent_at_least(dkit, task_id: int, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await dkit.count(task_id, "sent") >= n


async def test_concurrent_writers_never_wait_on_each_others_counters(dkit):  # type: ignore[no-untyped-def]
    if dkit.is_sqlite:
        pytest.skip("SQLite serializes writers; the counters are a PostgreSQL trigger")
    _, task_id = await _task(dkit, 20)
    async with dkit.sessionmaker() as session:
        ids = list(await session.scalars(select(SubTask.id).where(SubTask.task_id == task_id).order_by(SubTask.id)))

    # Transaction A moves a row into `cancelled` and stays open. B makes the same group change on another
    # row: with one shared counter row it would wait for A's lock; with per-backend stripes it commits.
    async with dkit.sessionmaker() as a:
        await a.execute(update(SubTask).where(SubTask.id == ids[0]).values(send_state="cancelled"))

        async def other_writer() -> None:
            async with unit_of_work(dkit.sessionmaker) as b:
                await b.execute(update(SubTask).where(SubTask.id == ids[1]).values(send_state="cancelled"))

        await asyncio.wait_for(other_writer(), timeout=5)
        await a.commit()

    # Many writers at once, then a fold running among them: the result is still the recount.
    async def writer(chunk: list[int]) -> None:
        for sub_id in chunk:
            async with unit_of_work(dkit.sessionmaker) as session:
                await session.execute(
                    update(SubTask).where(SubTask.id == sub_id).values(send_state="sent", attempts=1, open_count=1)
                )

    async def folder() -> None:
        for _ in range(5):
            async with unit_of_work(dkit.sessionmaker) as session:
                await task_stats_module.fold_counter_stripes(session)
            await asyncio.sleep(0.01)

    chunks = [ids[2 + i :: 4] for i in range(4)]
    await asyncio.gather(*(writer(c) for c in chunks), folder())
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["cancelled"], stats["queued"], stats["opens"]) == (18, 2, 0, 18)
    async with dkit.sessionmaker() as session:
        total = await session.scalar(select(func.sum(TaskStatCounter.n)).where(TaskStatCounter.task_id == task_id))
    assert total == 20
