"""The demo loop over real HTTP: the real API served by uvicorn on a loopback port, an in-process Worker on the
same database, and a fake ESP that posts signed delivery events back to `POST /webhooks/fake/{service_id}`.
The worker sends the task, the fake posts `accepted` + one outcome per message, the API verifies and stores
them, and the worker's `events` job applies them to the SubTasks; the statistics agree with a recount."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.db.session import unit_of_work
from edm.models.events import Event, MatchStatus
from edm.providers.fake import FakeAdapter
from tests import factories
from tests.helpers import settings_for
from tests.integration.dispatch.conftest import DispatchKit

RECIPIENTS = 50
SECRET = "s3cret"


@contextlib.asynccontextmanager
async def serving_api(db_url: str, engine: AsyncEngine) -> AsyncIterator[str]:
    """The real app under uvicorn on a free loopback port, in this event loop; yields its base URL."""
    app = create_app(settings_for(db_url), engine=engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    runner = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or runner.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, f"uvicorn did not start: {runner.exception() if runner.done() else 'timeout'}"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(runner, timeout=15)


async def test_fake_esp_events_posted_over_http_settle_every_subtask_and_the_stats(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    dkit = DispatchKit(db_url, sessionmaker)
    async with serving_api(db_url, engine) as base_url:
        # No complaints and no provider opens: each message gets exactly `accepted` + one outcome.
        events_options: dict[str, Any] = {
            "url": base_url,
            "delay_ms": 50,
            "delivered_pct": 80,
            "hard_bounce_pct": 10,
            "soft_bounce_pct": 10,
            "complaint_pct": 0,
            "open_pct": 0,
            "seed": 3,
        }
        world = await factories.world(
            sessionmaker,
            dkit.settings,
            recipients=RECIPIENTS,
            services_=[
                {
                    "name": "fake-esp",
                    "provider": "fake",
                    "options": {"events": events_options},
                    "credentials": {"webhook_secrets": [SECRET]},
                }
            ],
        )
        [service_id] = world.service_ids
        async with unit_of_work(sessionmaker) as session:
            task_id = await factories.task(
                session,
                world.user_id,
                sender_id=world.sender_id,
                template_ids=[world.template_id],
                rule={"type": "all_contacts"},
            )

        async def settled() -> bool:
            if await dkit.status(task_id) != "completed":
                return False
            return all(st.delivery_state != "none" for st in await dkit.subtasks(task_id))

        async with dkit.worker(concurrency=2):
            await dkit.wait_for(settled, timeout=60, what="task completed and every SubTask settled by events")

    assert len(FakeAdapter.deliveries_for(service_id)) == RECIPIENTS  # one real "send" per recipient
    stats = await dkit.stats(task_id)  # task_stats, checked against the row-by-row recount
    assert stats["delivered"] + stats["hard_bounced"] + stats["soft_bounced"] == RECIPIENTS, stats
    assert stats["delivered"] > 0 and stats["hard_bounced"] > 0 and stats["soft_bounced"] > 0, stats
    assert stats["complained"] == 0 and stats["opens"] == 0, stats

    states = [st.delivery_state for st in await dkit.subtasks(task_id)]
    assert set(states) <= {"delivered", "hard_bounced", "soft_bounced"}
    assert states.count("delivered") == stats["delivered"]

    async with sessionmaker() as session:
        rows = list(
            (
                await session.execute(
                    select(Event.event_type, Event.match_status, func.count())
                    .where(Event.service_id == service_id)
                    .group_by(Event.event_type, Event.match_status)
                )
            ).all()
        )
        total = await session.scalar(select(func.count()).select_from(Event))
    by_type = {(event_type, status): count for event_type, status, count in rows}
    assert total == 2 * RECIPIENTS, by_type  # accepted + one outcome per recipient, each stored once
    assert by_type[("accepted", MatchStatus.MATCHED)] == RECIPIENTS
    assert by_type[("delivered", MatchStatus.MATCHED)] == stats["delivered"]
    assert by_type[("hard_bounced", MatchStatus.MATCHED)] == stats["hard_bounced"]
    assert by_type[("soft_bounced", MatchStatus.MATCHED)] == stats["soft_bounced"]
