"""Crash recovery (docs/sending.md#crashes-and-uncertain-sends): a worker that claimed and died leaves leases that
expire. The reclaimer makes them `uncertain` (never blindly resent) unless the provider honours our idempotency key
within its window, in which case they are resent with the same key and Message-ID. Uncertain rows are abandoned after
7 days so the task terminates."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from edm import clock
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.email_services import ServiceDayUsage
from edm.models.tasks import SendAttempt
from edm.providers.fake import FakeAdapter
from edm.system.runtime_settings import RuntimeSettings
from edm.tasks import lifecycle
from tests import factories

T0 = dt.datetime(2025, 6, 1, 10, 0, tzinfo=dt.UTC)
CREDIT = 1_000
RECIPIENTS = 10


async def _dead_claim(dkit) -> tuple[factories.World, int, queue.Claim]:  # type: ignore[no-untyped-def]
    """A task generated at T0 and a claim of 4 SubTasks by a worker that then dies (never records)."""
    clock.freeze(T0)
    w = await factories.world(
        dkit.sessionmaker,
        dkit.settings,
        recipients=RECIPIENTS,
        credit=CREDIT,
        services_=[{"name": "a", "max_concurrency": 4}],
    )
    async with unit_of_work(dkit.sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    assert (await dkit.generate(task_id)).sendable == RECIPIENTS
    async with unit_of_work(dkit.sessionmaker) as session:
        claim = await queue.claim(session, service_id=w.service_ids[0], worker_id="dead", now=clock.utc_now())
    assert claim is not None and len(claim.items) == 4
    rows = [s for s in await dkit.subtasks(task_id) if s.send_state == "allocated"]
    assert {(s.lease_owner, s.service_id, s.attempts) for s in rows} == {("dead", w.service_ids[0], 1)}
    # request timeout 30 s + 4 × interval 0 + 60 s grace
    assert {s.lease_expires_at for s in rows} == {T0 + dt.timedelta(seconds=90)}
    assert await dkit.status(task_id) == "sending"
    return w, task_id, claim


async def _reclaim(dkit, lookup) -> dict[str, int]:  # type: ignore[no-untyped-def]
    async with unit_of_work(dkit.sessionmaker) as session:
        return dict(await queue.reclaim_expired(session, now=clock.utc_now(), idempotency=lookup))


async def test_expired_lease_without_idempotency_becomes_uncertain_and_is_never_resent(dkit):  # type: ignore[no-untyped-def]
    w, task_id, claim = await _dead_claim(dkit)
    service_id = w.service_ids[0]
    dead_ids = {i.subtask_id for i in claim.items}

    clock.freeze(T0 + dt.timedelta(seconds=89))
    assert await _reclaim(dkit, lambda sid: (False, 0)) == {"pending": 0, "uncertain": 0}, "lease still valid"
    clock.freeze(T0 + dt.timedelta(minutes=2))
    assert await _reclaim(dkit, lambda sid: (False, 0)) == {"pending": 0, "uncertain": 4}
    assert await _reclaim(dkit, lambda sid: (False, 0)) == {"pending": 0, "uncertain": 0}, "idempotent"

    uncertain = [s for s in await dkit.subtasks(task_id) if s.id in dead_ids]
    assert {(s.send_state, s.lease_owner, s.lease_expires_at, s.service_id, s.last_error_class) for s in uncertain} == {
        ("uncertain", None, None, service_id, "uncertain")
    }
    attempts = await dkit.rows(
        select(SendAttempt.subtask_id, SendAttempt.outcome, SendAttempt.attempt_no).where(
            SendAttempt.subtask_id.in_(dead_ids)
        )
    )
    assert sorted(tuple(a) for a in attempts) == sorted((i, "uncertain", 1) for i in dead_ids)
    assert await _usage(dkit, service_id) == [(T0.date(), 0, 4)]

    async with dkit.worker(concurrency=2):

        async def others_sent() -> bool:
            return (
                await dkit.count(task_id, "sent") == RECIPIENTS - 4
                and await dkit.count(task_id, "allocated", "pending") == 0
            )

        await dkit.wait_for(others_sent, what="the other recipients sent")

        async def waiting_for_decision() -> bool:
            return (await dkit.task(task_id)).waiting_reason == "uncertain_decision"

        await dkit.wait_for(waiting_for_decision, timeout=8, what="waiting_reason uncertain_decision")
        await dkit.hold(0.3)
        assert await dkit.count(task_id, "uncertain") == 4, "uncertain rows are not resent"
        assert await dkit.status(task_id) == "sending", "an uncertain SubTask keeps the task open"

    delivered = FakeAdapter.delivered_keys(service_id)
    assert len(delivered) == len(set(delivered)) == RECIPIENTS - 4
    assert not {str(i.public_id) for i in claim.items} & set(delivered)
    assert await _usage(dkit, service_id) == [(T0.date(), RECIPIENTS - 4, 4)]

    # Untouched for 7 days: abandoned as failed, and the task completes (no refund: may have been sent).
    clock.freeze(T0 + dt.timedelta(days=7, minutes=1))
    async with unit_of_work(dkit.sessionmaker) as session:
        assert await lifecycle.abandon_stale_uncertain(session, now=clock.utc_now(), runtime=RuntimeSettings()) == 4
    abandoned = [s for s in await dkit.subtasks(task_id) if s.id in dead_ids]
    assert {(s.send_state, s.last_error_code, s.failed_at) for s in abandoned} == {
        ("failed", "uncertain_abandoned", clock.utc_now())
    }
    async with unit_of_work(dkit.sessionmaker) as session:
        assert await lifecycle.finalize(session, now=clock.utc_now()) == [task_id]
    task = await dkit.task(task_id)
    assert (task.status, task.completed_at) == ("completed", clock.utc_now())
    assert await dkit.ledger(w.user_id, "refund") == []
    assert await dkit.credit(w.user_id) == (CREDIT - RECIPIENTS,) * 2
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["failed"], stats["uncertain"], stats["failed_by_class"], stats["progress"]) == (
        RECIPIENTS - 4,
        4,
        0,
        {"uncertain": 4},
        1.0,
    )


async def test_expired_lease_with_idempotency_is_resent_with_the_same_key(dkit):  # type: ignore[no-untyped-def]
    w, task_id, claim = await _dead_claim(dkit)
    service_id = w.service_ids[0]
    dead = {i.subtask_id: i.public_id for i in claim.items}

    clock.freeze(T0 + dt.timedelta(minutes=2))
    assert await _reclaim(dkit, lambda sid: (True, 3600)) == {"pending": 4, "uncertain": 0}
    reclaimed = [s for s in await dkit.subtasks(task_id) if s.id in dead]
    assert {(s.send_state, s.service_id, s.lease_owner, s.next_attempt_at) for s in reclaimed} == {
        ("pending", None, None, clock.utc_now())
    }
    assert await _usage(dkit, service_id) == []

    async with dkit.worker(concurrency=2):
        await dkit.wait_for(lambda: _status_is(dkit, task_id, "completed"), what="completed")

    subtasks = {s.id: s for s in await dkit.subtasks(task_id)}
    assert all(s.send_state == "sent" for s in subtasks.values())
    for subtask_id, public_id in dead.items():
        s = subtasks[subtask_id]
        assert s.public_id == public_id
        assert s.message_id == f"<{public_id}@a.example.com>"
        assert s.attempts == 2
        history = await dkit.rows(
            select(SendAttempt.attempt_no, SendAttempt.outcome, SendAttempt.service_id)
            .where(SendAttempt.subtask_id == subtask_id)
            .order_by(SendAttempt.id)
        )
        assert [tuple(h) for h in history] == [(1, "released", service_id), (2, "accepted", service_id)]
    delivered = FakeAdapter.delivered_keys(service_id)
    assert len(delivered) == len(set(delivered)) == RECIPIENTS
    assert {str(p) for p in dead.values()} <= set(delivered)
    assert await _usage(dkit, service_id) == [(T0.date(), RECIPIENTS, 0)]
    assert await dkit.credit(w.user_id) == (CREDIT - RECIPIENTS,) * 2
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["uncertain"], stats["progress"]) == (RECIPIENTS, 0, 1.0)


async def test_idempotency_window_passed_means_uncertain(dkit):  # type: ignore[no-untyped-def]
    w, task_id, claim = await _dead_claim(dkit)
    clock.freeze(T0 + dt.timedelta(minutes=2))
    # The provider honours keys for 60 s only; the first attempt is 120 s old: resending could duplicate.
    assert await _reclaim(dkit, lambda sid: (True, 60)) == {"pending": 0, "uncertain": 4}
    assert await dkit.count(task_id, "uncertain") == 4
    assert await _usage(dkit, w.service_ids[0]) == [(T0.date(), 0, 4)]
    await dkit.stats(task_id)


async def _usage(dkit, service_id: int) -> list[tuple[dt.date, int, int]]:  # type: ignore[no-untyped-def]
    rows = await dkit.rows(
        select(ServiceDayUsage.service_day, ServiceDayUsage.accepted, ServiceDayUsage.uncertain)
        .where(ServiceDayUsage.service_id == service_id)
        .order_by(ServiceDayUsage.service_day)
    )
    return [tuple(r) for r in rows]


async def _status_is(dkit, task_id: int, status: str) -> bool:  # type: ignore[no-untyped-def]
    return await dkit.status(task_id) == status
