"""Webhooks end to end through the ASGI app: a task really sent through the fake provider, its events posted
back as SendGrid and Mailgun post them, stored once, applied by the `events` job's code (docs/events.md)."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import orjson
from sqlalchemy import select

from edm.models.email_services import ServiceDayUsage
from edm.models.events import MatchReason, MatchStatus
from edm.models.tasks import SubTask
from edm.tasks.stats import recount, task_stats
from tests.integration.events.conftest import EventKit, mailgun_body, sendgrid_headers


def sg_event(subtask: SubTask, event: str, n: int, **extra: Any) -> dict[str, Any]:
    """One SendGrid event for a SubTask, our ids flattened at the top level as SendGrid does."""
    return {
        "email": subtask.recipient_email,
        "timestamp": 1_700_000_000 + n,
        "event": event,
        "sg_event_id": f"evt-{subtask.id}-{event}-{n}",
        "sg_message_id": f"msg{subtask.id}.filter0001",
        "subtask_id": str(subtask.public_id),
        "task_id": str(subtask.task_id),
        **extra,
    }


async def post_sendgrid(ekit: EventKit, events: list[dict[str, Any]], path: str = "/webhooks/sendgrid") -> Any:
    body = orjson.dumps(events)
    return await ekit.client.post(path, content=body, headers=sendgrid_headers(body))


async def stats_of(ekit: EventKit, task_id: int) -> dict[str, Any]:
    async with ekit.sessionmaker() as session:
        stats = await task_stats(session, task_id)
        assert stats == await recount(session, task_id)
        return stats


async def test_sendgrid_batch_with_duplicates_and_shuffled_order_applies_once(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(40)
    events: list[dict[str, Any]] = []
    for i, st in enumerate(subtasks[:30]):
        events.append(sg_event(st, "processed", i))
        events.append(sg_event(st, "delivered", i + 1))
    for i, st in enumerate(subtasks[30:35]):  # bounced
        events.append(sg_event(st, "bounce", i, type="bounce", reason="550 5.1.1 no such user", status="5.1.1"))
    for st in subtasks[35:40]:  # deferred, then delivered (the deferral arrives last)
        events.append(sg_event(st, "delivered", 50))
        events.append(sg_event(st, "deferred", 10, response="451 try later"))
    events += events[:25]  # SendGrid redelivers: duplicates in the same batch
    assert len(events) == 100
    random.Random(7).shuffle(events)

    first = await post_sendgrid(ekit, events)
    assert first.status_code == 200, first.text
    assert first.json() == {"received": 100, "stored": 75, "duplicates": 25, "bad": 0, "queued": 0}
    counts = await ekit.apply()
    assert (counts.processed, counts.matched, counts.unmatched, counts.ignored) == (75, 75, 0, 0)

    stats = await stats_of(ekit, task_id)
    assert stats["delivered"] == 35 and stats["hard_bounced"] == 5 and stats["deferred"] == 0
    by_id = {st.id: st for st in await ekit.dkit.subtasks(task_id)}
    assert all(by_id[st.id].delivery_state == "delivered" for st in subtasks[35:40]), "a late deferral regressed"
    assert all(by_id[st.id].delivery_state == "hard_bounced" for st in subtasks[30:35])

    replay = await post_sendgrid(ekit, events)
    assert replay.json()["stored"] == 0 and replay.json()["duplicates"] == 100
    assert (await ekit.apply()).processed == 0
    assert await stats_of(ekit, task_id) == stats


async def test_an_event_for_an_unknown_subtask_is_stored_unmatched_so_the_provider_stops_retrying(
    ekit: EventKit,
) -> None:
    await ekit.send_task(2)
    ghost = {
        "email": "x@example.org",
        "timestamp": 1_700_000_000,
        "event": "delivered",
        "sg_event_id": "ghost-1",
        "subtask_id": str(uuid.uuid4()),
    }
    no_id = {"email": "y@example.org", "timestamp": 1_700_000_000, "event": "delivered", "sg_event_id": "ghost-2"}
    response = await post_sendgrid(ekit, [ghost, no_id, "not an object"])
    assert response.status_code == 200
    assert response.json() == {"received": 3, "stored": 3, "duplicates": 0, "bad": 1, "queued": 0}
    assert (await ekit.apply()).unmatched == 2
    reasons = {e.dedupe_key: (e.match_status, e.match_reason) for e in await ekit.events()}
    assert reasons["ghost-1"] == (MatchStatus.UNMATCHED, MatchReason.UNKNOWN_SUBTASK)
    assert reasons["ghost-2"] == (MatchStatus.UNMATCHED, MatchReason.NO_ID)
    bad = [e for e in await ekit.events() if e.match_reason == MatchReason.BAD_ELEMENT]
    assert len(bad) == 1 and bad[0].processing_error


async def test_a_late_event_never_changes_the_task_status(ekit: EventKit) -> None:
    """Bounces for every recipient of a completed task: the SubTasks change, the task stays completed and
    is not auto-paused (docs/sending.md#automatic-pause-on-errors: bounces arriving after completion never pause)."""
    from edm import clock
    from edm.db.session import unit_of_work
    from edm.system import runtime_settings
    from edm.tasks import lifecycle

    task_id, subtasks = await ekit.send_task(10)
    assert await ekit.task_status(task_id) == "completed"
    events = [sg_event(st, "bounce", i, type="bounce", reason="550 5.1.1") for i, st in enumerate(subtasks)]
    assert (await post_sendgrid(ekit, events)).status_code == 200
    assert (await ekit.apply()).matched == 10
    async with unit_of_work(ekit.sessionmaker) as session:
        runtime = await runtime_settings.load(session)
        paused = await lifecycle.check_thresholds(session, now=clock.utc_now(), runtime=runtime)
    assert paused == []
    assert await ekit.task_status(task_id) == "completed"
    assert (await stats_of(ekit, task_id))["hard_bounced"] == 10


async def test_states_never_regress_whatever_the_arrival_order(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(3)
    a, b, c = subtasks
    # a: complained first, then delivered and deferred; b: bounce, then delivered; c: deferred then soft bounce
    batches = [
        [sg_event(a, "spamreport", 9)],
        [sg_event(a, "delivered", 1), sg_event(a, "deferred", 0)],
        [sg_event(b, "bounce", 5, type="bounce")],
        [sg_event(b, "delivered", 2)],
        [sg_event(c, "deferred", 1)],
        [sg_event(c, "bounce", 2, type="expired")],
    ]
    for batch in batches:
        assert (await post_sendgrid(ekit, batch)).status_code == 200
        await ekit.apply()
    states = {st.id: st.delivery_state for st in await ekit.dkit.subtasks(task_id)}
    assert states == {a.id: "complained", b.id: "hard_bounced", c.id: "soft_bounced"}


async def test_an_event_turns_an_uncertain_send_into_sent_and_moves_its_usage(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(4, fake_options={"maybe_sent_pct": 100}, until_uncertain=True)
    fake_id = ekit.service_ids["fake"]
    before = await _usage(ekit, fake_id)
    assert before["uncertain"] == 4
    events = [sg_event(st, "delivered", i) for i, st in enumerate(subtasks[:3])]
    assert (await post_sendgrid(ekit, events)).status_code == 200
    counts = await ekit.apply()
    assert counts.reconciled == 3
    states = [st.send_state for st in await ekit.dkit.subtasks(task_id)]
    assert sorted(states) == ["sent", "sent", "sent", "uncertain"]
    after = await _usage(ekit, fake_id)
    assert (after["uncertain"], after["accepted"]) == (1, before["accepted"] + 3)


async def _usage(ekit: EventKit, service_id: int) -> dict[str, int]:
    async with ekit.sessionmaker() as session:
        row = await session.scalar(select(ServiceDayUsage).where(ServiceDayUsage.service_id == service_id))
        assert row is not None
        return {"accepted": row.accepted, "uncertain": row.uncertain}


async def test_in_production_an_event_of_another_provider_does_not_match(ekit: EventKit) -> None:
    """Outside production the fake stands in for every provider; in production a SendGrid event for a SubTask
    sent through another provider is `unmatched (provider_mismatch)` and changes nothing."""
    task_id, subtasks = await ekit.send_task(1)
    assert (await post_sendgrid(ekit, [sg_event(subtasks[0], "delivered", 1)])).status_code == 200
    counts = await ekit.apply(simulated_matches_any=False)
    assert counts.unmatched == 1
    event = (await ekit.events())[0]
    assert (event.match_status, event.match_reason) == (MatchStatus.UNMATCHED, MatchReason.PROVIDER_MISMATCH)
    assert (await ekit.dkit.subtasks(task_id))[0].delivery_state == "none"


async def test_provider_open_and_click_events_are_stored_but_never_counted(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1)
    st = subtasks[0]
    events = [sg_event(st, "open", 1), sg_event(st, "click", 2, url="https://example.com/")]
    assert (await post_sendgrid(ekit, events)).status_code == 200
    assert (await ekit.apply()).ignored == 2
    stats = await stats_of(ekit, task_id)
    assert stats["opens"] == 0 and stats["clicks"] == 0
    assert {e.match_reason for e in await ekit.events()} == {MatchReason.PROVIDER_TRACKING}


async def test_mailgun_token_replay_is_refused(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1)
    st = subtasks[0]
    data = {
        "event": "delivered",
        "id": "mg-1",
        "timestamp": 1_700_000_000.5,
        "recipient": st.recipient_email,
        "user-variables": {"subtask_id": str(st.public_id), "task_id": str(task_id)},
        "message": {"headers": {"message-id": "abc@mg.example.com"}},
    }
    body = mailgun_body(data, token="t" * 50)
    headers = {"Content-Type": "application/json"}
    first = await ekit.client.post("/webhooks/mailgun", content=body, headers=headers)
    assert first.status_code == 200, first.text
    replay = await ekit.client.post("/webhooks/mailgun", content=body, headers=headers)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]["message"]
    fresh = await ekit.client.post("/webhooks/mailgun", content=mailgun_body(data, token="u" * 50), headers=headers)
    assert fresh.status_code == 200 and fresh.json()["duplicates"] == 1  # same event id: stored once
    await ekit.apply()
    assert (await ekit.dkit.subtasks(task_id))[0].delivery_state == "delivered"

    # Tokens are forgotten once no signed timestamp could still carry them (the daily `retention` job, after a day).
    from edm import clock
    from edm.operations import retention
    from edm.system.runtime_settings import RuntimeSettings

    async def forget(at: dt.datetime) -> int:
        runs = await retention.run(ekit.sessionmaker, now=at, runtime=RuntimeSettings(), only=("webhook_nonces",))
        return runs[0].rows

    assert await forget(clock.utc_now() + dt.timedelta(hours=23)) == 0
    assert await forget(clock.utc_now() + dt.timedelta(days=1, seconds=1)) == 2


async def test_events_update_the_contact_as_spec_9_6_says(ekit: EventKit) -> None:
    """Hard bounce → contact hard_bounced_at (unsendable), but a policy block does not blame the address;
    complaint → complained_at; unsubscribe → unsubscribed_at; soft bounces count once per SubTask and a
    delivery resets the streak."""
    from edm.models.contacts import Contact

    task_id, subtasks = await ekit.send_task(5)
    hard, blocked, complained, unsubscribed, soft = subtasks
    events = [
        sg_event(hard, "bounce", 1, type="bounce", reason="550 5.1.1 user unknown"),
        sg_event(blocked, "bounce", 1, type="blocked", reason="554 5.7.1 blocked by policy"),
        sg_event(complained, "spamreport", 1),
        sg_event(unsubscribed, "unsubscribe", 1),
        sg_event(soft, "bounce", 1, type="expired"),
        sg_event(soft, "bounce", 2, type="expired"),
    ]
    assert (await post_sendgrid(ekit, events)).status_code == 200
    await ekit.apply()

    async def contact(st: SubTask) -> Contact:
        async with ekit.sessionmaker() as session:
            row = await session.get(Contact, st.contact_id)
            assert row is not None
            return row

    assert (await contact(hard)).hard_bounced_at is not None
    assert (await contact(blocked)).hard_bounced_at is None
    assert (await contact(complained)).complained_at is not None
    assert (await contact(unsubscribed)).unsubscribed_at is not None
    assert (await contact(soft)).soft_bounce_streak == 1, "two soft bounces of one SubTask count once"
    assert (await post_sendgrid(ekit, [sg_event(soft, "delivered", 9)])).status_code == 200
    await ekit.apply()
    assert (await contact(soft)).soft_bounce_streak == 0
    states = {st.id: st.delivery_state for st in await ekit.dkit.subtasks(task_id)}
    assert states[blocked.id] == "rejected" and states[hard.id] == "hard_bounced"
