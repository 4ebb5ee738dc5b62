"""The engine's connection settings (docs/deploy.md#connections): the lock and statement timeouts reach every
connection PostgreSQL opens for EDM (not behind PgBouncer, which would refuse them), a statement they cancel is
reported as the database being unavailable with its SQLSTATE, and the pool never lends more than pool + overflow."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from edm.db.availability import database_unavailable, log_failure, sqlstate
from edm.db.engine import create_engine, make_engine
from tests.helpers import settings_for

URL = os.environ.get("EDM_TEST_DATABASE_URL", "")
pytestmark = pytest.mark.skipif(not URL, reason="needs EDM_TEST_DATABASE_URL (PostgreSQL)")


async def _show(engine, name: str) -> str:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return str(await conn.scalar(text(f"SHOW {name}")))


async def test_the_timeouts_reach_each_connection_unless_behind_pgbouncer() -> None:
    engine = create_engine(settings_for(URL, db_lock_timeout=1.5, db_statement_timeout=30), application_name="edm-x")
    bounced = create_engine(settings_for(URL, db_lock_timeout=1.5, db_pgbouncer=True))
    try:
        assert await _show(engine, "lock_timeout") == "1500ms"
        assert await _show(engine, "statement_timeout") == "30s"
        assert await _show(engine, "application_name") == "edm-x"
        assert await _show(bounced, "lock_timeout") == "0"  # set on the role instead (docs/deploy.md#pgbouncer)
    finally:
        await engine.dispose()
        await bounced.dispose()


async def test_a_statement_the_timeout_cancels_is_an_outage_with_its_sqlstate(caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(URL, statement_timeout=0.05)
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(5)"))
    finally:
        await engine.dispose()
    assert database_unavailable(caught.value) and sqlstate(caught.value) == "57014"
    caplog.set_level(logging.WARNING, logger="edm.test")
    log_failure(logging.getLogger("edm.test"), "job.failed", caught.value, job="x")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert (getattr(record, "sqlstate", None), getattr(record, "database_unavailable", None)) == ("57014", True)


async def test_a_process_never_lends_more_than_pool_plus_overflow() -> None:
    engine = make_engine(URL, pool_size=2, max_overflow=1, pool_timeout=0.2)
    try:
        held = [await engine.connect() for _ in range(3)]
        with pytest.raises(PoolTimeout) as caught:
            await asyncio.wait_for(engine.connect(), timeout=10)
        assert database_unavailable(caught.value)  # a 503 / a retried warning, like an outage
        for conn in held:
            await conn.close()
    finally:
        await engine.dispose()
