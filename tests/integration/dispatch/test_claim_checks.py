"""Claim-time checks (docs/states.md#subtask-send-state): a contact deleted or deactivated after generation is never
mailed."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from sqlalchemy import delete, select, update

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.contacts import Contact
from edm.models.suppressions import Suppression
from edm.models.tasks import SubTask
from edm.tasks import generation, recipients
from tests import factories
from tests.helpers import settings_for


async def test_deleted_and_inactive_contacts_are_suppressed_at_claim(db_url, sessionmaker):  # type: ignore[no-untyped-def]
    settings = settings_for(db_url)
    w = await factories.world(sessionmaker, settings, recipients=6, services_=[{"name": "esp", "max_concurrency": 10}])
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
        await generation.generate(session, task_id, now=utc_now())
    deleted, inactive = w.contact_ids[0], w.contact_ids[1]
    async with unit_of_work(sessionmaker) as session:
        await session.execute(delete(Contact).where(Contact.id == deleted))
        await session.execute(update(Contact).where(Contact.id == inactive).values(status="inactive"))
    async with unit_of_work(sessionmaker) as session:
        claim = await queue.claim(session, service_id=w.service_ids[0], worker_id="w", now=utc_now())
    assert claim is not None and claim.suppressed == 2
    assert {i.contact_id for i in claim.items} == set(w.contact_ids[2:])
    async with sessionmaker() as session:
        rows = dict(
            (
                await session.execute(
                    select(SubTask.contact_id, SubTask.suppressed_reason).where(
                        SubTask.task_id == task_id, SubTask.send_state == "suppressed"
                    )
                )
            ).all()
        )
    assert rows == {deleted: "contact_deleted", inactive: "contact_inactive"}


async def test_the_claim_gives_the_reason_the_estimate_gives_in_the_same_order(db_url, sessionmaker):  # type: ignore[no-untyped-def]
    """Generation and the claim read one exclusion rule: for recipients that became unsendable after
    generation, with several reasons at once, the claim stores the first reason in the rule's order, and the
    estimate of the same rule counts the same reasons."""
    settings = settings_for(db_url)
    w = await factories.world(sessionmaker, settings, recipients=7, services_=[{"name": "esp", "max_concurrency": 10}])
    now = utc_now()
    async with unit_of_work(sessionmaker) as session:
        [blocked_domain] = await factories.contacts(session, w.user_id, 1, prefix="d", domain="blocked.example")
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
        assert (await generation.generate(session, task_id, now=utc_now())).sendable == 8  # type: ignore[union-attr]
    c = w.contact_ids
    later = {
        c[0]: {"unsubscribed_at": now},
        c[1]: {"hard_bounced_at": now, "unsubscribed_at": now},
        c[2]: {"complained_at": now},
        c[4]: {"status": "inactive", "hard_bounced_at": now},
        c[6]: {"hard_bounced_at": now},
    }
    async with unit_of_work(sessionmaker) as session:
        for contact_id, values in later.items():
            await session.execute(update(Contact).where(Contact.id == contact_id).values(**values))
        emails = dict((await session.execute(select(Contact.id, Contact.email_normalized))).all())
        entries = [
            ("user", w.user_id, "address", emails[c[2]], None),  # complained comes first
            ("user", w.user_id, "address", emails[c[3]], None),
            ("global", None, "address", emails[c[5]], now - dt.timedelta(minutes=1)),  # expired: sendable
            ("global", None, "domain", "blocked.example", None),
        ]
        for scope, user_id, kind, value, expires_at in entries:
            session.add(
                Suppression(
                    scope=scope,
                    user_id=user_id,
                    owner_key=user_id or 0,
                    kind=kind,
                    value=value,
                    reason="manual",
                    expires_at=expires_at,
                )
            )
    expected = {
        c[0]: "unsubscribed",
        c[1]: "unsubscribed",
        c[2]: "complained",
        c[3]: "suppression_list",
        c[4]: "contact_inactive",
        c[6]: "hard_bounced",
        blocked_domain: "suppression_list",
    }
    async with sessionmaker() as session:
        estimate = await recipients.estimate(
            session, user_id=w.user_id, rule=recipients.Rule.parse({"type": "all_contacts"}), now=utc_now()
        )
    assert {r: n for r, n in estimate["excluded"].items() if n} == dict(Counter(expected.values()))
    assert estimate["sendable"] == 1

    async with unit_of_work(sessionmaker) as session:
        claim = await queue.claim(session, service_id=w.service_ids[0], worker_id="w", now=utc_now())
    assert claim is not None and claim.suppressed == len(expected)
    assert [i.contact_id for i in claim.items] == [c[5]]
    async with sessionmaker() as session:
        stored = dict(
            (
                await session.execute(
                    select(SubTask.contact_id, SubTask.suppressed_reason).where(
                        SubTask.task_id == task_id, SubTask.send_state == "suppressed"
                    )
                )
            ).all()
        )
    assert stored == expected
