"""Pause, resume and cancel while a worker sends (docs/states.md#task-transitions, docs/tasks.md#generation): nothing is
allocated after a pause or cancel commits, in-flight attempts finish and are recorded, every recipient is sent at most
once, and the credit ledger always explains the balance (one refund for what was never sent)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select, update

from edm import clock
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.dispatch.queue import recording, selection
from edm.models.tasks import SendAttempt, SubTask, Task, TaskStatusChange
from edm.models.users import QuotaLedgerEntry
from edm.providers.base import Outcome, SendResult
from edm.providers.fake import FakeAdapter
from edm.system.runtime_settings import Policy
from edm.tasks import lifecycle, sweep
from tests import factories

INITIAL_CREDIT = 1_000
SLOW = {"name": "slow", "options": {"latency_ms": 50}, "max_concurrency": 2}


async def _scenario(dkit, *, recipients: int, service: dict[str, Any]) -> tuple[factories.World, int]:  # type: ignore[no-untyped-def]
    w = await factories.world(
        dkit.sessionmaker, dkit.settings, recipients=recipients, services_=[service], credit=INITIAL_CREDIT
    )
    async with unit_of_work(dkit.sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    return w, task_id


async def _at_least(dkit, task_id: int, state: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await dkit.count(task_id, state) >= n


async def _last_allocated_at(dkit, task_id: int) -> Any:  # type: ignore[no-untyped-def]
    return await dkit.scalar(select(func.max(SubTask.allocated_at)).where(SubTask.task_id == task_id))


async def test_pause_stops_allocation_and_resume_completes(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _scenario(dkit, recipients=60, service=SLOW)
    service_id = w.service_ids[0]

    async with dkit.worker(concurrency=2):
        await dkit.wait_for(lambda: _at_least(dkit, task_id, "sent", 10), what="10 sent")
        paused_at = await dkit.act(task_id, "pause")
        assert await dkit.status(task_id) == "paused"

        # In-flight attempts finish and are recorded; nothing new is allocated.
        await dkit.wait_for(lambda: _none_allocated(dkit, task_id), what="in-flight attempts recorded")
        sent_when_stopped = await dkit.count(task_id, "sent")
        for _ in range(4):
            await dkit.hold(0.15)
            assert await dkit.count(task_id, "sent") == sent_when_stopped
            assert await dkit.count(task_id, "allocated") == 0
        assert 10 <= sent_when_stopped < 60
        assert await _last_allocated_at(dkit, task_id) <= paused_at
        assert await dkit.count(task_id, "pending") == 60 - sent_when_stopped
        stats = await dkit.stats(task_id)
        assert (stats["sent"], stats["queued"], stats["in_flight"]) == (sent_when_stopped, 60 - sent_when_stopped, 0)

        await dkit.act(task_id, "resume")
        assert await dkit.status(task_id) in ("sending", "completed")
        await dkit.wait_for(lambda: _status_is(dkit, task_id, "completed"), timeout=10, what="completed")

    subtasks = await dkit.subtasks(task_id)
    assert all(s.send_state == "sent" and s.attempts == 1 for s in subtasks)
    later = [s for s in subtasks if s.allocated_at > paused_at]
    assert len(later) == 60 - sent_when_stopped, "the rest was allocated only after the resume"
    delivered = FakeAdapter.delivered_keys(service_id)
    assert len(delivered) == len(set(delivered)) == 60
    assert sorted(delivered) == sorted(str(s.public_id) for s in subtasks)
    history = await dkit.rows(
        select(TaskStatusChange.from_status, TaskStatusChange.to_status)
        .where(TaskStatusChange.task_id == task_id)
        .order_by(TaskStatusChange.id)
    )
    assert [tuple(h) for h in history][-3:] == [("sending", "paused"), ("paused", "sending"), ("sending", "completed")]
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT - 60,) * 2
    assert await dkit.ledger(w.user_id, "refund") == []
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["progress"]) == (60, 1.0)


async def test_cancel_cancels_pending_at_once_and_refunds_once(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _scenario(dkit, recipients=60, service=SLOW)
    service_id = w.service_ids[0]

    async with dkit.worker(concurrency=2):
        await dkit.wait_for(lambda: _at_least(dkit, task_id, "sent", 10), what="10 sent")
        cancelled_at = await dkit.act(task_id, "cancel")
        assert await dkit.status(task_id) == "cancelled"
        assert await dkit.count(task_id, "pending") == 0, "pending SubTasks are cancelled at once"
        assert await dkit.count(task_id, "cancelled") > 0
        await _no_refund_while_allocated(dkit, task_id)
        await dkit.wait_for(lambda: _settled(dkit, task_id), what="in-flight finished and refund written")
        await dkit.hold(0.5)  # more finalize/settle cycles: still exactly one refund

    subtasks = await dkit.subtasks(task_id)
    states = {s: sum(x.send_state == s for x in subtasks) for s in ("sent", "cancelled", "failed", "uncertain")}
    assert states["sent"] + states["cancelled"] == 60 and states["failed"] == states["uncertain"] == 0
    assert await _last_allocated_at(dkit, task_id) <= cancelled_at
    refunds = await dkit.ledger(w.user_id, "refund")
    assert [(r.amount, r.task_id) for r in refunds] == [(states["cancelled"], task_id)]
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT - states["sent"],) * 2
    delivered = FakeAdapter.delivered_keys(service_id)
    assert len(delivered) == len(set(delivered)) == states["sent"]
    assert sorted(delivered) == sorted(str(s.public_id) for s in subtasks if s.send_state == "sent")
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["cancelled"], stats["progress"]) == (states["sent"], states["cancelled"], 1.0)


async def test_a_large_cancel_stops_and_refunds_at_once_and_the_sweep_cancels_the_rows(dkit, monkeypatch):  # type: ignore[no-untyped-def]
    """Above `sweep.INLINE_ROWS` pending SubTasks the cancel request stops the task and refunds it, but leaves the
    rows to the worker's sweep (docs/tasks.md#large-tasks): no claim takes them meanwhile, the sweep cancels them a
    batch per transaction, and the refund written at cancel time stays the only one."""
    monkeypatch.setattr(sweep, "INLINE_ROWS", 5)
    monkeypatch.setattr(sweep, "BATCH", 7)
    w, task_id = await _scenario(dkit, recipients=30, service={"name": "esp", "max_concurrency": 10})
    await dkit.generate(task_id)
    async with unit_of_work(dkit.sessionmaker) as session:
        claim = await queue.claim(session, service_id=w.service_ids[0], worker_id="w", now=clock.utc_now(), max_items=4)
    assert claim is not None and len(claim.items) == 4
    now = clock.utc_now()
    outcomes = [queue.ItemOutcome(i, SendResult(f"<{i.public_id}>", Outcome.ACCEPTED), now) for i in claim.items]
    async with unit_of_work(dkit.sessionmaker) as session:
        await queue.record(session, claim=claim, outcomes=outcomes, now=now, policy=Policy())

    await dkit.act(task_id, "cancel")
    assert await dkit.status(task_id) == "cancelled" and (await dkit.task(task_id)).settled_at is not None
    assert await dkit.count(task_id, "pending") == 26, "left to the sweep"
    assert [r.amount for r in await dkit.ledger(w.user_id, "refund")] == [26], "refunded at once"
    async with unit_of_work(dkit.sessionmaker) as session:
        nothing = await queue.claim(session, service_id=w.service_ids[0], worker_id="w", now=clock.utc_now())
    assert nothing is None or not nothing.items, "a stopped task is never claimed"

    # One batch by hand, then a row it passed becomes pending again (a claim of the task given back as the cancel
    # committed): the sweep's next pass, from the start, still finds it.
    async with unit_of_work(dkit.sessionmaker) as session:
        stopped = await sweep.next_stopped_with_pending(session)
        assert stopped is not None and stopped.id == task_id
        step = await sweep.cancel_batch(session, stopped)
    assert step.subtasks == 7 and step.after is not None
    async with unit_of_work(dkit.sessionmaker) as session:
        await session.execute(
            update(SubTask)
            .where(SubTask.task_id == task_id, SubTask.recipient_email <= step.after, SubTask.send_state == "cancelled")
            .values(send_state="pending")
        )
    drained = await sweep.drain(dkit.sessionmaker, should_stop=lambda: False)
    assert (drained.cancelled, drained.deleted) == (26, 0)
    assert (await dkit.count(task_id, "pending"), await dkit.count(task_id, "cancelled")) == (0, 26)
    async with unit_of_work(dkit.sessionmaker) as session:
        await lifecycle.settle_stopped(session, now=clock.utc_now())
    assert [r.amount for r in await dkit.ledger(w.user_id, "refund")] == [26], "still one refund"
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT - 4,) * 2
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["cancelled"], stats["progress"]) == (4, 26, 1.0)


async def test_deferred_outcome_after_cancel_ends_cancelled(dkit):  # type: ignore[no-untyped-def]
    w, task_id = await _scenario(
        dkit,
        recipients=20,
        service={"name": "flaky", "options": {"transient_pct": 100, "latency_ms": 800}, "max_concurrency": 2},
    )

    async with dkit.worker(concurrency=2):
        await dkit.wait_for(lambda: _at_least(dkit, task_id, "allocated", 1), what="attempts in flight")
        cancelled_at = await dkit.act(task_id, "cancel")
        await _no_refund_while_allocated(dkit, task_id)
        await dkit.wait_for(lambda: _settled(dkit, task_id), what="in-flight finished and refund written")
        await dkit.hold(0.3)

    subtasks = await dkit.subtasks(task_id)
    assert {s.send_state for s in subtasks} == {"cancelled"}
    late = await dkit.rows(
        select(SendAttempt.subtask_id, SendAttempt.outcome)
        .join(SubTask, SubTask.id == SendAttempt.subtask_id)
        .where(SubTask.task_id == task_id, SendAttempt.finished_at > cancelled_at)
    )
    assert late, "an attempt was in flight at cancel time and recorded after it"
    by_id = {s.id: s for s in subtasks}
    for subtask_id, outcome in late:
        s = by_id[subtask_id]
        assert outcome == "transient"
        assert (s.send_state, s.last_error_class, s.retryable_failures) == ("cancelled", "transient", 1)
    refunds = await dkit.ledger(w.user_id, "refund")
    assert [r.amount for r in refunds] == [20]
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT,) * 2
    stats = await dkit.stats(task_id)
    assert (stats["cancelled"], stats["sent"], stats["failed"]) == (20, 0, 0)


async def _none_allocated(dkit, task_id: int) -> bool:  # type: ignore[no-untyped-def]
    return await dkit.count(task_id, "allocated") == 0


async def _status_is(dkit, task_id: int, status: str) -> bool:  # type: ignore[no-untyped-def]
    return await dkit.status(task_id) == status


async def _settled(dkit, task_id: int) -> bool:  # type: ignore[no-untyped-def]
    task = await dkit.task(task_id)
    return task.settled_at is not None and await dkit.count(task_id, "allocated") == 0


async def _no_refund_while_allocated(dkit, task_id: int) -> None:  # type: ignore[no-untyped-def]
    """Read both in one snapshot: while a SubTask is allocated, no refund has been written."""
    async with dkit.sessionmaker() as session:
        allocated = await session.scalar(
            select(func.count()).where(SubTask.task_id == task_id, SubTask.send_state == "allocated")
        )
        refunds = await session.scalar(
            select(func.count()).where(QuotaLedgerEntry.task_id == task_id, QuotaLedgerEntry.kind == "refund")
        )
        settled = await session.scalar(select(Task.settled_at).where(Task.id == task_id))
    if allocated:
        assert refunds == 0 and settled is None


# ---- races (PostgreSQL): a user action commits while a claim or an outcome transaction is open ----------
# On SQLite every transaction is BEGIN IMMEDIATE (one writer at a time), so these interleavings cannot happen
# there. On PostgreSQL they can: the user action is started, in its own transaction, at the exact point where
# a real concurrent commit could land. If the code under test holds a lock that makes the action wait, the
# action simply commits after the transaction it raced with (that is a correct outcome too).


async def _start_concurrently(action: Any) -> asyncio.Task[Any]:
    """Start `action` and give it up to 1 s to commit; it may instead be blocked by a lock we hold."""
    task = asyncio.create_task(action())
    await asyncio.wait({task}, timeout=1.0)
    return task


async def test_pause_committed_during_a_claim_wins(dkit, monkeypatch):  # type: ignore[no-untyped-def]
    """No SubTask is allocated after the pause commits (docs/states.md#task-transitions). Regression: the claim read
    the task's status without a lock and never re-checked it, so a pause committing inside the claim lost."""
    if dkit.is_sqlite:
        pytest.skip("SQLite serializes writers: a pause cannot commit inside a claim transaction")
    w, task_id = await _scenario(dkit, recipients=5, service={"name": "a"})
    assert (await dkit.generate(task_id)).sendable == 5
    original = selection.candidate_tasks
    pauses: list[asyncio.Task[Any]] = []

    async def candidates_then_a_user_pauses(*args, **kwargs):  # type: ignore[no-untyped-def]
        candidates = await original(*args, **kwargs)
        if not pauses:  # the claim has read the task as running; now a user pauses it
            pauses.append(await _start_concurrently(lambda: dkit.act(task_id, "pause")))
        return candidates

    monkeypatch.setattr(selection, "candidate_tasks", candidates_then_a_user_pauses)
    async with unit_of_work(dkit.sessionmaker) as session:
        claim = await queue.claim(session, service_id=w.service_ids[0], worker_id="w1", now=clock.utc_now())
        pause_committed_first = pauses[0].done()
    await pauses[0]
    assert await dkit.status(task_id) == "paused"
    allocated = await dkit.count(task_id, "allocated")
    assert allocated == (len(claim.items) if claim else 0)
    assert not (pause_committed_first and allocated), (
        f"{allocated} SubTasks were allocated by a claim that committed after the pause"
    )


async def test_cancel_committed_while_outcomes_are_recorded(dkit, monkeypatch):  # type: ignore[no-untyped-def]
    """A deferred outcome of a cancelled task ends `cancelled` and is refunded (docs/states.md). Regression: the
    outcome transaction read the task status without locking the task row, so a cancel committing inside it
    left the deferred SubTasks `pending` in a cancelled task forever, never refunded."""
    if dkit.is_sqlite:
        pytest.skip("SQLite serializes writers: a cancel cannot commit inside an outcome transaction")
    w, task_id = await _scenario(dkit, recipients=3, service={"name": "a"})
    assert (await dkit.generate(task_id)).sendable == 3
    async with unit_of_work(dkit.sessionmaker) as session:
        claim = await queue.claim(session, service_id=w.service_ids[0], worker_id="w1", now=clock.utc_now())
    assert claim is not None and len(claim.items) == 3
    now = clock.utc_now()
    outcomes = [
        queue.ItemOutcome(
            i, SendResult(str(i.public_id), Outcome.TRANSIENT, status=503, message="service unavailable"), now
        )
        for i in claim.items
    ]
    original = recording._write_subtasks
    cancels: list[asyncio.Task[Any]] = []

    async def write_while_a_user_cancels(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not cancels:  # outcomes decided from the task status read; now a user cancels the task
            cancels.append(await _start_concurrently(lambda: dkit.act(task_id, "cancel")))
        return await original(*args, **kwargs)

    monkeypatch.setattr(recording, "_write_subtasks", write_while_a_user_cancels)
    async with unit_of_work(dkit.sessionmaker) as session:
        await queue.record(session, claim=claim, outcomes=outcomes, now=clock.utc_now(), policy=Policy())
    await cancels[0]
    async with unit_of_work(dkit.sessionmaker) as session:
        await lifecycle.settle_stopped(session, now=clock.utc_now())
    assert await dkit.status(task_id) == "cancelled"
    states = sorted(s.send_state for s in await dkit.subtasks(task_id))
    assert states == ["cancelled"] * 3, f"SubTasks of a cancelled task: {states}"
    assert [r.amount for r in await dkit.ledger(w.user_id, "refund")] == [3]
    assert await dkit.credit(w.user_id) == (INITIAL_CREDIT,) * 2
    await dkit.stats(task_id)
