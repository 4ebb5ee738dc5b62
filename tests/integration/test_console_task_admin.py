"""Admins in the console's campaign pages over the ASGI app: an admin opens any user's campaign, its recipients and
one recipient read-only with the owner named (as `GET /api/v1/tasks/{id}` and its reports allow), takes the state
changes the API lets admins take on another user's campaign (pause, cancel, close, delete: audited) and no other;
a plain user still gets 404 for another user's campaign."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.models.tasks import SubTask
from edm.tasks import generation
from tests import factories
from tests.helpers import Account, console_log_in, make_account

OWNER_NOTE = "This belongs to bob: as an admin you see it read-only."


async def _bobs_campaigns(sessionmaker: async_sessionmaker[AsyncSession], bob: Account) -> tuple[int, int, int]:
    """Bob's queued campaign with 3 recipients (and the id of its first), and a draft of his."""
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, bob.id, local="news-bob")
        template = await factories.template(session, bob.id, "Bob's letter")
        await factories.contacts(session, bob.id, 3, prefix="bob-")
        queued = await factories.task(
            session, bob.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}, name="Bob's sale"
        )
        draft = await _draft(session, bob, sender, template, "Bob's draft")
        assert await generation.generate(session, queued) is not None
    async with sessionmaker() as session:
        first = await session.scalar(select(SubTask.id).where(SubTask.task_id == queued).order_by(SubTask.id))
    assert first is not None
    return queued, first, draft


async def _draft(session: AsyncSession, bob: Account, sender: int, template: int, name: str) -> int:
    return await factories.task(
        session,
        bob.id,
        sender_id=sender,
        template_ids=[template],
        rule={"type": "all_contacts"},
        name=name,
        schedule=False,
    )


async def _status(client: httpx.AsyncClient, who: Account, task_id: int) -> str:
    answer = await client.get(f"/api/v1/tasks/{task_id}", headers=who.headers)
    return str(answer.json()["status"]) if answer.status_code == 200 else str(answer.status_code)


async def test_an_admin_opens_another_users_campaign_read_only_with_the_owner_named(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    bob = await make_account(sessionmaker, "bob", credit=100)
    root = await make_account(sessionmaker, "root", role="admin")
    queued, first, draft = await _bobs_campaigns(sessionmaker, bob)
    await console_log_in(client, root)

    page = await client.get(f"/tasks/{queued}")
    assert page.status_code == 200 and "Bob&#39;s sale" in page.text and OWNER_NOTE in page.text
    forms = set(re.findall(r'action="/tasks/\d+/([a-z/]+)"', page.text))
    assert forms == {"pause", "cancel"}, "only the state changes an admin may take on a queued campaign of another"
    assert f'href="/tasks/{queued}/recipients"' in page.text
    listed = await client.get(f"/tasks/{queued}/recipients")
    assert listed.status_code == 200 and "3 recipients" in listed.text and OWNER_NOTE in listed.text
    one = await client.get(f"/tasks/{queued}/recipients/{first}")
    assert one.status_code == 200 and "@example.net</h1>" in one.text and OWNER_NOTE in one.text
    drafted = await client.get(f"/tasks/{draft}")
    assert drafted.status_code == 200 and f'href="/tasks/{draft}/edit"' not in drafted.text
    assert "Bob&#39;s sale" not in (await client.get("/tasks")).text, "the admin's list stays its own"

    await console_log_in(client, bob)  # the owner sees its campaign as before: no note, its controls
    own = (await client.get(f"/tasks/{queued}")).text
    assert OWNER_NOTE not in own and f'action="/tasks/{queued}/pause"' in own

    alice = await make_account(sessionmaker, "alice", credit=100)
    await console_log_in(client, alice)
    for path in (f"/tasks/{queued}", f"/tasks/{queued}/recipients", f"/tasks/{queued}/recipients/{first}"):
        assert (await client.get(path)).status_code == 404, path


async def test_an_admin_pauses_cancels_and_deletes_another_users_campaign_as_the_api_allows_audited(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    bob = await make_account(sessionmaker, "bob", credit=100)
    root = await make_account(sessionmaker, "root", role="admin")
    queued, _, draft = await _bobs_campaigns(sessionmaker, bob)
    csrf = await console_log_in(client, root)

    paused = await client.post(f"/tasks/{queued}/pause", data={"csrf_token": csrf, "next": f"/tasks/{queued}"})
    assert paused.status_code == 303 and paused.headers["location"] == f"/tasks/{queued}?notice=paused"
    assert await _status(client, bob, queued) == "paused"
    for refused in ("resume", "copy", "uncertain/retry"):  # the owner's only, as in the API
        answer = await client.post(f"/tasks/{queued}/{refused}", data={"csrf_token": csrf})
        assert answer.status_code == 404, refused
    assert await _status(client, bob, queued) == "paused"
    cancelled = await client.post(f"/tasks/{queued}/cancel", data={"csrf_token": csrf})
    assert cancelled.status_code == 303 and await _status(client, bob, queued) == "cancelled"
    deleted = await client.post(f"/tasks/{draft}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303 and await _status(client, bob, draft) == "404"

    async with sessionmaker() as session:
        rows = (
            await session.scalars(select(AuditLog).where(AuditLog.action.like("task.%")).order_by(AuditLog.id))
        ).all()
    assert [(r.action, r.actor_user_id, r.target_id) for r in rows] == [
        ("task.pause", root.id, str(queued)),
        ("task.cancel", root.id, str(queued)),
        ("task.delete", root.id, str(draft)),
    ]
    assert rows[0].details == {"owner_user_id": bob.id, "old_status": "queued", "new_status": "paused"}
    assert rows[2].details == {"owner_user_id": bob.id, "old_status": "draft"}

    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, bob.id, local="more-bob")
        more = await _draft(session, bob, sender, await factories.template(session, bob.id, "Another"), "More")
    bob_csrf = await console_log_in(client, bob)  # an owner's own actions are not audited (its history has them)
    assert (await client.post(f"/tasks/{more}/delete", data={"csrf_token": bob_csrf})).status_code == 303
    async with sessionmaker() as session:
        assert len((await session.scalars(select(AuditLog).where(AuditLog.action.like("task.%")))).all()) == 3
