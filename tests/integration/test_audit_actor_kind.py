"""The audit log records how the actor signed in: `session` for a write made in the web console (its session
cookie), `token` for one made with a bearer token. Every admin write route passes the caller's own kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.models.users import Role
from tests.helpers import PASSWORD, Account, api_client, make_account

API = "/api/v1"


@pytest.fixture
async def client(db_url: str, engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(db_url, engine) as c:
        yield c


async def _console_headers(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    """Log in (the client keeps the cookie); the CSRF header every cookie write must send."""
    r = await client.post(f"{API}/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"X-CSRF-Token": r.json()["csrf_token"]}


async def _admin_writes(client: httpx.AsyncClient, headers: dict[str, str], alice: Account, tag: str) -> None:
    """One write of each audited kind: credit, settings, the global pause, a global suppression, a new user."""
    calls: list[tuple[str, str, Any]] = [
        ("POST", f"/admin/users/{alice.id}/credit", {"operation": "add", "amount": 5, "reason": "bonus"}),
        ("PATCH", "/admin/settings", {"bounce.soft_limit": 4 if tag == "a" else 5}),
        ("POST", "/admin/queue/pause-all", None),
        ("POST", "/admin/suppressions", {"email": f"blocked-{tag}@example.com"}),
        ("POST", "/admin/users", {"username": f"new-{tag}", "email": f"new-{tag}@example.com", "password": PASSWORD}),
    ]
    for method, path, body in calls:
        r = await client.request(method, f"{API}{path}", json=body, headers=headers)
        assert r.status_code < 300, (path, r.text)


ACTIONS = ("credit.adjust", "settings.update", "queue.pause_all", "suppression.add", "user.create")


async def _kinds(sessionmaker: Any) -> dict[str, list[str]]:
    async with unit_of_work(sessionmaker) as session:
        rows = (await session.execute(select(AuditLog.action, AuditLog.actor_kind).order_by(AuditLog.id))).all()
    found: dict[str, list[str]] = {}
    for action, kind in rows:
        if action in ACTIONS:
            found.setdefault(action, []).append(kind)
    return found


async def test_console_writes_are_audited_as_session_and_token_writes_as_token(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice = await make_account(sessionmaker, "alice")

    await _admin_writes(client, await _console_headers(client, "root"), alice, "a")
    client.cookies.clear()
    await _admin_writes(client, admin.headers, alice, "b")

    assert await _kinds(sessionmaker) == {action: ["session", "token"] for action in ACTIONS}
