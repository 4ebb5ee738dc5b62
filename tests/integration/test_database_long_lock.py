"""A long lock on a hot table (docs/deploy.md#when-the-database-has-a-bad-day): EDM slows down and reports it,
and corrupts nothing.

Mid-send, the test takes an ACCESS EXCLUSIVE lock on `subtasks` (what an `ALTER TABLE` or a `VACUUM FULL` run by
hand would hold) for a few seconds. With EDM_DB_LOCK_TIMEOUT, PostgreSQL gives up on EDM's statements waiting behind
it: an API request answers 503 `unavailable` with Retry-After while the lock is still held instead of hanging, and
logs the lock's SQLSTATE (55P03); the worker's loops log warnings, not tracebacks, and keep trying. Once the lock
goes, the task completes: every recipient received exactly once, none left uncertain, the statistics equal to a
recount of the rows and the credit ledger equal to the balance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.db.engine import create_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from tests import factories
from tests.helpers import expect_error, make_account, settings_for
from tests.integration.dispatch.conftest import DispatchKit

RECIPIENTS = 30
LOCK_TIMEOUT = 0.5  # seconds
LOCK_HELD = 2.5  # seconds the lock is held after the worker first reported it


async def test_a_long_lock_slows_edm_down_and_is_reported_never_corrupts(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's lock_timeout (SQLite waits on its busy timeout, one writer at a time)")
    caplog.set_level(logging.WARNING)
    settings = settings_for(db_url, db_lock_timeout=LOCK_TIMEOUT, time_scale=0.05)
    edm_engine = create_engine(settings, pool_size=5)
    kit = DispatchKit(db_url, make_sessionmaker(edm_engine))
    direct = DispatchKit(db_url, sessionmaker)
    alice = await make_account(sessionmaker, "alice", credit=1000)
    try:
        with SmtpSink() as sink:
            async with unit_of_work(sessionmaker) as session:
                sender = await factories.sender(session, alice.id)
                template = await factories.template(session, alice.id)
                await factories.contacts(session, alice.id, RECIPIENTS)
                await factories.service(
                    session,
                    settings,
                    "relay",
                    provider="smtp",
                    options={"host": sink.host, "port": sink.port, "security": "none"},
                    sending_interval_seconds=0.1,  # the send lasts a few seconds: the lock lands in the middle
                    map_to=[alice.id],
                )
                task_id = await factories.task(
                    session, alice.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
                )
            assert await direct.generate(task_id) is not None

            app = create_app(settings, engine=edm_engine)
            async with app.router.lifespan_context(app), _client(app) as client:
                async with kit.worker(concurrency=2, run_jobs=True):
                    await kit.wait_for(lambda: _sent_at_least(direct, task_id, 3), timeout=30, what="sending")
                    async with engine.connect() as lock:
                        await lock.execute(text("LOCK TABLE subtasks IN ACCESS EXCLUSIVE MODE"))
                        # The API gives up after the lock timeout and says so, while the lock is still held.
                        answer = await asyncio.wait_for(
                            client.get(f"/api/v1/tasks/{task_id}/subtasks", headers=alice.headers), timeout=20
                        )
                        expect_error(answer, 503, "unavailable")
                        assert answer.headers["Retry-After"] == "5"
                        await kit.wait_for(lambda: _reported(caplog, "edm.worker"), timeout=20, what="worker warning")
                        await kit.hold(LOCK_HELD)
                        assert len(sink.messages) < RECIPIENTS, "the lock held the sending back"
                        await lock.rollback()
                    await kit.wait_for(lambda: _completed(direct, task_id), timeout=60, what="task completed")
    finally:
        await edm_engine.dispose()

    received = sink.count_by_subtask()
    assert len(received) == RECIPIENTS and set(received.values()) == {1}, "each recipient exactly once"
    assert await direct.count(task_id, "sent") == RECIPIENTS, "nothing uncertain, nothing failed"
    stats = await direct.stats(task_id)  # equal to a recount of the rows
    assert stats["sent"] == RECIPIENTS
    balance, ledger = await direct.credit(alice.id)
    assert balance == ledger == 1000 - RECIPIENTS

    http = [r for r in caplog.records if r.getMessage() == "http.database_unavailable"]
    assert http and all(getattr(r, "sqlstate", None) == "55P03" for r in http)
    worker = [r for r in caplog.records if r.name == "edm.worker" and r.levelno >= logging.WARNING]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in worker), "warnings, not tracebacks"


@contextlib.asynccontextmanager
async def _client(app: Any) -> Any:
    import httpx

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
        yield client


async def _sent_at_least(kit: DispatchKit, task_id: int, n: int) -> bool:
    return await kit.count(task_id, "sent") >= n


async def _completed(kit: DispatchKit, task_id: int) -> bool:
    return await kit.status(task_id) == "completed"


async def _reported(caplog: pytest.LogCaptureFixture, logger: str) -> bool:
    return any(r.name == logger and getattr(r, "sqlstate", None) == "55P03" for r in caplog.records)
