"""The automatic suppressions (docs/suppression.md#what-is-added-automatically-the-bounce-policy), fed by events:
unsubscribe → the sending user's list; hard bounce, complaint, a provider-suppressed address and three soft bounces
(across tasks) → the global list; a policy block → nothing. The next task leaves every suppressed address out. The admin
settings move each trigger to the user's list, the global list or nowhere, and change the soft-bounce limit; removing an
unsubscribe or complaint entry needs a reason, is audited, clears the contact flag and lets the next task reach
the address."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from edm.models.suppressions import Suppression
from edm.models.system import AuditLog
from edm.models.tasks import SubTask
from edm.models.users import Role
from edm.users.service import create_token
from tests import factories
from tests.helpers import Account, make_account
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
        task_id = await factories.task(
            session, ekit.user_id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}, name=name
        )

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
    assert listed == {
        hard: ("global", "hard_bounce"),
        complained: ("global", "complaint"),
        unsubscribed: ("user", "unsubscribed"),
        provider_listed: ("global", "provider_suppressed"),
    }

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


# --------------------------------------------------------------------------------------------------------
# The policy follows the admin settings (docs/operations.md#admin-settings): scope per trigger (user, global, off) and
# the soft limit.
# --------------------------------------------------------------------------------------------------------

SCOPE_KEYS = (
    "suppression.unsubscribe_scope",
    "suppression.hard_bounce_scope",
    "suppression.soft_bounce_scope",
    "suppression.complaint_scope",
)


async def admin_of(ekit: EventKit) -> Account:
    return await make_account(ekit.sessionmaker, "root", role=Role.ADMIN)


async def token_of(ekit: EventKit) -> dict[str, str]:
    """A write token for the user the kit sent as (alice)."""
    async with unit_of_work(ekit.sessionmaker) as session:
        token, _ = await create_token(session, user_id=ekit.user_id, name="tests")
    return {"Authorization": f"Bearer {token}"}


async def set_settings(ekit: EventKit, admin: Account, values: dict[str, Any]) -> None:
    r = await ekit.client.patch("/api/v1/admin/settings", json=values, headers=admin.headers)
    assert r.status_code == 200, r.text


async def set_streak(ekit: EventKit, emails: list[str], streak: int) -> None:
    """Earlier soft bounces of these addresses (as earlier tasks would have left them)."""
    async with unit_of_work(ekit.sessionmaker) as session:
        await session.execute(
            update(Contact).where(Contact.email_normalized.in_(emails)).values(soft_bounce_streak=streak)
        )


async def entries(ekit: EventKit) -> dict[str, Suppression]:
    async with ekit.sessionmaker() as session:
        return {r.value: r for r in await session.scalars(select(Suppression))}


async def event_ids(ekit: EventKit) -> dict[str, int]:
    """Provider event id (our dedupe key) -> stored event id."""
    return {e.dedupe_key: e.id for e in await ekit.events()}


def trigger_events(group: list[SubTask]) -> list[dict[str, Any]]:
    """One event per policy row, in the group's order: unsubscribe, complaint, hard bounce, provider-suppressed
    rejection, soft bounce (the contact's streak is one short of the limit)."""
    unsub, complaint, hard, listed, soft = group
    return [
        sg_event(unsub, "unsubscribe", 1),
        sg_event(complaint, "spamreport", 1),
        sg_event(hard, "bounce", 1, type="bounce", reason="550 5.1.1"),
        sg_event(listed, "dropped", 1, reason="Bounced Address"),
        sg_event(soft, "bounce", 1, type="expired"),
    ]


EXPECTED_REASONS = ("unsubscribed", "complaint", "hard_bounce", "provider_suppressed", "soft_bounce_limit")


async def test_each_trigger_follows_its_scope_setting(ekit: EventKit) -> None:
    task_id, sent = await ekit.send_task(15)
    admin = await admin_of(ekit)
    for n, scope in enumerate(("off", "user", "global")):
        group = sent[n * 5 : (n + 1) * 5]
        await set_settings(ekit, admin, dict.fromkeys(SCOPE_KEYS, scope))
        await set_streak(ekit, [group[4].recipient_email], 2)  # the third soft bounce reaches the default limit
        assert (await post_sendgrid(ekit, trigger_events(group))).status_code == 200
        await ekit.apply()
        listed, ids = await entries(ekit), await event_ids(ekit)
        if scope == "off":
            assert not any(s.recipient_email in listed for s in group), "scope off adds nothing"
            continue
        for subtask, reason, event in zip(group, EXPECTED_REASONS, trigger_events(group), strict=True):
            entry = listed[subtask.recipient_email]
            assert (entry.scope, entry.user_id, entry.kind, entry.reason) == (
                scope,
                ekit.user_id if scope == "user" else None,
                "address",
                reason,
            )
            assert (entry.source_task_id, entry.source_event_id) == (task_id, ids[event["sg_event_id"]])


async def test_each_trigger_alone_goes_where_its_own_setting_says(ekit: EventKit) -> None:
    """The four scope settings are independent: one trigger per list, the others off."""
    _, sent = await ekit.send_task(5)
    admin = await admin_of(ekit)
    await set_settings(
        ekit,
        admin,
        {
            "suppression.unsubscribe_scope": "global",
            "suppression.complaint_scope": "user",
            "suppression.hard_bounce_scope": "off",
            "suppression.soft_bounce_scope": "user",
        },
    )
    await set_streak(ekit, [sent[4].recipient_email], 2)
    assert (await post_sendgrid(ekit, trigger_events(sent))).status_code == 200
    await ekit.apply()
    listed = {value: (e.scope, e.reason) for value, e in (await entries(ekit)).items()}
    unsub, complaint, hard, provider_listed, soft = (s.recipient_email for s in sent)
    assert listed == {
        unsub: ("global", "unsubscribed"),
        complaint: ("user", "complaint"),
        soft: ("user", "soft_bounce_limit"),
    }, "hard bounce and provider-suppressed are off"


async def test_the_soft_bounce_limit_setting(ekit: EventKit) -> None:
    _, sent = await ekit.send_task(2)
    admin = await admin_of(ekit)
    first, second = sent
    await set_streak(ekit, [first.recipient_email, second.recipient_email], 1)

    await set_settings(ekit, admin, {"bounce.soft_limit": 3})
    assert (await post_sendgrid(ekit, [sg_event(first, "bounce", 1, type="expired")])).status_code == 200
    await ekit.apply()
    assert await entries(ekit) == {}, "a second soft bounce is below a limit of 3"

    await set_settings(ekit, admin, {"bounce.soft_limit": 2})
    assert (await post_sendgrid(ekit, [sg_event(second, "bounce", 1, type="expired")])).status_code == 200
    await ekit.apply()
    listed = await entries(ekit)
    assert set(listed) == {second.recipient_email}, "a second soft bounce reaches a limit of 2"
    assert (listed[second.recipient_email].scope, listed[second.recipient_email].reason) == (
        "global",
        "soft_bounce_limit",
    )
    async with ekit.sessionmaker() as session:
        streaks = dict((await session.execute(select(Contact.email_normalized, Contact.soft_bounce_streak))).all())
    assert streaks == {first.recipient_email: 2, second.recipient_email: 2}


async def test_removing_an_unsubscribe_needs_a_reason_and_lets_the_next_task_reach_the_address(ekit: EventKit) -> None:
    _, sent = await ekit.send_task(3)
    unsubscriber, complainer, _ = sent
    alice = await token_of(ekit)
    admin = await admin_of(ekit)
    events = [sg_event(unsubscriber, "unsubscribe", 1), sg_event(complainer, "spamreport", 1)]
    assert (await post_sendgrid(ekit, events)).status_code == 200
    await ekit.apply()
    listed = await entries(ekit)
    own, global_ = listed[unsubscriber.recipient_email], listed[complainer.recipient_email]
    assert (own.scope, global_.scope) == ("user", "global")

    r = await ekit.client.delete(f"/api/v1/suppressions/{own.id}", headers=alice)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "reason", r.text
    r = await ekit.client.delete(f"/api/v1/suppressions/{global_.id}", headers=alice)
    assert r.status_code == 404, "a user cannot remove a global entry"
    r = await ekit.client.delete(
        f"/api/v1/suppressions/{own.id}", params={"reason": "asked to resubscribe"}, headers=alice
    )
    assert r.json() == {"removed": 1, "contacts_cleared": 1}, r.text
    r = await ekit.client.delete(
        f"/api/v1/admin/suppressions/{global_.id}", params={"reason": "ticket 42"}, headers=admin.headers
    )
    assert r.json() == {"removed": 1, "contacts_cleared": 1}, r.text

    async with ekit.sessionmaker() as session:
        flags = dict(
            (
                await session.execute(
                    select(
                        Contact.email_normalized, Contact.unsubscribed_at.is_(None) & Contact.complained_at.is_(None)
                    )
                )
            ).all()
        )
        audits = list(
            await session.scalars(select(AuditLog).where(AuditLog.action == "suppression.remove").order_by(AuditLog.id))
        )
    assert flags[unsubscriber.recipient_email] and flags[complainer.recipient_email], "flags cleared"
    assert [
        (a.actor_user_id, a.actor_kind, a.target_id, a.details["reason"], a.details["entry_reason"]) for a in audits
    ] == [
        (ekit.user_id, "token", str(own.id), "asked to resubscribe", "unsubscribed"),
        (admin.id, "token", str(global_.id), "ticket 42", "complaint"),
    ]
    assert await entries(ekit) == {}

    _, again = await another_task(ekit, "again")
    assert {s.recipient_email: s.send_state for s in again} == {s.recipient_email: "sent" for s in sent}
