"""Generation (docs/tasks.md#generation, docs/states.md#task-transitions): exactly once, all-or-nothing with one credit
reserve; the credit and no-recipient outcomes; claim-time suppression with its refund; weighted template assignment."""

from __future__ import annotations

import asyncio
from collections import Counter

from sqlalchemy import select, update

from edm import clock
from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from edm.models.suppressions import Suppression
from edm.models.tasks import SubTask, TaskTemplate
from edm.providers.fake import FakeAdapter
from edm.tasks import generation
from tests import factories

CREDIT = 1_000


async def _task(dkit, w: factories.World, **values) -> int:  # type: ignore[no-untyped-def]
    async with unit_of_work(dkit.sessionmaker) as session:
        return await factories.task(
            session,
            w.user_id,
            sender_id=w.sender_id,
            template_ids=[w.template_id],
            rule={"type": "all_contacts"},
            **values,
        )


async def _generate(dkit, task_id: int) -> generation.GenerationResult | None:  # type: ignore[no-untyped-def]
    async with unit_of_work(dkit.sessionmaker) as session:
        return await generation.generate(session, task_id, now=clock.utc_now())


async def test_concurrent_generation_creates_the_subtasks_once(dkit):  # type: ignore[no-untyped-def]
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=300, credit=CREDIT)
    task_id = await _task(dkit, w)

    results = await asyncio.gather(_generate(dkit, task_id), _generate(dkit, task_id))
    done = [r for r in results if r is not None]
    assert len(done) == 1 and results.count(None) == 1, "the second generator found the task taken or generated"
    assert (done[0].status, done[0].sendable) == ("queued", 300)
    assert await _generate(dkit, task_id) is None, "no longer scheduled"

    assert await dkit.count(task_id) == 300
    assert await dkit.count(task_id, "pending") == 300
    seqs = await dkit.rows(select(SubTask.seq).where(SubTask.task_id == task_id).order_by(SubTask.seq))
    assert [s for (s,) in seqs] == list(range(1, 301))
    reserves = await dkit.ledger(w.user_id, "reserve")
    assert [(r.amount, r.task_id) for r in reserves] == [(-300, task_id)]
    assert await dkit.credit(w.user_id) == (CREDIT - 300,) * 2
    task = await dkit.task(task_id)
    assert task.status == "queued" and task.generated_at is not None
    assert task.generation_summary["sendable"] == 300
    stats = await dkit.stats(task_id)
    assert (stats["recipients"], stats["queued"]) == (300, 300)


async def test_credit_below_sendable_pauses_without_creating_anything(dkit):  # type: ignore[no-untyped-def]
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=10, credit=10)
    task_id = await _task(dkit, w)  # schedulable: 10 sendable, balance 10
    async with unit_of_work(dkit.sessionmaker) as session:
        await factories.contacts(session, w.user_id, 5, prefix="late")  # now 15 sendable

    result = await _generate(dkit, task_id)
    assert result is not None and (result.status, result.sendable) == ("paused", 15)
    task = await dkit.task(task_id)
    assert (task.status, task.pause_reason, task.generated_at) == ("paused", "user_quota", None)
    assert "10" in task.pause_detail and "15" in task.pause_detail
    assert await dkit.count(task_id) == 0
    assert [e.kind for e in await dkit.ledger(w.user_id)] == ["grant"]
    assert await dkit.credit(w.user_id) == (10, 10)
    stats = await dkit.stats(task_id)
    assert stats["recipients"] == 0


async def test_no_sendable_recipient_completes_without_charge(dkit):  # type: ignore[no-untyped-def]
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=5, credit=CREDIT)
    task_id = await _task(dkit, w)
    async with unit_of_work(dkit.sessionmaker) as session:
        await session.execute(
            update(Contact).where(Contact.user_id == w.user_id).values(unsubscribed_at=clock.utc_now())
        )

    result = await _generate(dkit, task_id)
    assert result is not None and (result.status, result.sendable) == ("completed", 0)
    task = await dkit.task(task_id)
    assert (task.status, task.completion_note) == ("completed", "no_sendable_recipients")
    subtasks = await dkit.subtasks(task_id)
    assert len(subtasks) == 5
    assert {(s.send_state, s.suppressed_reason, s.charged, s.attempts) for s in subtasks} == {
        ("suppressed", "unsubscribed", False, 0)
    }
    assert [e.kind for e in await dkit.ledger(w.user_id)] == ["grant"]
    assert await dkit.credit(w.user_id) == (CREDIT, CREDIT)
    stats = await dkit.stats(task_id)
    assert (stats["excluded"], stats["excluded_by_reason"], stats["suppressed_later"], stats["progress"]) == (
        5,
        {"unsubscribed": 5},
        0,
        1.0,
    )


