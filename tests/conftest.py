"""Shared fixtures: a clean, migrated database per test on SQLite always, and on PostgreSQL whenever
EDM_TEST_DATABASE_URL is set (CI always sets it). Tests that take `db` run once per backend.

Under pytest-xdist every worker process gets a PostgreSQL database of its own, named after the given one
(`edm_ci_gw0`, `edm_ci_gw1`, …), created fresh and migrated when the worker first needs it and dropped when
the worker ends."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm import clock
from edm.db.engine import make_engine, make_sessionmaker
from edm.migrations.migrate import upgrade
from edm.models import metadata
from edm.providers.fake import FakeAdapter
from edm.security import passwords
from tests.helpers import settings_for

PG_URL = os.environ.get("EDM_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
# "gw0", "gw1", … in a pytest-xdist worker; empty in a plain run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `any_database` checks what does not depend on the database (input validation, template
    limits, upload parsing): it runs once, on PostgreSQL when the run has it (the production database), instead
    of once per backend."""
    if "postgresql" not in BACKENDS:
        return
    once = [item for item in items if item.get_closest_marker("any_database") and _backend(item) == "sqlite"]
    if once:
        config.hook.pytest_deselected(items=once)
        dropped = set(once)
        items[:] = [item for item in items if item not in dropped]


def _backend(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("db_url") if callspec is not None else None


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Process-wide switches back to their test defaults: the real clock, an empty fake provider, and the cheap
    password hashing of a test environment (a test that built production settings raised it)."""
    clock.reset()
    FakeAdapter.reset()
    passwords.configure(settings_for("sqlite://"))
    yield
    clock.reset()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


class PgDatabase:
    """This process's PostgreSQL test database, and the cheapest way found to empty it between tests.

    TRUNCATE of all 35 tables took 0.4-0.9 s per test (it replaces every table's files). DELETE of the same
    tables, with the triggers and foreign-key checks off for the moment (session_replication_role = replica),
    and the id sequences set back to their start, takes a few milliseconds on the handful of rows a test
    leaves; all of it runs server-side in one round trip. A test that left a big table (BIG_TABLE_ROWS or
    more rows) gets the TRUNCATE instead, which does not leave that many dead rows behind. Only a superuser
    may switch triggers off: a database user that is not one gets the TRUNCATE every time."""

    BIG_TABLE_ROWS = 20_000

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = psycopg.connect(url, autocommit=True)
        tables = [table.name for table in metadata.sorted_tables]
        superuser = self._conn.execute("SELECT current_setting('is_superuser') = 'on'").fetchone()
        if superuser and superuser[0]:
            sequences = self._conn.execute(
                "SELECT format('%I.%I', schemaname, sequencename), start_value FROM pg_sequences"
                " WHERE schemaname = current_schema()"
            ).fetchall()
            self._reset_sql = _reset_statement(tables, sequences, self.BIG_TABLE_ROWS)
        else:
            self._reset_sql = _truncate_statement(tables)

    def reset(self) -> None:
        self._conn.execute(self._reset_sql)

    def close(self) -> None:
        self._conn.close()


def _reset_statement(tables: list[str], sequences: list[tuple[str, int]], big_rows: int) -> str:
    """One DO block that empties `tables` and restarts `sequences` (see PgDatabase)."""
    quoted = [f'"{name}"' for name in tables]
    any_big = " OR ".join(f"EXISTS (SELECT 1 FROM {t} OFFSET {big_rows - 1})" for t in quoted)
    deletes = " ".join(f"DELETE FROM {t};" for t in quoted)
    restarts = " ".join(f"PERFORM setval('{name}', {start}, false);" for name, start in sequences)
    return (
        f"DO $reset$ BEGIN IF {any_big} THEN {_truncate_statement(tables)}; "
        f"ELSE SET LOCAL session_replication_role = replica; {deletes} {restarts} END IF; END $reset$"
    )


def _truncate_statement(tables: list[str]) -> str:
    return "TRUNCATE " + ", ".join(f'"{name}"' for name in tables) + " RESTART IDENTITY CASCADE"


def _worker_database_url(base_url: str, worker: str) -> str:
    """A fresh, empty database for xdist worker `worker`, named after `base_url`'s: `<name>_<worker>`."""
    base = make_url(base_url)
    url = base.set(database=f"{base.database}_{worker}")
    with _maintenance_connection(base_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{url.database}"')
        # A test database need not survive a crash of the server: a commit that does not wait for its WAL flush
        # returns in about half the time here (0.25 against 0.45 ms), and the tests commit hundreds of thousands of
        # times. What a commit makes visible, and when, is unchanged. The tests that crash or restart a server use
        # clusters of their own.
        conn.execute(f'ALTER DATABASE "{url.database}" SET synchronous_commit = off')
    return url.render_as_string(hide_password=False)


def _drop_database(base_url: str, url: str) -> None:
    with _maintenance_connection(base_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


def _maintenance_connection(base_url: str) -> psycopg.Connection[tuple[object, ...]]:
    maintenance = make_url(base_url).set(database="postgres").render_as_string(hide_password=False)
    return psycopg.connect(maintenance, autocommit=True)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    url = _worker_database_url(PG_URL, XDIST_WORKER) if XDIST_WORKER else PG_URL
    upgrade(url)
    database = PgDatabase(url)
    yield database
    database.close()
    if XDIST_WORKER:
        _drop_database(PG_URL, url)


@pytest.fixture(scope="session")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this process's SQLite test database lives: one path for every test, so that one engine serves them all
    (see `engine`); each test gets a fresh copy of the migrated template there."""
    return tmp_path_factory.mktemp("live") / "edm.db"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A plain database URL to an empty, migrated database."""
    if request.param == "sqlite":
        target: Path = request.getfixturevalue("sqlite_path")
        # A new file, never the old one rewritten: a connection a test left open keeps reading its own (unlinked)
        # file instead of a half-copied one. The old write-ahead log must go with it.
        for stale in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
            stale.unlink(missing_ok=True)
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    database: PgDatabase = request.getfixturevalue("pg_database")
    database.reset()
    return database.url


# One engine per database URL for the whole process, its pool emptied after each test. SQLAlchemy caches compiled
# statements per engine: a new engine per test compiled every statement of every test again, ~10 % of the CPU of the
# tests that send (profiled with py-spy). The pool must still be per test: asyncpg's connections belong to the event
# loop that opened them, and each test has its own loop.
_ENGINES: dict[str, AsyncEngine] = {}


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = _ENGINES.get(db_url)
    if eng is None:
        eng = _ENGINES[db_url] = make_engine(db_url, pool_size=5)
    yield eng
    await eng.dispose()  # closes this test's connections; the engine, and its statement cache, stay


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)
