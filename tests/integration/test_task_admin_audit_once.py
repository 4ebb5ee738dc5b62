"""An admin's pause, cancel, close and delete of another user's campaign leave exactly one audit row each, whether
they come through the API, the console or the API's batch: the task service writes it (`by`), and no caller adds one
of its own. The owner's own actions leave none."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.models.users import Role
from tests import factories
from tests.helpers import Account, api_client, console_log_in, make_account


async def _campaigns(sessionmaker: Any, owner: Account, count: int) -> list[int]:
    """`count` scheduled campaigns of `owner` (for a time far ahead: nothing generates them meanwhile)."""
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, owner.id, local=f"news-{owner.username}")
        template = await factories.template(session, owner.id, "letter")
        await factories.contacts(session, owner.id, 2, prefix=f"{owner.username}-")
        return [
            await factories.task(
                session,
                owner.id,
                sender_id=sender,
                template_ids=[template],
                rule={"type": "all_contacts"},
                name=f"campaign {i}",
                at=utc_now() + dt.timedelta(days=30),
            )
            for i in range(count)
        ]


async def _audit_rows(sessionmaker: Any, task_id: int) -> list[tuple[str, int | None]]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(AuditLog).where(AuditLog.target_type == "task", AuditLog.target_id == str(task_id))
        )
        return [(r.action, r.actor_user_id) for r in rows]


async def _via_api(client: httpx.AsyncClient, who: Account, action: str, task_id: int) -> None:
    if action == "delete":
        await _via_api(client, who, "cancel", task_id)  # a scheduled campaign is cancelled before it is deleted
        answer = await client.delete(f"/api/v1/tasks/{task_id}", headers=who.headers)
        assert answer.status_code == 204, answer.text
        return
    if action == "close":
        await _via_api(client, who, "pause", task_id)
    answer = await client.post(f"/api/v1/tasks/{task_id}/{action}", headers=who.headers)
    assert answer.status_code == 200, answer.text


async def _via_console(client: httpx.AsyncClient, csrf: str, action: str, task_id: int) -> None:
    before = {"delete": "cancel", "close": "pause"}.get(action)
    for step in ([before] if before else []) + [action]:
        answer = await client.post(f"/tasks/{task_id}/{step}", data={"csrf_token": csrf})
        assert answer.status_code == 303 and "refused" not in answer.headers["location"], (step, answer.headers)


@pytest.mark.parametrize("route", ["api", "console"])
async def test_each_admin_action_on_another_users_campaign_is_audited_once(
    db_url: str, engine: Any, sessionmaker: Any, route: str
) -> None:
    bob = await make_account(sessionmaker, "bob", credit=100)
    root = await make_account(sessionmaker, "root", role=Role.ADMIN)
    actions = ["pause", "cancel", "close", "delete"]
    tasks = dict(zip(actions, await _campaigns(sessionmaker, bob, len(actions)), strict=True))
    async with api_client(db_url, engine) as client:
        csrf = await console_log_in(client, root) if route == "console" else ""
        for action, task_id in tasks.items():
            if route == "api":
                await _via_api(client, root, action, task_id)
            else:
                await _via_console(client, csrf, action, task_id)
    for action, task_id in tasks.items():
        expected = {"delete": ["task.cancel", "task.delete"], "close": ["task.pause", "task.close"]}
        rows = await _audit_rows(sessionmaker, task_id)
        assert rows == [(a, root.id) for a in expected.get(action, [f"task.{action}"])], (action, rows)


async def test_a_batch_pause_is_audited_once_per_task_and_the_owners_own_actions_not_at_all(
    db_url: str, engine: Any, sessionmaker: Any
) -> None:
    bob = await make_account(sessionmaker, "bob", credit=100)
    root = await make_account(sessionmaker, "root", role=Role.ADMIN)
    first, second, owns = await _campaigns(sessionmaker, bob, 3)
    async with api_client(db_url, engine) as client:
        answer = await client.post(
            "/api/v1/tasks/batch", json={"action": "pause", "task_ids": [first, second]}, headers=root.headers
        )
        assert answer.status_code == 200 and answer.json()["applied"] == 2, answer.text
        await _via_api(client, bob, "close", owns)
        csrf = await console_log_in(client, bob)
        await _via_console(client, csrf, "cancel", second)  # the owner's own: its history has it, the audit not
    assert await _audit_rows(sessionmaker, first) == [("task.pause", root.id)]
    assert await _audit_rows(sessionmaker, second) == [("task.pause", root.id)]
    assert await _audit_rows(sessionmaker, owns) == []
