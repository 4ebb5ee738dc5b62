"""Claim-time checks (SPEC §5.5): a contact deleted or deactivated after generation is never mailed."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.contacts import Contact
from edm.models.tasks import SubTask
from edm.tasks import generation
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
