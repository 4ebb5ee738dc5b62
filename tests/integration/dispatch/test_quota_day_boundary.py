"""The daily quota and the service day (docs/sending.md#daily-quota-and-the-service-day,
docs/states.md#waiting-reasons): a service at quota stops taking work until its reset time, the task explains why and
until when, and the next service day starts by itself at the reset time (no job), with usage counted per (service,
service day)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from edm import clock
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.email_services import ServiceDayUsage
from edm.models.tasks import SubTask
from edm.providers.fake import FakeAdapter
from edm.system.runtime_settings import RuntimeSettings
from edm.tasks import lifecycle
from tests import factories

SHANGHAI = ZoneInfo("Asia/Shanghai")
BEFORE_RESET = dt.datetime(2025, 3, 10, 1, 58, tzinfo=SHANGHAI)  # 2025-03-09 17:58 UTC, service day 03-09
AFTER_RESET = dt.datetime(2025, 3, 10, 2, 0, 1, tzinfo=SHANGHAI)  # service day 03-10
RESET_UTC = dt.datetime(2025, 3, 9, 18, 0, tzinfo=dt.UTC)  # 02:00 Shanghai
NEXT_RESET_UTC = dt.datetime(2025, 3, 10, 18, 0, tzinfo=dt.UTC)
SERVICE = {
    "name": "quota-sh",
    "daily_quota": 5,
    "quota_reset_time": "02:00",
    "timezone": "Asia/Shanghai",
    "sending_interval_seconds": 0,
    "max_concurrency": 4,
}


async def _setup(dkit, *, recipients: int, service: dict) -> tuple[factories.World, int]:  # type: ignore[no-untyped-def]
    w = await factories.world(dkit.sessionmaker, dkit.settings, recipients=recipients, services_=[service])
    async with unit_of_work(dkit.sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    return w, task_id


async def test_quota_stops_until_the_reset_and_the_new_service_day_starts_by_itself(dkit):  # type: ignore[no-untyped-def]
    clock.freeze(BEFORE_RESET.astimezone(dt.UTC))
    w, task_id = await _setup(dkit, recipients=12, service=SERVICE)
    service_id = w.service_ids[0]

    async def sent_count() -> int:
        return await dkit.count(task_id, "sent")

    async with dkit.worker(concurrency=2):
        await dkit.wait_for(lambda: _eq(sent_count, 5), what="5 sent before the reset")
        # Several claim cycles (idle poll 25 ms, snapshot 0.1 s) while the clock stays before 02:00.
        for _ in range(4):
            await dkit.hold(0.25)
            assert await sent_count() == 5
            assert await dkit.count(task_id, "allocated") == 0

        async def waiting_for_quota() -> bool:
            task = await dkit.task(task_id)
            return task.waiting_reason == "daily_quota" and task.waiting_until == RESET_UTC

        await dkit.wait_for(waiting_for_quota, timeout=8, what="waiting_reason daily_quota until 02:00 Shanghai")
        assert await sent_count() == 5
        assert await dkit.status(task_id) == "sending"

        clock.freeze(AFTER_RESET.astimezone(dt.UTC))
        await dkit.wait_for(lambda: _eq(sent_count, 10), what="5 more sent on the new service day")
        for _ in range(3):
            await dkit.hold(0.25)
            assert await sent_count() == 10, "the new day's quota holds too"

        async def waiting_for_next_reset() -> bool:
            task = await dkit.task(task_id)
            return task.waiting_reason == "daily_quota" and task.waiting_until == NEXT_RESET_UTC

        await dkit.wait_for(waiting_for_next_reset, timeout=8, what="waiting until the next day's 02:00")

    usage = await dkit.rows(
        select(
            ServiceDayUsage.service_day, ServiceDayUsage.accepted, ServiceDayUsage.uncertain, ServiceDayUsage.adjustment
        )
        .where(ServiceDayUsage.service_id == service_id)
        .order_by(ServiceDayUsage.service_day)
    )
    assert [tuple(r) for r in usage] == [(dt.date(2025, 3, 9), 5, 0, 0), (dt.date(2025, 3, 10), 5, 0, 0)]

    subtasks = await dkit.subtasks(task_id)
    sent = [s for s in subtasks if s.send_state == "sent"]
    assert sorted(s.sent_at for s in sent)[:5] == [BEFORE_RESET.astimezone(dt.UTC)] * 5
    assert sorted(s.sent_at for s in sent)[5:] == [AFTER_RESET.astimezone(dt.UTC)] * 5
    assert all(s.send_state == "pending" and s.attempts == 0 for s in subtasks if s.send_state != "sent")
    assert sorted(FakeAdapter.delivered_keys(service_id)) == sorted(str(s.public_id) for s in sent)
    stats = await dkit.stats(task_id)
    assert (stats["sent"], stats["queued"], stats["recipients"]) == (10, 2, 12)


async def test_waiting_reason_is_cleared_at_the_next_send(dkit):  # type: ignore[no-untyped-def]
    """The waiting fields are cleared at the next send (docs/states.md#waiting-reasons), not only by the 30 s waiting
    job (regression: the outcome path never cleared them). No maintenance job runs here, so only a send can clear
    them."""
    clock.freeze(BEFORE_RESET.astimezone(dt.UTC))
    w, task_id = await _setup(dkit, recipients=5, service={**SERVICE, "daily_quota": 2})
    await dkit.generate(task_id)

    async with dkit.worker(concurrency=1, run_jobs=False):
        await dkit.wait_for(lambda: _eq(lambda: dkit.count(task_id, "sent"), 2), what="2 sent")
    async with unit_of_work(dkit.sessionmaker) as session:
        snapshots = await queue.snapshot_services(session, now=clock.utc_now())
        await lifecycle.update_waiting(session, now=clock.utc_now(), runtime=RuntimeSettings(), snapshots=snapshots)
    task = await dkit.task(task_id)
    assert (task.waiting_reason, task.waiting_until) == ("daily_quota", RESET_UTC)

    clock.freeze(AFTER_RESET.astimezone(dt.UTC))
    async with dkit.worker(concurrency=1, run_jobs=False):  # no waiting job: only sends happen
        await dkit.wait_for(lambda: _eq(lambda: dkit.count(task_id, "sent"), 4), what="2 more sent")
    latest = await dkit.scalar(select(func.max(SubTask.sent_at)).where(SubTask.task_id == task_id))
    assert latest == AFTER_RESET.astimezone(dt.UTC)
    task = await dkit.task(task_id)
    assert (task.waiting_reason, task.waiting_until) == (None, None)


async def _eq(read, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return await read() == expected
