"""What the system does by itself: auto-pause on error rates, the service-unavailable pause and automatic
resume, the `priority` strategy with failover, and the half-open probe of a service frozen for failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy import func, select

from edm.db.session import unit_of_work
from edm.email_services import service as services
from edm.models.email_services import EmailServiceState, EmailServiceStatusLog
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.system import runtime_settings
from edm.tasks.stats import recount, task_stats
from edm.worker.dispatcher import Worker
from tests import factories
from tests.helpers import settings_for


async def _settings(sessionmaker, **values: object) -> None:  # type: ignore[no-untyped-def]
    async with unit_of_work(sessionmaker) as session:
        for key, value in values.items():
            await runtime_settings.put(session, key.replace("__", "."), value)


async def _run_until(worker: Worker, check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    runner = asyncio.create_task(worker.run(install_signals=False))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await check():
            assert not runner.done(), "worker stopped"
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.05)
    finally:
        worker.request_stop()
        await runner


async def _task(sessionmaker, settings, *, recipients: int, services_: list[dict], **task_values):  # type: ignore[no-untyped-def]
    w = await factories.world(sessionmaker, settings, recipients=recipients, services_=services_)
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session,
            w.user_id,
            sender_id=w.sender_id,
            template_ids=[w.template_id],
            rule={"type": "all_contacts"},
            **task_values,
        )
    return w, task_id


def _task_field(sessionmaker, task_id: int, column):  # type: ignore[no-untyped-def]
    async def read():  # type: ignore[no-untyped-def]
        async with sessionmaker() as session:
            return await session.scalar(select(column).where(Task.id == task_id))

    return read


async def test_failure_rate_pauses_the_task(db_url, sessionmaker):  # type: ignore[no-untyped-def]
    settings = settings_for(db_url, time_scale=0.05)
    await _settings(sessionmaker, autopause__min_sample=10)
    _, task_id = await _task(
        sessionmaker,
        settings,
        recipients=60,
        services_=[{"name": "broken", "options": {"permanent_pct": 100}, "max_concurrency": 2}],
    )
    status = _task_field(sessionmaker, task_id, Task.status)

    async def paused() -> bool:
        return await status() == "paused"

    await _run_until(Worker(settings, sessionmaker, concurrency=1), paused)
    async with sessionmaker() as session:
        task = await session.get(Task, task_id)
        assert task.pause_reason == "error_threshold" and "failure rate 100.0%" in task.pause_detail
        stats = await task_stats(session, task_id)
        assert stats == await recount(session, task_id)
        assert 10 <= stats["failed"] < 60 and stats["sent"] == 0, "paused long before the end"
        assert stats["queued"] > 0


async def test_no_usable_service_pauses_then_resumes_by_itself(db_url, sessionmaker):  # type: ignore[no-untyped-def]
    settings = settings_for(db_url, time_scale=0.05)
    await _settings(sessionmaker, capacity__service_unavailable_grace=0.3)
    w, task_id = await _task(sessionmaker, settings, recipients=10, services_=[{"name": "only"}])
    async with unit_of_work(sessionmaker) as session:
        await services.update_service(
            session,
            factories.vault_for(settings),
            w.service_ids[0],
            values={"is_enabled": False},
            credentials=None,
            fake_allowed=True,
        )
    pause_reason = _task_field(sessionmaker, task_id, Task.pause_reason)
    status = _task_field(sessionmaker, task_id, Task.status)
    worker = Worker(settings, sessionmaker, concurrency=1)
    runner = asyncio.create_task(worker.run(install_signals=False))
    try:
        await _poll(lambda: _equals(pause_reason, "service_unavailable"))
        async with unit_of_work(sessionmaker) as session:
            await services.update_service(
                session,
                factories.vault_for(settings),
                w.service_ids[0],
                values={"is_enabled": True},
                credentials=None,
                fake_allowed=True,
            )
        await _poll(lambda: _equals(status, "completed"))
    finally:
        worker.request_stop()
        await runner
    async with sessionmaker() as session:
        reasons = list(await session.scalars(select(Task.status).where(Task.id == task_id)))
        assert reasons == ["completed"]
        assert (await task_stats(session, task_id))["sent"] == 10


async def _equals(read, expected) -> bool:  # type: ignore[no-untyped-def]
    return await read() == expected


async def _poll(check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_priority_strategy_fails_over_to_the_next_tier(db_url, sessionmaker):  # type: ignore[no-untyped-def]
    settings = settings_for(db_url, time_scale=0.05)
    await _settings(sessionmaker, allocation__strategy="priority")
    w, task_id = await _task(
        sessionmaker,
        settings,
        recipients=40,
        services_=[
            {"name": "primary", "priority": 10, "options": {"fail_after": 15}},
            {"name": "secondary", "priority": 50},
            {"name": "backup", "priority": 5, "backup_only": True},
        ],
    )
    primary, secondary, backup = w.service_ids
    status = _task_field(sessionmaker, task_id, Task.status)
    await _run_until(Worker(settings, sessionmaker, concurrency=2), lambda: _equals(status, "completed"))
    async with sessionmaker() as session:
        per_service = dict(
            (
                await session.execute(
                    select(SendAttempt.service_id, func.count())
                    .where(SendAttempt.outcome == "accepted")
                    .group_by(SendAttempt.service_id)
                )
            ).all()
        )
        assert per_service[primary] == 15, "the best tier took everything while it could"
        assert per_service[secondary] == 25, "the next tier took over once the primary froze"
        assert backup not in per_service, "a backup-only service waits while a primary can work"
        first_secondary = await session.scalar(
            select(func.min(SendAttempt.started_at)).where(SendAttempt.service_id == secondary)
        )
        last_primary_ok = await session.scalar(
            select(func.max(SendAttempt.finished_at)).where(
                SendAttempt.service_id == primary, SendAttempt.outcome == "accepted"
            )
        )
        assert first_secondary >= last_primary_ok


async def test_half_open_probe_after_failure_freeze(db_url, sessionmaker):  # type: ignore[no-untyped-def]
    settings = settings_for(db_url, time_scale=0.05)
    await _settings(
        sessionmaker,
        freeze__failure_threshold=3,
        freeze__base_cooldown=0.5,
        retry__base_delay=0.05,
        retry__max_attempts=100,
    )
    w, task_id = await _task(
        sessionmaker,
        settings,
        recipients=5,
        services_=[{"name": "flaky", "options": {"transient_pct": 100}, "max_concurrency": 1}],
    )
    service_id = w.service_ids[0]

    async def probe_failed() -> bool:
        async with sessionmaker() as session:
            return bool(
                await session.scalar(
                    select(func.count()).where(
                        EmailServiceStatusLog.service_id == service_id, EmailServiceStatusLog.change == "probe_failed"
                    )
                )
            )

    await _run_until(Worker(settings, sessionmaker, concurrency=2), probe_failed)
    async with sessionmaker() as session:
        state = await session.get(EmailServiceState, service_id, populate_existing=True)
        assert state.frozen and state.frozen_reason == "failures" and state.freeze_level == 2
        changes = list(
            await session.scalars(
                select(EmailServiceStatusLog.change)
                .where(EmailServiceStatusLog.service_id == service_id)
                .order_by(EmailServiceStatusLog.id)
            )
        )
        assert changes[:3] == ["config_updated", "frozen", "probe_failed"]
        frozen_at = await session.scalar(
            select(EmailServiceStatusLog.at).where(
                EmailServiceStatusLog.service_id == service_id, EmailServiceStatusLog.change == "frozen"
            )
        )
        probe_failed_at = await session.scalar(
            select(EmailServiceStatusLog.at).where(
                EmailServiceStatusLog.service_id == service_id, EmailServiceStatusLog.change == "probe_failed"
            )
        )
        probes = await session.scalar(
            select(func.count()).where(
                SendAttempt.service_id == service_id,
                SendAttempt.started_at > frozen_at,
                SendAttempt.started_at <= probe_failed_at,
            )
        )
        assert probes == 1, "a half-open service takes exactly one SubTask"
        assert (probe_failed_at - frozen_at).total_seconds() >= 0.5, "the cooldown was honoured"
        pending = await session.scalar(
            select(func.count()).where(SubTask.task_id == task_id, SubTask.send_state == "pending")
        )
        assert pending == 5, "failed attempts went back to the pool"
