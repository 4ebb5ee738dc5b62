"""PostgreSQL restarted in the middle of a send (docs/deploy.md#when-the-database-has-a-bad-day).

The test starts a PostgreSQL cluster of its own, migrates it with `edm db upgrade`, and runs a real `edm serve` and
a real `edm worker` on it. A task is created and scheduled through the server's API; once mail is flowing to the
SMTP sink, the cluster is stopped (`pg_ctl stop -m fast`: every connection is cut, as in a restart), the server
is seen answering `/readyz` 503 meanwhile, and the cluster is started again. Nothing is restarted on EDM's side.

Then: both processes are still running and answer again by themselves, the task completes, every recipient was
received exactly once except SubTasks recorded `uncertain` (in doubt, never resent: each of those at most once),
which are abandoned through the API as a user would; the statistics equal a recount of the rows and the credit
ledger equals the balance.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.engine import make_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.models.tasks import SubTask
from tests import factories
from tests.acceptance.postgres_tools import cluster, free_port
from tests.acceptance.workers import start_server, start_worker, stop, until_serving
from tests.helpers import Account, make_account, run_cli_async
from tests.integration.dispatch.conftest import DispatchKit

RECIPIENTS = 150
CREDIT = 10_000


@pytest.mark.slow
async def test_postgres_restarted_mid_send_nothing_lost_nothing_sent_twice(db_url: str, tmp_path: Path) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: the test restarts a PostgreSQL cluster of its own")
    with cluster() as pg, SmtpSink() as sink:
        url = pg.create_database("edm")
        migrated = await run_cli_async(url, "db", "upgrade")
        assert migrated.returncode == 0, migrated.stderr
        engine = make_engine(url, pool_size=2)
        sessionmaker = make_sessionmaker(engine)
        try:
            alice = await make_account(sessionmaker, "alice", credit=CREDIT)
            content = await _content(sessionmaker, alice, sink)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            server = start_server(url, port=port, log=tmp_path / "serve.log")
            worker = start_worker(url, concurrency=4, log=tmp_path / "worker.log")
            try:
                await until_serving(base, server, tmp_path / "serve.log")
                async with httpx.AsyncClient(base_url=base, headers=alice.headers, timeout=30) as api:
                    task_id = await _schedule(api, content)
                    await _until(lambda: len(sink.messages) >= RECIPIENTS // 5, timeout=120, what="mail flowing")

                    await asyncio.to_thread(pg.stop, "fast")
                    ready = await api.get("/readyz")
                    assert ready.status_code == 503 and ready.json()["reason"] == "database unreachable"
                    await asyncio.sleep(1.0)  # the outage lasts: loops fail, log and retry
                    await asyncio.to_thread(pg.start)

                    kit = DispatchKit(url, sessionmaker)
                    await _until_settled(kit, task_id)
                    uncertain = await _public_ids(sessionmaker, task_id, "uncertain")
                    if uncertain:  # in doubt after the cut: never resent; the user decides (here: abandon)
                        abandoned = await api.post(f"/api/v1/tasks/{task_id}/uncertain/abandon")
                        assert abandoned.status_code == 200, abandoned.text
                    await _until_api(api, task_id, "completed")
                    assert server.poll() is None and worker.poll() is None, "both processes survived"
                    stats = await kit.stats(task_id)  # equal to a recount of the rows
                    sent = await _public_ids(sessionmaker, task_id, "sent")
                    balance, ledger = await kit.credit(alice.id)
            finally:
                stop([server, worker])
        finally:
            await engine.dispose()

    received = sink.count_by_subtask()
    assert max(received.values()) == 1, "nothing sent twice"
    assert stats["sent"] + len(uncertain) == RECIPIENTS, "nothing lost: every recipient sent, or flagged uncertain"
    assert set(received) - uncertain == sent, "every recipient recorded sent was received, exactly once"
    assert balance == ledger == CREDIT - stats["sent"], "credit charged for what was sent, refunded for the rest"
    worker_log = (tmp_path / "worker.log").read_text()
    assert '"database_unavailable": true' in worker_log, "the worker reported the outage"
    assert "worker.loop_failed" not in worker_log


class _Content:
    def __init__(self, sender: int, template: int) -> None:
        self.sender, self.template = sender, template


async def _content(sessionmaker: async_sessionmaker[AsyncSession], alice: Account, sink: SmtpSink) -> _Content:
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, alice.id)
        template = await factories.template(session, alice.id)
        await factories.contacts(session, alice.id, RECIPIENTS)
        await factories.service(
            session,
            DispatchKit("postgresql://", sessionmaker).settings,
            "relay",
            provider="smtp",
            options={"host": sink.host, "port": sink.port, "security": "none"},
            sending_interval_seconds=0.01,  # at most 100 a second: the restart lands mid-send
            max_concurrency=16,  # an SMTP claim takes at most one recipient per free connection
            map_to=[alice.id],
        )
    return _Content(sender, template)


async def _schedule(api: httpx.AsyncClient, content: _Content) -> int:
    body = {
        "name": "through a restart",
        "sender_id": content.sender,
        "templates": [{"template_id": content.template}],
        "recipient_rule": {"type": "all_contacts"},
    }
    created = await api.post("/api/v1/tasks", json=body)
    assert created.status_code == 201, created.text
    task_id = int(created.json()["id"])
    scheduled = await api.post(f"/api/v1/tasks/{task_id}/schedule", json={"now": True})
    assert scheduled.status_code == 200, scheduled.text
    return task_id


async def _until(predicate, *, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)


async def _until_settled(kit: DispatchKit, task_id: int, timeout: float = 180) -> None:
    """Until no SubTask is pending or allocated (the database may still be coming up: its errors are retried)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if await kit.count(task_id, "pending", "allocated") == 0:
                return
        except Exception:  # noqa: BLE001 - the cluster is starting; the engine reconnects on the next try
            pass
        assert asyncio.get_running_loop().time() < deadline, "the task's recipients never settled"
        await asyncio.sleep(0.2)


async def _until_api(api: httpx.AsyncClient, task_id: int, status: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await api.get(f"/api/v1/tasks/{task_id}")
        if r.status_code == 200 and r.json()["status"] == status:
            return
        assert asyncio.get_running_loop().time() < deadline, f"task not {status}: {r.status_code} {r.text[:300]}"
        await asyncio.sleep(0.2)


async def _public_ids(sessionmaker: async_sessionmaker[AsyncSession], task_id: int, state: str) -> set[str]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(SubTask.public_id).where(SubTask.task_id == task_id, SubTask.send_state == state)
        )
        return {str(r) for r in rows}
