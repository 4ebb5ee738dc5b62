"""Scheduling a task and queueing a template test send render templates; a render may take its whole time
limit. On SQLite every transaction holds the database's write lock, so the render must run after the
request's reads have ended their transaction and before its writes begin one: another user's write goes on
meanwhile. And since the reads and the writes are two transactions, the write side refuses (409) when what
was checked changed in between."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.errors import Conflict
from edm.models.content import Template
from edm.models.tasks import Task
from edm.tasks import proof_sends, service
from tests import factories
from tests.helpers import Account, api_client, make_account

# Legal (no limit is hit) but slow: over half a second of rendering on a quiet machine, far below the limit.
SLOW_HTML = (
    "{% for i in range(6000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"
    '<p>Hi {{ contact.first_name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
)


@dataclass
class Slow:
    alice: Account  # owns the slow template, a draft task using it, contacts and a sender
    bob: Account  # another user, who only writes
    task_id: int
    template_id: int


async def _slow_world(sessionmaker: async_sessionmaker[AsyncSession]) -> Slow:
    alice = await make_account(sessionmaker, "alice", credit=100)
    bob = await make_account(sessionmaker, "bob")
    async with unit_of_work(sessionmaker) as session:
        await factories.contacts(session, alice.id, 3)
        sender_id = await factories.sender(session, alice.id)
        template_id = await factories.template(session, alice.id, "slow", html=SLOW_HTML)
        task_id = await factories.task(
            session,
            alice.id,
            sender_id=sender_id,
            template_ids=[template_id],
            rule={"type": "all_contacts"},
            schedule=False,
        )
    return Slow(alice, bob, task_id, template_id)


class BobWrites(threading.Thread):
    """Bob creates tags one after another on a connection of his own, as another process would (the worker,
    a second server): each write waits for the database's write lock, so its time shows who held the lock.
    (Writes through the same app would also show the render sharing the process's CPU with them.)"""

    def __init__(self, db_url: str, user_id: int) -> None:
        super().__init__(daemon=True)
        self.path, self.user_id = db_url.removeprefix("sqlite:///"), user_id
        self.waits: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            while not self.stop.is_set():
                begun = time.monotonic()
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT INTO tags (user_id, name, color, is_split_group, created_at, updated_at)"
                    " VALUES (?, ?, '#3b82f6', 0, datetime('now'), datetime('now'))",
                    (self.user_id, f"tag {len(self.waits)}"),
                )
                db.execute("COMMIT")
                self.waits.append(time.monotonic() - begun)
                time.sleep(0.01)
        finally:
            db.close()


async def _writes_meanwhile(db_url: str, client: httpx.AsyncClient, slow: Slow, request: httpx.Request) -> None:
    """Send Alice's rendering `request` while Bob writes. No write of Bob's may wait through most of Alice's
    request: with the write lock held during the render, the write that met the render waited for almost all
    of it (over 80% of Alice's time). Without, the slowest write is usually under 10%; a machine busy with
    other work stalls the whole process now and then, which has cost one write up to 55%."""
    bob = BobWrites(db_url, slow.bob.id)
    started = time.monotonic()
    bob.start()
    try:
        answer = await client.send(request)
    finally:
        took = time.monotonic() - started
        bob.stop.set()
        await asyncio.to_thread(bob.join)
    assert answer.status_code in (200, 202), answer.text
    assert len(bob.waits) >= 3, f"Bob wrote {len(bob.waits)} times in {took:.2f} s"
    assert max(bob.waits) < took * 0.65, f"a write of Bob's waited {max(bob.waits):.2f} s of Alice's {took:.2f} s"


