"""kill -9 of a worker mid-send, then a restart (docs/sending.md#crashes-and-uncertain-sends): nothing lost, nothing
stuck.

SMTP cannot honour idempotency keys, so rows whose outcome is unknown become `uncertain` and are not
resent; with the fake provider in idempotent mode they go back to `pending` and are resent with the same
key (the same Message-ID).
"""

from __future__ import annotations

import asyncio
import signal

import pytest
from sqlalchemy import func, select

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.tasks.stats import recount, task_stats
from tests import factories
from tests.acceptance.workers import start_worker, workers
from tests.helpers import settings_for

RECIPIENTS = 40


async def _count(sessionmaker, *where) -> int:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(SubTask).where(*where)) or 0)


async def _until(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def _status(sessionmaker, task_id: int) -> str:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        return str(await session.scalar(select(Task.status).where(Task.id == task_id)))


async def _setup(sessionmaker, settings, service: dict) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    w = await factories.world(sessionmaker, settings, recipients=RECIPIENTS, services_=[service])
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    return task_id, w.service_ids[0]


def _need_pg(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("worker subprocesses share the database with the test: PostgreSQL")


@pytest.mark.slow
async def test_kill_9_smtp_leaves_uncertain_not_resent(db_url, sessionmaker, tmp_path):  # type: ignore[no-untyped-def]
    _need_pg(db_url)
    settings = settings_for(db_url)
    with SmtpSink() as sink:
        sink.data_delay = 3.0  # the mail is committed at the sink, the reply is slow: the kill lands here
        task_id, _ = await _setup(
            sessionmaker,
            settings,
            {
                "name": "smtp",
                "provider": "smtp",
                "max_concurrency": 4,
                "request_timeout_seconds": 5,
                "options": {"host": "127.0.0.1", "port": sink.port, "security": "none"},
            },
        )
        victim = start_worker(db_url, log=tmp_path / "victim.log")
        await _until(lambda: _has(sink, 4))
        await asyncio.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        in_flight = await _count(sessionmaker, SubTask.send_state == "allocated")
        assert in_flight >= 1, "the kill landed while sends were in flight"
        sink.data_delay = 0.0
        with workers(db_url, 1, log_dir=tmp_path):
            await _until(lambda: _final(sessionmaker, task_id), timeout=90)
            # The task does not hang silently: it says it waits for the user's decision
            # (docs/states.md#waiting-reasons).
            await _until(lambda: _waiting(sessionmaker, task_id, "uncertain_decision"), timeout=30)

    async with sessionmaker() as session:
        uncertain = await session.scalar(select(func.count()).where(SubTask.send_state == "uncertain"))
        assert uncertain == in_flight, "exactly the rows in flight at the kill are uncertain"
        stats = await task_stats(session, task_id)
        assert stats == await recount(session, task_id)
        assert stats["sent"] + stats["uncertain"] == RECIPIENTS
        assert stats["queued"] == stats["retrying"] == stats["in_flight"] == 0
    received = sink.count_by_subtask()
    assert set(received.values()) == {1}, "nothing was sent twice"
    assert len(received) == RECIPIENTS, "the uncertain ones did reach the sink once"


async def _waiting(sessionmaker, task_id: int, reason: str) -> bool:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        return await session.scalar(select(Task.waiting_reason).where(Task.id == task_id)) == reason


async def _has(sink: SmtpSink, count: int) -> bool:
    return len(sink.messages) >= count


async def _final(sessionmaker, task_id: int) -> bool:  # type: ignore[no-untyped-def]
    """Completed, or only uncertain rows left (they wait for the user's decision,
    docs/sending.md#crashes-and-uncertain-sends)."""
    status = await _status(sessionmaker, task_id)
    open_rows = await _count(sessionmaker, SubTask.task_id == task_id, SubTask.send_state.in_(("pending", "allocated")))
    return status == "completed" or open_rows == 0


@pytest.mark.slow
async def test_kill_9_idempotent_fake_is_resent_with_same_key(db_url, sessionmaker, tmp_path):  # type: ignore[no-untyped-def]
    _need_pg(db_url)
    settings = settings_for(db_url)
    task_id, service_id = await _setup(
        sessionmaker,
        settings,
        {
            "name": "esp",
            "provider": "fake",
            "max_concurrency": 4,
            "request_timeout_seconds": 5,
            "options": {"idempotent": True, "latency_ms": 2000},
        },
    )
    victim = start_worker(db_url, log=tmp_path / "victim.log")
    await _until(lambda: _positive(_count(sessionmaker, SubTask.send_state == "allocated")))
    await asyncio.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = await _ids(sessionmaker, SubTask.send_state == "allocated")
    assert killed
    async with unit_of_work(sessionmaker) as session:
        from edm.email_services.service import update_service
        from tests.factories import vault_for

        await update_service(
            session,
            vault_for(settings),
            service_id,
            values={"options": {"idempotent": True}},
            credentials=None,
            fake_allowed=True,
        )
    with workers(db_url, 1, log_dir=tmp_path):
        await _until(lambda: _completed(sessionmaker, task_id), timeout=90)
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(SubTask.id, SubTask.public_id, SubTask.message_id, SubTask.send_state).where(
                    SubTask.id.in_(killed)
                )
            )
        ).all()
        for row in rows:
            assert row.send_state == "sent"
            assert row.message_id.startswith(f"<{row.public_id}@"), "resent with the same idempotency key"
            outcomes = list(
                await session.scalars(
                    select(SendAttempt.outcome).where(SendAttempt.subtask_id == row.id).order_by(SendAttempt.id)
                )
            )
            assert outcomes == ["released", "accepted"]
        stats = await task_stats(session, task_id)
        assert stats["sent"] == RECIPIENTS and stats["uncertain"] == 0


