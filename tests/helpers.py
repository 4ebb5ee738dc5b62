"""Test helpers that go through the real services (no mocks of our own code)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.db.session import unit_of_work
from edm.settings import Settings
from edm.users.models import Role
from edm.users.service import create_token, create_user

PASSWORD = "correct horse battery"


def settings_for(db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"env": "test", "database_url": db_url, "secret_key": "t" * 40,
                                 "public_url": "http://edm.test"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Account:
    id: int
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_account(
    sessionmaker: async_sessionmaker[AsyncSession], username: str, *, role: str = Role.USER, credit: int = 0,
    scope: str = "write",
) -> Account:
    async with unit_of_work(sessionmaker) as session:
        user = await create_user(session, username=username, email=f"{username}@example.com", password=PASSWORD,
                                 role=role, credit=credit)
        token, _ = await create_token(session, user_id=user.id, name="tests", scope=scope)
        return Account(user.id, user.username, token)


@asynccontextmanager
async def api_client(db_url: str, engine: AsyncEngine, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the real ASGI app (with its lifespan) over the given engine."""
    app = create_app(settings_for(db_url, **overrides), engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
            yield client


def expect_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The §16.1 error body of `r`, after checking its status and machine code."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert body["code"] == code, body
    return body


async def create_contact(client: httpx.AsyncClient, who: Account, email: str, **fields: Any) -> dict[str, Any]:
    """A contact created through the API (201 checked)."""
    r = await client.post("/api/v1/contacts", json={"email": email, **fields}, headers=who.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def create_tag(client: httpx.AsyncClient, who: Account, name: str, parent_id: int | None = None) -> int:
    """A tag created through the API (201 checked); its id."""
    r = await client.post("/api/v1/tags", json={"name": name, "parent_id": parent_id}, headers=who.headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])
