"""Inbound mail is accepted first and handled after (docs/conversations.md#accepted-then-processed).

    await enqueue(session, mails, now=now)      # a webhook request, inside the transaction it owns
    counts = await drain(sessionmaker, ...)     # the worker's `inbound` job

Parsing, classifying, threading and storing a 20 KB reply costs about 12 ms of CPU; done inside the provider's
request, it capped one `edm serve` near 80 replies a second and made the provider wait. So a webhook only verifies
the request, checks the size and stores the raw message here (one INSERT), and the `inbound` job hands each
message to `ingest.receive`, a batch per transaction, in the order they arrived.

Nothing is lost and nothing counts twice:
- a row is deleted in the same transaction that stored what its message became, so a crash between the two
  leaves the row to be handled again, and `receive` is idempotent per (user, Message-ID) anyway;
- a message whose handling raises is rolled back alone (a savepoint), tried again after a growing pause, and after
  MAX_ATTEMPTS kept for the admins as unrouted mail with the reason `unreadable` and the error;
- a database that is unavailable or times out ends the batch (nothing of it is kept) and the job tries again next
  period, without counting an attempt against any message;
- on PostgreSQL several workers drain at once: each batch locks its rows with FOR UPDATE SKIP LOCKED.

The mailbox poller is already in the worker and calls `receive` directly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Table, delete, func, insert, or_, select, update
from sqlalchemy.exc import InterfaceError, InternalError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from edm import clock
from edm.conversations import ingest
from edm.conversations.mime import DEFAULT_MAX_BYTES
from edm.db.dialect import is_postgresql
from edm.db.session import unit_of_work
from edm.models.conversations import InboundQueueItem
from edm.providers.inbound import InboundMail

log = logging.getLogger("edm.conversations.inbound")

BATCH = 50  # messages per transaction: ~1 MB of raw mail at 20 KB each
MAX_ATTEMPTS = 5
FIRST_RETRY = dt.timedelta(seconds=30)  # then 2, 4, 8 minutes

_TABLE = cast(Table, InboundQueueItem.__table__)
_COLUMNS = (
    InboundQueueItem.id,
    InboundQueueItem.received_at,
    InboundQueueItem.source,
    InboundQueueItem.service_id,
    InboundQueueItem.recipient,
    InboundQueueItem.sender,
    InboundQueueItem.raw,
    InboundQueueItem.attempts,
)


@dataclasses.dataclass(slots=True)
class DrainCounts:
    handled: int = 0  # messages whose row was done with: stored, duplicate, report, unrouted or given up
    failed: int = 0  # attempts that raised (the message is tried again later, or given up)
    given_up: int = 0  # kept unrouted as `unreadable` after MAX_ATTEMPTS
    by_status: dict[str, int] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def enqueue(session: AsyncSession | AsyncConnection, mails: Sequence[InboundMail], *, now: dt.datetime) -> int:
    """Store the mails of one request for the `inbound` job; one statement, so an entry point with nothing else
    to write may run it alone (`edm.db.session.single_statement`). The caller owns the transaction."""
    if not mails:
        return 0
    rows = [
        {
            "received_at": now,
            "source": mail.source[:16],
            "service_id": mail.service_id,
            "recipient": (mail.recipient or None) and mail.recipient[:320],
            "sender": (mail.sender or None) and mail.sender[:320],
            "raw": mail.raw,
            "attempts": 0,
        }
        for mail in mails
    ]
    # A list of parameter sets, not `.values(rows)`: a statement whose VALUES are part of it is compiled anew on
    # every call (~1.5 ms, more than the round trip); this form is compiled once and cached, and SQLAlchemy still
    # sends several rows as one multi-row INSERT (insertmanyvalues), one atomic statement.
    await session.execute(insert(_TABLE), rows if len(rows) > 1 else rows[0])
    return len(rows)


async def drain(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    batch: int = BATCH,
    max_bytes: int = DEFAULT_MAX_BYTES,
    should_stop: Callable[[], bool] = lambda: False,
) -> DrainCounts:
    """Handle queued mail until none is due; each batch its own transaction."""
    counts = DrainCounts()
    while not should_stop():
        async with unit_of_work(sessionmaker) as session:
            taken = await handle_batch(session, counts, batch=batch, max_bytes=max_bytes, now=clock.utc_now())
        if taken < batch:
            break
    return counts


async def handle_batch(
    session: AsyncSession, counts: DrainCounts, *, batch: int, max_bytes: int, now: dt.datetime
) -> int:
    """Up to `batch` due messages, oldest first, in the caller's transaction; returns how many were taken."""
    query = (
        select(*_COLUMNS)
        .where(or_(InboundQueueItem.next_attempt_at.is_(None), InboundQueueItem.next_attempt_at <= now))
        .order_by(InboundQueueItem.id)
        .limit(batch)
    )
    if is_postgresql(session):
        query = query.with_for_update(skip_locked=True)
    rows = (await session.execute(query)).all()
    done: list[int] = []
    replies: list[int] = []
    for row in rows:
        if await _handle(session, row, counts, replies, max_bytes=max_bytes, now=now):
            done.append(row.id)
    await ingest.apply_replies(session, replies, now=now)
    if done:
        await session.execute(delete(InboundQueueItem).where(InboundQueueItem.id.in_(done)))
    return len(rows)


