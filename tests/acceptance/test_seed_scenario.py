"""The change report's scenario, end to end with real SMTP (docs/sending.md#a-worked-example-a-service-freezes-mid-task
scaled to seconds).

Two SMTP services share a task. Mid-task the first one's credentials stop working: it must be frozen
(auth_config) with a status-log row, no pending SubTask may ever be bound to it again, the second service
finishes the task, and every recipient receives exactly one mail (counted by X-EDM-SubTask-Id at the sinks).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.models.email_services import EmailServiceState, EmailServiceStatusLog
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.tasks.stats import recount, task_stats
from edm.worker.dispatcher import Worker
from tests import factories
from tests.helpers import settings_for

RECIPIENTS = 60


async def test_frozen_service_never_strands_the_task(db_url, sessionmaker):  # type: ignore[no-untyped-def]
    settings = settings_for(db_url, time_scale=0.05)
    with SmtpSink(require_auth=("a-user", "a-secret")) as sink_a, SmtpSink() as sink_b:
        smtp = {"security": "none", "host": "127.0.0.1"}
        w = await factories.world(
            sessionmaker,
            settings,
            recipients=RECIPIENTS,
            services_=[
                {
                    "name": "svc-a",
                    "provider": "smtp",
                    "options": {**smtp, "port": sink_a.port},
                    "credentials": {"username": "a-user", "password": "a-secret"},
                    "sending_interval_seconds": 0.05,
                    "max_concurrency": 2,
                },
                {
                    "name": "svc-b",
                    "provider": "smtp",
                    "options": {**smtp, "port": sink_b.port},
                    "sending_interval_seconds": 0.055,
                    "max_concurrency": 2,
                },
            ],
        )
        service_a, service_b = w.service_ids
        async with unit_of_work(sessionmaker) as session:
            task_id = await factories.task(
                session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
            )

        worker = Worker(settings, sessionmaker, concurrency=3)
        runner = asyncio.create_task(worker.run(install_signals=False))
        try:
            await _until(lambda: len(sink_a.messages) >= 10)
            # The key is revoked: existing sessions are refused at MAIL, new ones at AUTH.
            sink_a.fail_auth = True
            sink_a.mail_reply = (535, "5.7.8 Authentication credentials invalid")
            revoked_at_count = len(sink_a.messages)
            await _until_async(lambda: _status(sessionmaker, task_id), "completed", timeout=30)
        finally:
            worker.request_stop()
            await runner

    async with sessionmaker() as session:
        state = await session.get(EmailServiceState, service_a)
        assert state.frozen and state.frozen_reason == "auth_config" and state.frozen_until is None
        frozen_logs = list(
            await session.scalars(
                select(EmailServiceStatusLog).where(
                    EmailServiceStatusLog.service_id == service_a, EmailServiceStatusLog.change == "frozen"
                )
            )
        )
        assert len(frozen_logs) == 1 and frozen_logs[0].new_value == "auth_config"
        # After the freeze no claim bound anything to A: every attempt on A started before the freeze.
        frozen_at = frozen_logs[0].at
        late_on_a = await session.scalar(
            select(func.count()).where(SendAttempt.service_id == service_a, SendAttempt.started_at > frozen_at)
        )
        assert late_on_a == 0
        auth_failures = await session.scalar(
            select(func.count()).where(SendAttempt.service_id == service_a, SendAttempt.outcome == "auth_config")
        )
        assert auth_failures >= 1
        # auth_config attempts do not count toward max attempts and return the SubTask to the pool
        assert await session.scalar(select(func.max(SubTask.retryable_failures)).where(SubTask.task_id == task_id)) == 0
        stats = await task_stats(session, task_id)
        assert stats == await recount(session, task_id)
        assert stats["sent"] == RECIPIENTS and stats["failed"] == 0
        on_b = await session.scalar(
            select(func.count()).where(SubTask.task_id == task_id, SubTask.service_id == service_b)
        )
        assert on_b >= RECIPIENTS - revoked_at_count

    received = sink_a.count_by_subtask() + sink_b.count_by_subtask()
    assert len(received) == RECIPIENTS, "every recipient got a mail"
    assert set(received.values()) == {1}, "nobody got two"


async def _status(sessionmaker, task_id):  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        return await session.scalar(select(Task.status).where(Task.id == task_id))


async def _until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _until_async(fetch, expected, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (value := await fetch()) != expected:
        assert loop.time() < deadline, f"still {value!r}, expected {expected!r}"
        await asyncio.sleep(0.05)