async def test_claim_time_suppression_is_refunded_at_completion(dkit):  # type: ignore[no-untyped-def]
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=8, credit=CREDIT, services_=[{"name": "a"}])
    task_id = await _task(dkit, w)
    assert (await _generate(dkit, task_id)).sendable == 8
    victim = (await dkit.subtasks(task_id))[3]
    async with unit_of_work(dkit.sessionmaker) as session:
        session.add(
            Suppression(
                scope="global", user_id=None, owner_key=0, kind="address", value=victim.recipient_email, reason="manual"
            )
        )

    async with dkit.worker(concurrency=2):
        await dkit.wait_for(lambda: _status_is(dkit, task_id, "completed"), what="completed")

    subtasks = {s.id: s for s in await dkit.subtasks(task_id)}
    suppressed = subtasks.pop(victim.id)
    assert (suppressed.send_state, suppressed.suppressed_reason, suppressed.charged, suppressed.attempts) == (
        "suppressed",
        "suppression_list",
        True,
        0,
    )
    assert all(s.send_state == "sent" for s in subtasks.values())
    assert str(victim.public_id) not in FakeAdapter.delivered_keys(w.service_ids[0])
    refunds = await dkit.ledger(w.user_id, "refund")
    assert [(r.amount, r.task_id) for r in refunds] == [(1, task_id)]
    assert await dkit.credit(w.user_id) == (CREDIT - 7, CREDIT - 7)
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["suppressed_later"], stats["excluded"], stats["progress"]) == (7, 1, 0, 1.0)


async def test_weighted_templates_split_within_one_and_deterministically(dkit):  # type: ignore[no-untyped-def]
    n = 10_000
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=n, credit=2 * n)
    async with unit_of_work(dkit.sessionmaker) as session:
        second = await factories.template(session, w.user_id, "t2")
        task_id = await factories.task(
            session,
            w.user_id,
            sender_id=w.sender_id,
            template_ids=[w.template_id, second],
            rule={"type": "all_contacts"},
            weights=[1, 3],
        )

    # First generation, rolled back: the same task generated again must assign the same templates.
    async with dkit.sessionmaker() as session:
        assert (await generation.generate(session, task_id, now=clock.utc_now())).sendable == n
        first = await _assignment(session, task_id)
        await session.rollback()
    assert await dkit.count(task_id) == 0
    assert await dkit.status(task_id) == "scheduled"

    async with unit_of_work(dkit.sessionmaker) as session:
        assert (await generation.generate(session, task_id, now=clock.utc_now())).sendable == n
    async with dkit.sessionmaker() as session:
        again = await _assignment(session, task_id)

    assert len(first) == n
    counts = Counter(first.values())
    assert abs(counts["t1"] - n / 4) <= 1 and abs(counts["t2"] - 3 * n / 4) <= 1, counts
    assert again == first
    # The order is a keyed hash, not contact creation order.
    seq_by_contact = await dkit.rows(
        select(SubTask.contact_id, SubTask.seq).where(SubTask.task_id == task_id).order_by(SubTask.contact_id)
    )
    seqs = [seq for _, seq in seq_by_contact]
    assert seqs != sorted(seqs)
    assert [r.amount for r in await dkit.ledger(w.user_id, "reserve")] == [-n]
    await dkit.stats(task_id)


async def _assignment(session, task_id: int) -> dict[int, str]:  # type: ignore[no-untyped-def]
    rows = await session.execute(
        select(SubTask.contact_id, TaskTemplate.name)
        .join(TaskTemplate, TaskTemplate.id == SubTask.task_template_id)
        .where(SubTask.task_id == task_id)
    )
    return dict(rows.all())


async def _status_is(dkit, task_id: int, status: str) -> bool:  # type: ignore[no-untyped-def]
    return await dkit.status(task_id) == status