async def _handle(
    session: AsyncSession, row: Any, counts: DrainCounts, replies: list[int], *, max_bytes: int, now: dt.datetime
) -> bool:
    """One message; True when its row is done with (handled, or given up and kept unrouted). The `replied` event
    of a reply is applied with the batch's (`replies`), in the same transaction."""
    mail = InboundMail(
        raw=row.raw, source=row.source, service_id=row.service_id, recipient=row.recipient, sender=row.sender
    )
    try:
        async with session.begin_nested():
            result = await ingest.receive(
                session, mail, now=row.received_at, max_bytes=max(max_bytes, len(row.raw)), apply_reply=False
            )
    except (OperationalError, InterfaceError, InternalError):
        raise  # the database is unavailable or overloaded, not this mail: the batch is tried again next period
    except Exception as exc:  # a parser or threading bug on some unforeseen mail: that mail alone waits
        return await _failed(session, row, mail, counts, exc, now=now)
    if result.status == ingest.Status.STORED and result.subtask_id is not None:
        replies.extend(result.event_ids)
    counts.handled += 1
    counts.by_status[result.status] = counts.by_status.get(result.status, 0) + 1
    log.info("inbound.received", extra={"source": mail.source, "queued_id": row.id, **result.as_dict()})
    return True


async def _failed(
    session: AsyncSession, row: Any, mail: InboundMail, counts: DrainCounts, exc: BaseException, *, now: dt.datetime
) -> bool:
    counts.failed += 1
    error = f"{type(exc).__name__}: {exc}"[:500]
    attempts = row.attempts + 1
    extra = {"queued_id": row.id, "source": row.source, "attempts": attempts, "error": type(exc).__name__}
    if attempts >= MAX_ATTEMPTS:
        await ingest.keep_unreadable(session, mail, error, now=now)
        counts.handled += 1
        counts.given_up += 1
        log.error("inbound.given_up", extra=extra)
        return True
    log.warning("inbound.failed", extra=extra)
    await session.execute(
        update(InboundQueueItem)
        .where(InboundQueueItem.id == row.id)
        .values(attempts=attempts, last_error=error, next_attempt_at=now + FIRST_RETRY * 2 ** (attempts - 1))
    )
    return False


async def waiting(session: AsyncSession) -> tuple[int, dt.datetime | None]:
    """How many messages wait, and when the oldest arrived (for health and metrics)."""
    row = (await session.execute(select(func.count(), func.min(InboundQueueItem.received_at)))).one()
    return int(row[0]), row[1]
