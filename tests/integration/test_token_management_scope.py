"""Managing API tokens needs a write-scope token or the console session. A read-scope token — the kind handed
to a reporting script — can list its owner's tokens but cannot mint a new one or revoke the others (403
`forbidden`); a read_only user manages its tokens from its console session, and gets read tokens only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.users import ApiToken, Role
from edm.users.service import create_token
from tests.helpers import PASSWORD, Account, api_client, make_account
from tests.helpers import expect_error as _error

API = "/api/v1"


@pytest.fixture
async def client(db_url: str, engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(db_url, engine) as c:
        yield c


async def _second_token(sessionmaker: async_sessionmaker[AsyncSession], who: Account, scope: str) -> tuple[str, int]:
    async with unit_of_work(sessionmaker) as session:
        token, row = await create_token(session, user_id=who.id, name=f"{scope} script", scope=scope)
        return token, row.id


async def _tokens_of(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> list[ApiToken]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)))


async def test_a_read_token_cannot_create_or_revoke_tokens_but_can_list_them(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")  # her first token has write scope
    read_token, _ = await _second_token(sessionmaker, alice, "read")
    reader = {"Authorization": f"Bearer {read_token}"}

    _error(
        await client.post(f"{API}/me/tokens", json={"name": "escalate", "scope": "write"}, headers=reader),
        403,
        "forbidden",
    )
    _error(
        await client.post(f"{API}/me/tokens", json={"name": "another", "scope": "read"}, headers=reader),
        403,
        "forbidden",
    )
    write_row = (await _tokens_of(sessionmaker, alice.id))[0]
    _error(await client.delete(f"{API}/me/tokens/{write_row.id}", headers=reader), 403, "forbidden")

    listed = await client.get(f"{API}/me/tokens", headers=reader)
    assert listed.status_code == 200 and len(listed.json()["items"]) == 2
    rows = await _tokens_of(sessionmaker, alice.id)
    assert len(rows) == 2 and all(r.revoked_at is None for r in rows), "nothing was created or revoked"
    assert (await client.get(f"{API}/me", headers=alice.headers)).status_code == 200, "the write token still works"


async def test_a_write_token_creates_and_revokes_tokens(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    created = await client.post(f"{API}/me/tokens", json={"name": "deploy", "scope": "write"}, headers=alice.headers)
    assert created.status_code == 201 and created.json()["scope"] == "write"
    new = {"Authorization": f"Bearer {created.json()['token']}"}
    assert (await client.get(f"{API}/me", headers=new)).status_code == 200
    assert (await client.delete(f"{API}/me/tokens/{created.json()['id']}", headers=alice.headers)).status_code == 204
    _error(await client.get(f"{API}/me", headers=new), 401, "invalid_token")


async def test_a_read_only_user_manages_tokens_from_its_session_and_gets_read_tokens(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    viewer = await make_account(sessionmaker, "viewer", role=Role.READ_ONLY)
    _error(
        await client.post(f"{API}/me/tokens", json={"name": "t", "scope": "read"}, headers=viewer.headers),
        403,
        "forbidden",
    )  # its tokens are read tokens: they cannot manage tokens either

    login = await client.post(f"{API}/auth/login", json={"username": "viewer", "password": PASSWORD})
    assert login.status_code == 200, login.text
    csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
    created = await client.post(f"{API}/me/tokens", json={"name": "report", "scope": "write"}, headers=csrf)
    assert created.status_code == 201, created.text
    assert created.json()["scope"] == "read", "a read_only user only gets read tokens"
    revoked = await client.delete(f"{API}/me/tokens/{created.json()['id']}", headers=csrf)
    assert revoked.status_code == 204
