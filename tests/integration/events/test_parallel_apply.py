"""The `events` job's loops side by side (edm.events.apply.drain, `loops`): on PostgreSQL each loop takes its own
share of the queue, and several workers' loops together still apply every stored event exactly once, with the
statistics equal to a recount of the SubTask rows and every suppression the policy asks for."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.events import apply as event_apply
from edm.models.contacts import Contact
from edm.models.events import Event
from edm.models.suppressions import Suppression
from edm.models.tasks import SubTask
from edm.worker.jobs import EVENTS_LOOPS
from tests.integration.events.conftest import EventKit
from tests.integration.events.test_webhooks import post_sendgrid, sg_event, stats_of


def mixed_events(subtasks: list[SubTask]) -> list[dict[str, Any]]:
    """Several events per SubTask (so loops meet the same rows), bounces, complaints and unsubscribes."""
    events: list[dict[str, Any]] = []
    for i, st in enumerate(subtasks):
        events.append(sg_event(st, "processed", 1))
        events.append(sg_event(st, "delivered", 2))
        if i % 5 == 0:
            events.append(sg_event(st, "bounce", 3, type="bounce", reason="550 5.1.1 no such user", status="5.1.1"))
        elif i % 7 == 0:
            events.append(sg_event(st, "spamreport", 3))
        elif i % 3 == 0:
            events.append(sg_event(st, "unsubscribe", 3))
        else:
            events.append(sg_event(st, "open", 3))
    return events


async def post_all(ekit: EventKit, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 100):
        answer = await post_sendgrid(ekit, events[start : start + 100])
        assert answer.status_code == 200, answer.text


async def test_workers_with_several_loops_apply_every_event_once(ekit: EventKit, db_url: str) -> None:
    assert EVENTS_LOOPS > 1
    task_id, subtasks = await ekit.send_task(60)
    events = mixed_events(subtasks)
    await post_all(ekit, events)
    postgres = db_url.startswith("postgresql")

    async def worker() -> event_apply.ApplyCounts:
        return await event_apply.drain(ekit.sessionmaker, simulated_matches_any=True, batch=7, loops=EVENTS_LOOPS)

    # Two workers at once on PostgreSQL (SQLite has one writer and one loop: the same call, one worker).
    results = await asyncio.gather(*(worker() for _ in range(2 if postgres else 1)))
    total = event_apply.ApplyCounts()
    for counts in results:
        total.add(counts)
    opens = sum(1 for e in events if e["event"] == "open")
    assert (total.processed, total.matched, total.ignored, total.unmatched) == (
        len(events),
        len(events) - opens,
        opens,
        0,
    )
    async with ekit.sessionmaker() as session:
        assert await session.scalar(select(func.count()).where(Event.processed_at.is_(None))) == 0
        suppressed = set(await session.scalars(select(Suppression.value)))
        unsubscribed = await session.scalar(select(func.count()).where(Contact.unsubscribed_at.is_not(None)))
    bounced = {st.recipient_email for i, st in enumerate(subtasks) if i % 5 == 0}
    complained = {st.recipient_email for i, st in enumerate(subtasks) if i % 5 and i % 7 == 0}
    unsubscribers = {st.recipient_email for i, st in enumerate(subtasks) if i % 5 and i % 7 and i % 3 == 0}
    assert suppressed == bounced | complained | unsubscribers
    assert unsubscribed == len(unsubscribers)
    stats = await stats_of(ekit, task_id)  # the counters equal a recount of the rows
    assert stats["delivered"] == 60 - len(bounced) and stats["hard_bounced"] == len(bounced)
    assert (await ekit.apply()).processed == 0


async def test_the_shares_split_the_queue_by_subtask_and_cover_it(ekit: EventKit, db_url: str) -> None:
    """On PostgreSQL share i of n takes only the events whose SubTask reference hashes to i: every event of a
    SubTask falls in the same share, and the shares together take every event. SQLite ignores the share."""
    _, subtasks = await ekit.send_task(30)
    events = mixed_events(subtasks)
    await post_all(ekit, events)
    taken: dict[int, set[str]] = {}
    for index in range(2):
        async with unit_of_work(ekit.sessionmaker) as session:
            counts = await event_apply.apply_pending(
                session, now=utc_now(), simulated_matches_any=True, limit=1000, share=(index, 2)
            )
            refs = await session.scalars(select(Event.subtask_ref).where(Event.processed_at.is_not(None)))
            taken[index] = set(refs) - set().union(*taken.values())
        if not db_url.startswith("postgresql"):
            assert counts.processed == len(events)
            return
    assert taken[0] and taken[1], "both shares had work"
    assert not taken[0] & taken[1], "a SubTask's events were split between shares"
    assert taken[0] | taken[1] == {str(st.public_id) for st in subtasks}
    async with ekit.sessionmaker() as session:
        assert await session.scalar(select(func.count()).where(Event.processed_at.is_(None))) == 0