@pytest.mark.serial  # the render must stay within its time limit: not beside another test process
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_slow_schedule_does_not_block_another_users_write(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    slow = await _slow_world(sessionmaker)
    async with api_client(db_url, engine) as client:
        request = client.build_request(
            "POST", f"/api/v1/tasks/{slow.task_id}/schedule", json={"now": True}, headers=slow.alice.headers
        )
        await _writes_meanwhile(db_url, client, slow, request)
        task = (await client.get(f"/api/v1/tasks/{slow.task_id}", headers=slow.alice.headers)).json()
    assert task["status"] == "scheduled" and task["schedule_estimate"]["sendable"] == 3


@pytest.mark.serial  # the render must stay within its time limit: not beside another test process
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_slow_test_send_does_not_block_another_users_write(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    slow = await _slow_world(sessionmaker)
    async with api_client(db_url, engine) as client:
        request = client.build_request(
            "POST",
            f"/api/v1/templates/{slow.template_id}/test-send",
            json={"emails": ["me@example.org"]},
            headers=slow.alice.headers,
        )
        await _writes_meanwhile(db_url, client, slow, request)
        listed = (await client.get("/api/v1/test-sends", headers=slow.alice.headers)).json()
    assert [t["template_id"] for t in listed["items"]] == [slow.template_id]


@pytest.mark.serial  # the render must stay within its time limit: not beside another test process
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_slow_update_of_a_scheduled_task_does_not_block_another_users_write(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    slow = await _slow_world(sessionmaker)
    async with api_client(db_url, engine) as client:
        path = f"/api/v1/tasks/{slow.task_id}"
        r = await client.post(f"{path}/schedule", json={"now": True}, headers=slow.alice.headers)
        assert r.status_code == 200, r.text
        request = client.build_request("PATCH", path, json={"name": "renamed"}, headers=slow.alice.headers)
        await _writes_meanwhile(db_url, client, slow, request)
        task = (await client.get(path, headers=slow.alice.headers)).json()
    assert (task["status"], task["name"]) == ("scheduled", "renamed")


async def test_an_update_of_a_scheduled_task_that_would_not_render_changes_nothing(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=100)
    async with unit_of_work(sessionmaker) as session:
        await factories.contacts(session, alice.id, 2)
        sender_id = await factories.sender(session, alice.id)
        good = await factories.template(session, alice.id, "good")
        broken = await factories.template(session, alice.id, "broken", html="<p>{{ 1 / 0 }}</p>")
        task_id = await factories.task(
            session, alice.id, sender_id=sender_id, template_ids=[good], rule={"type": "all_contacts"}
        )
    async with api_client(db_url, engine) as client:
        path = f"/api/v1/tasks/{task_id}"
        body = {"name": "renamed", "templates": [{"template_id": good}, {"template_id": broken}]}
        refused = await client.patch(path, json=body, headers=alice.headers)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"][0]["template_id"] == broken
        task = (await client.get(path, headers=alice.headers)).json()
        assert (task["status"], task["name"]) == ("scheduled", "campaign")
        assert [t["template_id"] for t in task["templates"]] == [good]
        bad_sender = await client.patch(
            path, json={"sender_id": 999999, "templates": body["templates"]}, headers=alice.headers
        )
        assert bad_sender.status_code == 422 and "sender_id" in bad_sender.text, "field errors come before the render"


# ---- what changed between the checks and the writes ---------------------------------------------------
#
# As the entry points do: one session reads and checks, ends its transaction, renders, then writes. Another
# session changes something in between.


@dataclass
class Draft:
    user_id: int
    task_id: int
    template_id: int  # the task's template
    broken_id: int  # a template of the user's that does not render


async def _draft(sessionmaker: async_sessionmaker[AsyncSession], *, scheduled: bool = False) -> Draft:
    async with unit_of_work(sessionmaker) as session:
        user_id = await factories.user(session, "carol", credit=100)
        await factories.contacts(session, user_id, 2)
        sender_id = await factories.sender(session, user_id)
        template_id = await factories.template(session, user_id, "good")
        broken_id = await factories.template(session, user_id, "broken", html="<p>{{ 1 / 0 }}</p>")
        task_id = await factories.task(
            session,
            user_id,
            sender_id=sender_id,
            template_ids=[template_id],
            rule={"type": "all_contacts"},
            schedule=scheduled,
        )
    return Draft(user_id, task_id, template_id, broken_id)


async def _break_template(sessionmaker: async_sessionmaker[AsyncSession], template_id: int) -> None:
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(Template).where(Template.id == template_id).values(html="<p>{{ 1 / 0 }}</p>"))


async def _schedule_with(sessionmaker: async_sessionmaker[AsyncSession], draft: Draft, meanwhile: Any) -> Task:
    async with sessionmaker() as session:
        # The session keeps what it loaded (a request may hold the template): that must not hide a change.
        held = await session.get(Template, draft.template_id)
        task = await service.get_task(session, draft.task_id, user_id=draft.user_id)
        plan = await service.plan_schedule(session, task, at=None)
        await session.commit()
        await service.check_renders(plan.renders)
        await meanwhile()
        task = await service.get_task(session, draft.task_id, user_id=draft.user_id)
        try:
            task = await service.apply_schedule(session, task, plan=plan, actor="test")
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
        assert held is not None
        return task


async def test_a_schedule_refuses_when_the_task_changed_after_its_checks(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    draft = await _draft(sessionmaker)

    async def add_a_template_that_does_not_render() -> None:
        async with unit_of_work(sessionmaker) as session:
            task = await service.get_task(session, draft.task_id, user_id=draft.user_id)
            templates = [{"template_id": draft.template_id}, {"template_id": draft.broken_id}]
            await service.update_task(session, task, {"templates": templates})

    with pytest.raises(Conflict, match="changed while it was being scheduled"):
        await _schedule_with(sessionmaker, draft, add_a_template_that_does_not_render)
    async with unit_of_work(sessionmaker) as session:
        assert (await service.get_task(session, draft.task_id, user_id=draft.user_id)).status == "draft"


async def test_a_schedule_refuses_when_its_template_was_edited_after_the_render(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    draft = await _draft(sessionmaker)
    with pytest.raises(Conflict, match="changed while it was being scheduled"):
        await _schedule_with(sessionmaker, draft, lambda: _break_template(sessionmaker, draft.template_id))


async def test_a_schedule_applies_when_nothing_checked_changed(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    draft = await _draft(sessionmaker)

    async def change_the_priority() -> None:  # scheduling does not check it
        async with unit_of_work(sessionmaker) as session:
            task = await service.get_task(session, draft.task_id, user_id=draft.user_id)
            await service.update_task(session, task, {"priority": 7})

    task = await _schedule_with(sessionmaker, draft, change_the_priority)
    assert task.status == "scheduled" and task.priority == 7
    assert task.schedule_estimate is not None and task.schedule_estimate["sendable"] == 2


async def test_an_update_refuses_when_what_it_renders_changed_after_the_render(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    draft = await _draft(sessionmaker, scheduled=True)
    async with sessionmaker() as session:
        held = await session.get(Template, draft.template_id)  # as above: must not hide the change
        task = await service.get_task(session, draft.task_id, user_id=draft.user_id)
        renders = await service.plan_update(session, task, {"priority": 2})
        assert renders is not None
        await session.commit()
        await service.check_renders(renders)
        await _break_template(sessionmaker, draft.template_id)
        task = await service.get_task(session, draft.task_id, user_id=draft.user_id)
        with pytest.raises(Conflict, match="changed while it was being updated"):
            await service.update_task(session, task, {"priority": 2}, rendered=renders)
        await session.rollback()
        assert held is not None
    async with unit_of_work(sessionmaker) as session:
        assert (await service.get_task(session, draft.task_id, user_id=draft.user_id)).priority == 5


async def test_a_test_send_refuses_when_its_template_changed_after_the_render(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    draft = await _draft(sessionmaker)
    request = proof_sends.TestSendRequest(template_id=draft.template_id, emails=["me@example.org"])
    async with sessionmaker() as session:
        held = await session.get(Template, draft.template_id)  # as above: must not hide the change
        plan = await proof_sends.plan(session, user_id=draft.user_id, request=request)
        await session.commit()
        await proof_sends.check_render(plan)
        await _break_template(sessionmaker, draft.template_id)
        with pytest.raises(Conflict, match="template changed"):
            await proof_sends.queue(session, user_id=draft.user_id, plan=plan, actor="test")
        await session.rollback()
        assert held is not None
    async with unit_of_work(sessionmaker) as session:
        assert await proof_sends.used_today(session, user_id=draft.user_id, now=utc_now()) == 0
