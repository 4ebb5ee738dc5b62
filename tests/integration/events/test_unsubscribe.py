"""One-click unsubscribe (RFC 8058, docs/tracking.md#unsubscribes) through the ASGI app: a GET never unsubscribes;
a POST — the mailbox provider's `List-Unsubscribe=One-Click` or the page's button — does, at once and only once, and the
address is out of the next task."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from edm.models.tasks import SubTask
from edm.security.tokens import sign_token
from tests import factories
from tests.integration.events.conftest import EventKit


def unsubscribe_path(ekit: EventKit, public_id: uuid.UUID, purpose: str = "unsubscribe") -> str:
    key = ekit.dkit.settings.signing_key
    token = sign_token(purpose, public_id, key=key, link_id=1 if purpose == "click" else None)
    return f"/u/{token}"


async def test_get_shows_a_page_and_post_unsubscribes_once(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(3)
    target, other = subtasks[0], subtasks[1]
    path = unsubscribe_path(ekit, target.public_id)

    page = await ekit.client.get(path)
    assert page.status_code == 200 and '<form method="post">' in page.text
    local = target.recipient_email.split("@")[0]
    assert local not in page.text and target.recipient_email.split("@")[1] in page.text, "address is masked"
    assert await ekit.events() == [], "a GET (a scanner's prefetch) never unsubscribes"

    one_click = await ekit.client.post(
        path, content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert one_click.status_code == 200 and "no more" in one_click.text
    again = await ekit.client.post(path, files={"List-Unsubscribe": (None, "One-Click")})  # multipart, repeated
    assert again.status_code == 200
    bare = await ekit.client.post(path)  # the page's button, no body at all
    assert bare.status_code == 200

    events = await ekit.events()
    assert [(e.source, e.event_type, e.match_status) for e in events] == [("tracking", "unsubscribed", "matched")]
    async with ekit.sessionmaker() as session:
        rows = {s.id: s for s in await session.scalars(select(SubTask).where(SubTask.task_id == task_id))}
        contact = await session.get(Contact, target.contact_id)
        other_contact = await session.get(Contact, other.contact_id)
    assert rows[target.id].unsubscribed_at is not None and rows[other.id].unsubscribed_at is None
    assert contact is not None and contact.unsubscribed_at is not None
    assert other_contact is not None and other_contact.unsubscribed_at is None

    # The next task leaves the address out.
    async with unit_of_work(ekit.sessionmaker) as session:
        sender = await factories.sender(session, ekit.user_id, local="second")
        template = await factories.template(session, ekit.user_id, name="t2")
        next_task = await factories.task(
            session, ekit.user_id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}, name="next"
        )
    await ekit.dkit.generate(next_task)
    states = {s.contact_id: (s.send_state, s.suppressed_reason) for s in await ekit.dkit.subtasks(next_task)}
    assert states[target.contact_id][0] == "suppressed"
    assert states[other.contact_id] == ("pending", None)


async def test_bad_tokens_get_a_neutral_404_page_and_record_nothing(ekit: EventKit) -> None:
    _, subtasks = await ekit.send_task(1)
    good = unsubscribe_path(ekit, subtasks[0].public_id)
    token = good.removeprefix("/u/")
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for path in (
        f"/u/{flipped}",
        unsubscribe_path(ekit, subtasks[0].public_id, "click"),
        unsubscribe_path(ekit, uuid.uuid4()),
        "/u/" + "x" * 500,
        "/u/%00",
    ):
        for method in ("GET", "POST"):
            response = await ekit.client.request(method, path)
            assert response.status_code == 404, (method, path, response.status_code)
            assert "not valid" in response.text
    assert await ekit.events() == []
    test_page = await ekit.client.post("/u/test")
    assert test_page.status_code == 200 and "test message" in test_page.text
