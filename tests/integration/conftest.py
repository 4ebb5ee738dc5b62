"""Fixtures shared by the API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.helpers import api_client


@pytest.fixture
async def client(db_url: str, engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the real ASGI app over this test's database."""
    async with api_client(db_url, engine) as c:
        yield c
