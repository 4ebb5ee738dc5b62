"""`database_unavailable`: which failures are an outage (503, retry later) and which stay a bug (500).

Every exception here is produced by the real driver or library doing the real thing (a refused connection, a
file that cannot be opened, a pool with no connection left), not built by hand, except asyncio's aggregate of
several refused addresses, which needs a host name resolving to several addresses."""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import create_async_engine

from edm.db.availability import database_unavailable
from edm.db.engine import make_engine


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    yield path


def raised(action: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as caught:
        action()
    return caught.value


# --- outages -------------------------------------------------------------------------------------------------


def test_a_refused_connection_is_an_outage(closed_port: int) -> None:
    assert database_unavailable(raised(lambda: socket.create_connection(("127.0.0.1", closed_port))))


def test_psycopg_refused_through_sqlalchemy_is_an_outage(closed_port: int) -> None:
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/edm")
    exc = raised(engine.connect)
    assert isinstance(exc, OperationalError) and database_unavailable(exc)


async def test_asyncpg_refused_through_sqlalchemy_is_an_outage(closed_port: int) -> None:
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port}/edm")
    try:
        with pytest.raises(Exception) as caught:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert isinstance(caught.value, OSError)  # asyncpg's socket error, not wrapped by SQLAlchemy
    assert database_unavailable(caught.value)


def test_a_host_that_does_not_resolve_is_an_outage() -> None:
    assert database_unavailable(raised(lambda: socket.getaddrinfo("edm-db.invalid", 5432)))


def test_asyncio_aggregate_of_refused_addresses_is_an_outage() -> None:
    # asyncio.create_connection's own wording when every address of a host refused in a different way
    assert database_unavailable(
        OSError(
            "Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432), "
            "[Errno 111] Connect call failed ('127.0.0.1', 5432)"
        )
    )


def test_sqlite_file_that_cannot_be_opened_is_an_outage(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "edm.db"
    assert database_unavailable(raised(lambda: sqlite3.connect(missing)))
    engine = create_engine(f"sqlite:///{missing}")
    exc = raised(engine.connect)
    assert isinstance(exc, OperationalError) and database_unavailable(exc)


def test_sqlite_busy_past_its_timeout_is_an_outage(sqlite_file: Path) -> None:
    writer = sqlite3.connect(sqlite_file, isolation_level=None)
    other = sqlite3.connect(sqlite_file, timeout=0, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert database_unavailable(raised(lambda: other.execute("BEGIN IMMEDIATE")))
    finally:
        writer.close()
        other.close()


def test_a_pool_with_no_connection_left_is_an_outage(sqlite_file: Path) -> None:
    engine = create_engine(f"sqlite:///{sqlite_file}", pool_size=1, max_overflow=0, pool_timeout=0.05)
    with engine.connect():
        exc = raised(engine.connect)
    engine.dispose()
    assert isinstance(exc, PoolTimeout) and database_unavailable(exc)


# --- bugs ----------------------------------------------------------------------------------------------------


def test_sqlite_errors_in_the_sql_are_not_an_outage(sqlite_file: Path) -> None:
    engine = create_engine(f"sqlite:///{sqlite_file}")
    with engine.connect() as conn:
        syntax = raised(lambda: conn.execute(text("SELEKT 1")))
        conn.rollback()
        missing = raised(lambda: conn.execute(text("SELECT * FROM nowhere")))
        conn.rollback()
        conn.execute(text("INSERT INTO t (id) VALUES (1)"))
        duplicate = raised(lambda: conn.execute(text("INSERT INTO t (id) VALUES (1)")))
    engine.dispose()
    # sqlite3 reports SQL errors as OperationalError too: its result code tells them from an outage
    assert isinstance(syntax, OperationalError) and not database_unavailable(syntax)
    assert isinstance(missing, OperationalError) and not database_unavailable(missing)
    assert isinstance(duplicate, IntegrityError) and not database_unavailable(duplicate)


def test_file_and_programming_errors_are_not_an_outage(tmp_path: Path) -> None:
    assert not database_unavailable(raised(lambda: (tmp_path / "missing.txt").read_bytes()))
    assert not database_unavailable(raised(lambda: {}["key"]))
    assert not database_unavailable(raised(lambda: int("x")))


async def test_postgres_refusing_the_sql_is_not_an_outage() -> None:
    url = os.environ.get("EDM_TEST_DATABASE_URL", "")
    if not url:
        pytest.skip("needs EDM_TEST_DATABASE_URL")
    engine = make_engine(url)  # the app's own engine (asyncpg)
    try:
        with pytest.raises(ProgrammingError) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT * FROM no_such_table_here"))
    finally:
        await engine.dispose()
    assert not database_unavailable(caught.value)
