"""Shared fixtures: a clean, migrated database per test on SQLite always, and on PostgreSQL whenever
EDM_TEST_DATABASE_URL is set (CI always sets it). Tests that take `db` run once per backend."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm import clock
from edm.db.engine import make_engine, make_sessionmaker
from edm.db.migrate import upgrade
from edm.db.models import metadata
from edm.providers.fake import FakeAdapter

PG_URL = os.environ.get("EDM_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(autouse=True)
def _real_clock() -> Iterator[None]:
    clock.reset()
    FakeAdapter.reset()
    yield
    clock.reset()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_migrated() -> str:
    upgrade(PG_URL)
    return PG_URL


def _truncate_pg(url: str) -> None:
    engine = create_sync_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=None)
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A plain database URL to an empty, migrated database."""
    if request.param == "sqlite":
        target = tmp_path / f"edm-{uuid.uuid4().hex[:8]}.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url = request.getfixturevalue("pg_migrated")
    _truncate_pg(url)
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(db_url, pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)