async def _positive(awaitable) -> bool:  # type: ignore[no-untyped-def]
    return (await awaitable) > 0


async def _completed(sessionmaker, task_id: int) -> bool:  # type: ignore[no-untyped-def]
    return await _status(sessionmaker, task_id) == "completed"


async def _ids(sessionmaker, *where) -> list[int]:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        return list(await session.scalars(select(SubTask.id).where(*where)))


@pytest.mark.slow
async def test_sigterm_finishes_started_sends_and_releases_the_rest(db_url, sessionmaker, tmp_path):  # type: ignore[no-untyped-def]
    """Graceful shutdown (docs/sending.md#crashes-and-uncertain-sends): stop claiming, finish started requests, record
    them, release the claimed items that had not started (outcome `released`, attempt not counted)."""
    _need_pg(db_url)
    settings = settings_for(db_url)
    with SmtpSink() as sink:
        sink.data_delay = 1.0
        task_id, _ = await _setup(
            sessionmaker,
            settings,
            {
                # Slots at 0 s and 0.9 s: the claim takes two, the stop arrives before the second starts.
                "name": "slow",
                "provider": "smtp",
                "max_concurrency": 4,
                "sending_interval_seconds": 0.9,
                "options": {"host": "127.0.0.1", "port": sink.port, "security": "none"},
            },
        )
        proc = start_worker(db_url, log=tmp_path / "graceful.log")
        await _until(lambda: _has(sink, 1))
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 40)
        assert code == 0
    async with sessionmaker() as session:
        allocated = await session.scalar(select(func.count()).where(SubTask.send_state == "allocated"))
        assert allocated == 0, "nothing left leased to a stopped worker"
        uncertain = await session.scalar(select(func.count()).where(SubTask.send_state == "uncertain"))
        assert uncertain == 0, "started sends were finished and recorded, not abandoned"
        sent = await session.scalar(select(func.count()).where(SubTask.send_state == "sent"))
        assert sent == len(sink.messages) >= 1
        released = list(await session.scalars(select(SendAttempt.subtask_id).where(SendAttempt.outcome == "released")))
        assert released, "the claimed but unstarted item was released"
        rows = (
            await session.execute(select(SubTask.send_state, SubTask.attempts).where(SubTask.id.in_(released)))
        ).all()
        assert all(state == "pending" and attempts == 0 for state, attempts in rows), "attempt not counted"
        assert await session.scalar(select(Task.status).where(Task.id == task_id)) == "sending"
