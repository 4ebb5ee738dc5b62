"""The automatic suppressions of SPEC §10.5, fed by events: unsubscribe → the sending user's list; hard bounce,
complaint, a provider-suppressed address and three soft bounces (across tasks) → the global list; a policy
block → nothing. The next task leaves every suppressed address out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.suppressions.models import Suppression
from edm.tasks.models import SubTask
from tests import factories
from tests.integration.events.conftest import EventKit
from tests.integration.events.test_webhooks import post_sendgrid, sg_event


async def suppressions(ekit: EventKit) -> dict[str, tuple[str, str]]:
    async with ekit.sessionmaker() as session:
        rows = await session.scalars(select(Suppression))
        return {r.value: (r.scope, r.reason) for r in rows}


async def another_task(ekit: EventKit, name: str) -> tuple[int, list[SubTask]]:
    """A new task over the same contacts, sent through the fake provider until it completes."""
    async with unit_of_work(ekit.sessionmaker) as session:
        sender = await factories.sender(session, ekit.user_id, local=f"s-{name}")
        template = await factories.template(session, ekit.user_id, name=name)
        task_id = await factories.task(session, ekit.user_id, sender_id=sender, template_ids=[template],
                                       rule={"type": "all_contacts"}, name=name)

    async def done() -> bool:
        return await ekit.dkit.status(task_id) == "completed"

    async with ekit.dkit.worker():
        await ekit.dkit.wait_for(done, timeout=30, what=f"{name} completed")
    return task_id, await ekit.dkit.subtasks(task_id)


def by_email(subtasks: list[SubTask]) -> dict[str, SubTask]:
    return {s.recipient_email: s for s in subtasks}


async def test_events_suppress_as_the_policy_says_across_tasks(ekit: EventKit) -> None:
    task_id, first = await ekit.send_task(6)
    emails = [s.recipient_email for s in first]
    hard, complained, unsubscribed, provider_listed, blocked, soft = emails
    one = by_email(first)
    events: list[dict[str, Any]] = [
        sg_event(one[hard], "bounce", 1, type="bounce", reason="550 5.1.1"),
        sg_event(one[complained], "spamreport", 1),
        sg_event(one[unsubscribed], "unsubscribe", 1),
        sg_event(one[provider_listed], "dropped", 1, reason="Bounced Address"),
        sg_event(one[blocked], "bounce", 1, type="blocked", reason="554 5.7.1 policy"),
        sg_event(one[soft], "bounce", 1, type="expired"),
    ]
    assert (await post_sendgrid(ekit, events)).status_code == 200
    await ekit.apply()
    listed = await suppressions(ekit)
    assert listed == {hard: ("global", "hard_bounce"), complained: ("global", "complaint"),
                      unsubscribed: ("user", "unsubscribed"), provider_listed: ("global", "provider_suppressed")}

    # Two more tasks reach the soft-bouncing address (the others are out already): the third soft bounce
    # in a row puts it on the global list.
    for round_no in (2, 3):
        _, sent = await another_task(ekit, f"round{round_no}")
        assert set(s.recipient_email for s in sent if s.send_state == "sent") == {blocked, soft}
        bounce = sg_event(by_email(sent)[soft], "bounce", round_no, type="expired")
        assert (await post_sendgrid(ekit, [bounce])).status_code == 200
        await ekit.apply()
        assert (soft in await suppressions(ekit)) == (round_no == 3)
    assert (await suppressions(ekit))[soft] == ("global", "soft_bounce_limit")

    _, last = await another_task(ekit, "after")
    states = {s.recipient_email: s.send_state for s in last}
    assert [e for e, state in states.items() if state == "sent"] == [blocked], "only the blocked one remains"
    assert task_id
