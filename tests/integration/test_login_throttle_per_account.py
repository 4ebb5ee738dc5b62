"""The login throttle counts failures per account, whichever identifier was typed: ten failures spread over
the username and the email (in any case) block the account, not twenty. An identifier that names no account
is throttled by itself. The count lives in the database, so it holds across API processes."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from edm import clock
from edm.app import create_app
from edm.models.users import LoginAttempt
from tests.helpers import PASSWORD, make_account, settings_for
from tests.helpers import expect_error as _error

API = "/api/v1"
WRONG = "not the password"
Client = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def client_from(db_url: str, engine: Any) -> AsyncIterator[Client]:
    """Clients from different IPs on two app instances over one database, like two API processes behind a
    proxy: the per-IP limit never interferes, and the count is shared only through the database."""
    apps = [create_app(settings_for(db_url), engine=engine) for _ in range(2)]
    async with AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
        made = 0

        async def new(ip: str) -> httpx.AsyncClient:
            nonlocal made
            transport = httpx.ASGITransport(app=apps[made % 2], client=(ip, 50000))
            made += 1
            return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://edm.test"))

        yield new


async def _login(client_from: Client, ip: str, login: str, password: str) -> httpx.Response:
    c = await client_from(ip)
    return await c.post(f"{API}/auth/login", json={"username": login, "password": password})


async def test_failures_under_the_username_and_the_email_add_up(client_from: Client, sessionmaker: Any) -> None:
    rob = await make_account(sessionmaker, "rob")
    spellings = ["rob", "rob@example.com", "ROB", "Rob@Example.COM", " rob@EXAMPLE.com "]
    for i in range(10):
        _error(await _login(client_from, f"10.0.0.{i}", spellings[i % len(spellings)], WRONG), 401, "unauthenticated")
    for spelling in ("rob", "rob@example.com"):
        r = await _login(client_from, "10.0.9.9", spelling, PASSWORD)
        _error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 900
    async with sessionmaker() as session:
        recorded = set(await session.scalars(select(LoginAttempt.user_id)))
    assert recorded == {rob.id}, "each attempt records the account it resolved to"

    clock.shift(dt.timedelta(minutes=15, seconds=1))
    assert (await _login(client_from, "10.0.9.9", "rob@example.com", PASSWORD)).status_code == 200


async def test_other_accounts_and_unknown_identifiers_are_counted_apart(client_from: Client, sessionmaker: Any) -> None:
    await make_account(sessionmaker, "rob")
    await make_account(sessionmaker, "amy")
    for i in range(10):
        _error(await _login(client_from, f"10.0.1.{i}", "ghost@example.com", WRONG), 401, "unauthenticated")
    _error(await _login(client_from, "10.0.2.1", "ghost@example.com", WRONG), 429, "rate_limited")
    for i in range(9):
        await _login(client_from, f"10.0.3.{i}", "rob" if i % 2 else "rob@example.com", WRONG)
    assert (await _login(client_from, "10.0.4.1", "amy", PASSWORD)).status_code == 200
    assert (await _login(client_from, "10.0.4.2", "rob", PASSWORD)).status_code == 200, "9 failures do not block"


async def test_a_success_under_either_identifier_clears_the_account_count(
    client_from: Client, sessionmaker: Any
) -> None:
    await make_account(sessionmaker, "rob")
    for i in range(9):
        await _login(client_from, f"10.0.5.{i}", "rob", WRONG)
    assert (await _login(client_from, "10.0.6.1", "ROB@example.com", PASSWORD)).status_code == 200
    for i in range(9):
        await _login(client_from, f"10.0.7.{i}", "rob", WRONG)
    assert (await _login(client_from, "10.0.8.1", "rob", PASSWORD)).status_code == 200
