"""Recording a send stamps the contact's `last_sent_at` and nothing the contact's indexes cover
(docs/deploy.md#past-a-million-rows).

`updated_at` says when someone last edited the contact: a send is no edit, and `updated_at` is indexed, so
touching it made PostgreSQL write a new entry into each of the contacts' eight indexes for every mail sent,
where an update of unindexed columns stays on its page (a HOT update). On PostgreSQL the test reads the
transaction's own HOT-update count for `contacts`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, text, update

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.contacts import Contact
from edm.providers.base import Outcome, SendResult
from edm.system.runtime_settings import Policy
from edm.tasks import generation
from tests import factories
from tests.helpers import settings_for

EDITED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


async def test_a_send_sets_last_sent_at_and_leaves_updated_at(db_url: str, sessionmaker: Any) -> None:
    w = await factories.world(
        sessionmaker, settings_for(db_url), recipients=3, services_=[{"name": "esp", "max_concurrency": 10}]
    )
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(Contact).where(Contact.id.in_(w.contact_ids)).values(updated_at=EDITED))
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
        await generation.generate(session, task_id, now=utc_now())
    async with unit_of_work(sessionmaker) as session:
        claim = await queue.claim(session, service_id=w.service_ids[0], worker_id="w", now=utc_now())
    assert claim is not None and len(claim.items) == 3
    sent_at = utc_now()
    outcomes = [queue.ItemOutcome(i, SendResult(f"<{i.public_id}>", Outcome.ACCEPTED), sent_at) for i in claim.items]
    async with unit_of_work(sessionmaker) as session:
        await queue.record(session, claim=claim, outcomes=outcomes, now=sent_at, policy=Policy())
        if db_url.startswith("postgresql"):
            hot = "SELECT pg_stat_get_xact_tuples_hot_updated('contacts'::regclass)"
            assert await session.scalar(text(hot)) == 3  # in place: no index written
    async with sessionmaker() as session:
        rows = (await session.execute(select(Contact.updated_at, Contact.last_sent_at))).all()
    assert rows == [(EDITED, sent_at)] * 3
