"""Fairness between users on one shared service (docs/sending.md#fairness): two users with one task each receive n ± 1
of any 2n consecutive sends."""

from __future__ import annotations

from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.email_services import service as services
from edm.models.tasks import SendAttempt, SubTask
from edm.providers.fake import FakeAdapter
from tests import factories

RECIPIENTS = 40


async def test_two_users_on_one_service_alternate(dkit):  # type: ignore[no-untyped-def]
    alice = await factories.world(
        dkit.sessionmaker,
        dkit.settings,
        recipients=RECIPIENTS,
        name="alice",
        services_=[{"name": "shared", "max_concurrency": 1, "batch_size": 1, "sending_interval_seconds": 0}],
    )
    service_id = alice.service_ids[0]
    bob = await factories.world(dkit.sessionmaker, dkit.settings, recipients=RECIPIENTS, name="bob")
    async with unit_of_work(dkit.sessionmaker) as session:
        await services.map_user(session, user_id=bob.user_id, service_id=service_id)
        task_ids = {
            w.user_id: await factories.task(
                session,
                w.user_id,
                sender_id=w.sender_id,
                template_ids=[w.template_id],
                rule={"type": "all_contacts"},
                name=f"task of {w.user_id}",
            )
            for w in (alice, bob)
        }
    # Both tasks are generated before any worker runs, so both users have claimable work from the start.
    for task_id in task_ids.values():
        assert (await dkit.generate(task_id)).sendable == RECIPIENTS

    async def all_sent() -> bool:
        return all([await dkit.count(t, "sent") == RECIPIENTS for t in task_ids.values()])

    async with dkit.worker(concurrency=1):
        await dkit.wait_for(all_sent, timeout=20, what="both tasks sent")
        for task_id in task_ids.values():
            await dkit.wait_for(lambda t=task_id: _completed(dkit, t), what="finalized")

    rows = await dkit.rows(
        select(SendAttempt.id, SendAttempt.outcome, SendAttempt.service_id, SubTask.user_id)
        .join(SubTask, SubTask.id == SendAttempt.subtask_id)
        .order_by(SendAttempt.id)
    )
    assert len(rows) == 2 * RECIPIENTS
    assert {r.outcome for r in rows} == {"accepted"} and {r.service_id for r in rows} == {service_id}
    users = [r.user_id for r in rows]
    for n in range(1, 11):
        for start in range(0, len(users) - 2 * n + 1):
            window = users[start : start + 2 * n]
            for user_id in (alice.user_id, bob.user_id):
                assert abs(window.count(user_id) - n) <= 1, (
                    f"user {user_id} got {window.count(user_id)} of sends {start}..{start + 2 * n - 1}: {window}"
                )
    # Every claim took one SubTask (max_concurrency 1, batch 1): the attempts are strictly alternating.
    assert all(a != b for a, b in zip(users, users[1:], strict=False))

    delivered = FakeAdapter.delivered_keys(service_id)
    assert len(delivered) == len(set(delivered)) == 2 * RECIPIENTS
    for task_id in task_ids.values():
        stats = await dkit.stats(task_id)
        assert stats["sent"] == RECIPIENTS and stats["progress"] == 1.0


async def _completed(dkit, task_id: int) -> bool:  # type: ignore[no-untyped-def]
    return await dkit.status(task_id) == "completed"
