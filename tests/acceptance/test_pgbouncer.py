"""EDM behind PgBouncer in transaction mode (docs/deploy.md#pgbouncer).

A real PgBouncer (two server connections) sits in front of the test database. With EDM_DB_PGBOUNCER the API
and a worker with several dispatch loops and every job share those two connections, transaction by
transaction, and a task is sent to a real SMTP sink, each recipient once. Without the setting, the same
engine fails at once: asyncpg's named prepared statements of one client connection meet another's on a shared
server connection.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.db.engine import make_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from tests import factories
from tests.acceptance.postgres_tools import pgbouncer
from tests.helpers import api_client, make_account
from tests.integration.dispatch.conftest import DispatchKit

RECIPIENTS = 30


async def _concurrent_transactions(engine: AsyncEngine, clients: int = 6, rounds: int = 4) -> None:
    async def client(i: int) -> None:
        for _ in range(rounds):
            async with engine.begin() as conn:
                await conn.execute(text("SELECT count(*) FROM tags WHERE id > :i"), {"i": i})
                await conn.execute(text("SELECT count(*) FROM contacts WHERE id > :i"), {"i": i})

    await asyncio.gather(*(client(i) for i in range(clients)))


@pytest.mark.slow
async def test_edm_works_through_pgbouncer_in_transaction_mode(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PgBouncer pools PostgreSQL connections")
    server = make_url(db_url)
    with pgbouncer(server.host or "127.0.0.1", server.port or 5432, pool_size=2) as port:
        bounced = server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

        plain = make_engine(bounced, pool_size=6)
        try:
            with pytest.raises(Exception, match="prepared statement"):
                await _concurrent_transactions(plain)
        finally:
            await plain.dispose()

        engine = make_engine(bounced, pool_size=6, pgbouncer=True)
        try:
            await _concurrent_transactions(engine)
            await _send_a_task_through(bounced, engine, direct=sessionmaker)
        finally:
            await engine.dispose()


async def _send_a_task_through(url: str, engine: AsyncEngine, *, direct: async_sessionmaker[AsyncSession]) -> None:
    bounced = make_sessionmaker(engine)
    alice = await make_account(bounced, "alice", credit=10_000)
    with SmtpSink() as sink:
        kit = DispatchKit(url, bounced)
        async with api_client(url, engine) as client:
            async with unit_of_work(bounced) as session:
                sender = await factories.sender(session, alice.id)
                template = await factories.template(session, alice.id)
                await factories.contacts(session, alice.id, RECIPIENTS)
                await factories.service(
                    session,
                    kit.settings,
                    "relay",
                    provider="smtp",
                    options={"host": sink.host, "port": sink.port, "security": "none"},
                    map_to=[alice.id],
                )
            body = {
                "name": "through the pooler",
                "sender_id": sender,
                "templates": [{"template_id": template}],
                "recipient_rule": {"type": "all_contacts"},
            }
            created = await client.post("/api/v1/tasks", json=body, headers=alice.headers)
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            schedule = f"/api/v1/tasks/{task_id}/schedule"
            scheduled = await client.post(schedule, json={"now": True}, headers=alice.headers)
            assert scheduled.status_code == 200, scheduled.text

            async with kit.worker(concurrency=4, run_jobs=True):
                await _until_completed(client, alice.headers, task_id, timeout=120)
            stats = (await client.get(f"/api/v1/tasks/{task_id}/stats", headers=alice.headers)).json()
            assert stats["sent"] == RECIPIENTS, stats

    received = sink.count_by_subtask()
    assert len(received) == RECIPIENTS and set(received.values()) == {1}, "each recipient exactly once"
    # What the pooled connections wrote is what the server holds, and the statistics agree with the rows.
    assert (await DispatchKit(url, direct).stats(task_id))["sent"] == RECIPIENTS


async def _until_completed(client, headers, task_id: int, *, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Polls the API a few times a second: the worker runs on this event loop and must not be starved."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await client.get(f"/api/v1/tasks/{task_id}", headers=headers)
        assert r.status_code == 200, r.text
        if r.json()["status"] == "completed":
            return
        assert asyncio.get_running_loop().time() < deadline, f"task still {r.json()['status']}"
        await asyncio.sleep(0.25)
