"""The inbound queue (docs/conversations.md#accepted-then-processed): a webhook stores the raw mail and answers; the
worker's `inbound` job handles it. A mail whose handling fails waits alone and is tried again later; after the last
attempt it is kept for the admins as unrouted mail with the reason `unreadable` and the error, so nothing is lost;
and a real worker drains the queue by itself.

The failure is a real one: the database refuses to store one Message-ID (a CHECK constraint on PostgreSQL, a trigger
on SQLite), as it would refuse a value our code did not foresee."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.conversations import inbound_queue
from edm.db.dialect import is_postgresql
from edm.db.session import unit_of_work
from edm.models.conversations import InboundQueueItem
from edm.worker.dispatcher import Worker
from tests.helpers import drain_inbound, make_account
from tests.integration.conversations.conftest import ConversationKit
from tests.integration.conversations.test_sources import TOKEN, replied, smtp_service

POISON = "poison-1@mail.example.org"


@asynccontextmanager
async def refusing(sessionmaker: async_sessionmaker[AsyncSession], message_id: str) -> AsyncIterator[None]:
    async with unit_of_work(sessionmaker) as session:
        postgresql = is_postgresql(session)
        if postgresql:
            await session.execute(
                text(
                    "ALTER TABLE conversation_messages ADD CONSTRAINT test_refused "
                    f"CHECK (message_id <> '{message_id}')"
                )
            )
        else:
            await session.execute(
                text(
                    "CREATE TRIGGER test_refused BEFORE INSERT ON conversation_messages "
                    f"WHEN NEW.message_id = '{message_id}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )
    try:
        yield
    finally:
        async with unit_of_work(sessionmaker) as session:
            drop = (
                "ALTER TABLE conversation_messages DROP CONSTRAINT test_refused"
                if postgresql
                else "DROP TRIGGER test_refused"
            )
            await session.execute(text(drop))


async def queued(ckit: ConversationKit) -> list[InboundQueueItem]:
    async with ckit.sessionmaker() as session:
        return list(await session.scalars(select(InboundQueueItem).order_by(InboundQueueItem.id)))


async def post_mail(ckit: ConversationKit, service_id: int, raw: bytes) -> None:
    """Post to the SMTP endpoint without handling anything: the mail waits in the queue."""
    response = await ckit.ekit.client.post(
        f"/webhooks/smtp/{service_id}/dsn",
        content=raw,
        headers={"Content-Type": "message/rfc822", "Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200 and response.json()["queued"] == 1, response.text


async def test_a_mail_that_fails_waits_alone_and_is_kept_for_admins_after_the_last_attempt(
    ckit: ConversationKit,
) -> None:
    service_id = await smtp_service(ckit)
    poison = ckit.mime("thunderbird_reply.eml", index=1).replace(
        b"Message-ID: <", b"Message-ID: <" + POISON.encode() + b">\r\nX-Old-Message-ID: <", 1
    )
    assert f"<{POISON}>".encode() in poison
    for raw in (ckit.mime("thunderbird_reply.eml"), poison, ckit.mime("unknown_address.eml")):
        await post_mail(ckit, service_id, raw)
    assert len(await queued(ckit)) == 3, "accepted, not yet handled"
    assert await ckit.messages() == []

    start = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
    clock.freeze(start)
    async with refusing(ckit.sessionmaker, POISON):
        counts = await drain_inbound(ckit.sessionmaker)
        assert (counts.handled, counts.failed, counts.given_up) == (2, 1, 0)
        assert counts.by_status == {"stored": 1, "unrouted": 1}
        [waiting] = await queued(ckit)
        assert waiting.raw == poison and waiting.attempts == 1
        assert waiting.next_attempt_at == start + inbound_queue.FIRST_RETRY
        assert "refused" in (waiting.last_error or "") or "test_refused" in (waiting.last_error or "")
        [message] = await ckit.messages()
        assert message.subtask_id == ckit.subtasks[0].id, "the good mail before it was handled"
        assert await replied(ckit) == 1
        assert (await drain_inbound(ckit.sessionmaker)).failed == 0, "not tried again before its time"

        for attempt in range(2, inbound_queue.MAX_ATTEMPTS + 1):
            clock.freeze(start + dt.timedelta(hours=attempt))
            counts = await drain_inbound(ckit.sessionmaker)
            assert counts.failed == 1, attempt
        assert counts.given_up == 1 and await queued(ckit) == []

    unrouted = [row for row in await ckit.unrouted() if row.reason == "unreadable"]
    assert len(unrouted) == 1
    [kept] = unrouted
    assert kept.error and ("refused" in kept.error or "test_refused" in kept.error)
    assert (kept.source, kept.service_id) == ("smtp", service_id)
    async with ckit.sessionmaker() as session:
        blob = await session.scalar(text("SELECT data FROM mail_blobs WHERE id = :id"), {"id": kept.blob_id})
    assert bytes(blob) == poison, "the mail kept byte for byte"
    assert len(await ckit.messages()) == 1 and await replied(ckit) == 1

    admin = await make_account(ckit.sessionmaker, "queue-admin", role="admin")
    listed = await ckit.ekit.client.get("/api/v1/admin/inbound", headers={"Authorization": f"Bearer {admin.token}"})
    [shown] = [row for row in listed.json()["items"] if row["reason"] == "unreadable"]
    assert shown["error"] == kept.error


async def test_a_running_worker_handles_what_the_webhooks_queued(ckit: ConversationKit) -> None:
    service_id = await smtp_service(ckit)
    await post_mail(ckit, service_id, ckit.mime("thunderbird_reply.eml"))
    await post_mail(ckit, service_id, ckit.mime("dsn.eml", index=1))
    worker = Worker(ckit.ekit.dkit.settings, ckit.sessionmaker, concurrency=1)
    runner = asyncio.create_task(worker.run(install_signals=False))
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while await queue_size(ckit) or (await ckit.subtask(1)).delivery_state != "hard_bounced":
            assert asyncio.get_running_loop().time() < deadline, "the worker did not drain the inbound queue"
            assert not runner.done(), runner
            await asyncio.sleep(0.05)
    finally:
        worker.request_stop()
        await runner
    [message] = await ckit.messages()
    assert message.subtask_id == ckit.subtasks[0].id and await replied(ckit) == 1


async def queue_size(ckit: ConversationKit) -> int:
    async with ckit.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(InboundQueueItem)) or 0)


async def test_metrics_show_the_inbound_backlog(ckit: ConversationKit) -> None:
    service_id = await smtp_service(ckit)
    clock.freeze(dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC))
    await post_mail(ckit, service_id, ckit.mime("thunderbird_reply.eml"))
    clock.freeze(dt.datetime(2026, 12, 7, 9, 0, 42, tzinfo=dt.UTC))
    assert await scraped(ckit) == {"edm_inbound_queued": 1.0, "edm_inbound_oldest_age_seconds": 42.0}
    await drain_inbound(ckit.sessionmaker)
    assert await scraped(ckit) == {"edm_inbound_queued": 0.0, "edm_inbound_oldest_age_seconds": 0.0}


async def scraped(ckit: ConversationKit) -> dict[str, float]:
    response = await ckit.ekit.client.get("/metrics")
    assert response.status_code == 200, response.text
    wanted = ("edm_inbound_queued", "edm_inbound_oldest_age_seconds")
    return {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in response.text.splitlines())
        if name in wanted
    }
