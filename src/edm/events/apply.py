"""Applying stored events to SubTasks and contacts: the `events` job's work (and `edm events apply`).

One batch is: take pending events (SKIP LOCKED on PostgreSQL, so any number of workers share the queue), find
their SubTasks (`matching`), apply each matched event to its SubTask and contact (`delivery`, with tracking
hits classified by `machine_hits`), add the suppressions the policy asks for (`suppression_policy`), and write
every changed row back with one UPDATE per table (`records`). An event never changes a task's status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import telemetry
from edm.clock import utc_now
from edm.db.dialect import is_postgresql
from edm.db.session import after_commit, unit_of_work
from edm.dispatch.queue.replies import SentAnswer, record_sent
from edm.events.delivery import apply_event, move_usage_to_accepted, settle_uncertain
from edm.events.machine_hits import load_recent_clicks
from edm.events.matching import (
    TRACKING_SOURCES,
    attempted_services,
    find_subtasks,
    match,
    needing_attempts,
    service_providers,
)
from edm.events.records import (
    CONTACT_WRITE,
    EVENT_READ,
    EVENT_WRITE,
    SUBTASK_WRITE,
    Record,
    columns,
    contact_records,
    core_execute,
    update_many,
)
from edm.events.suppression_policy import add_suppressions, suppression_for
from edm.models.contacts import Contact
from edm.models.events import Event, MatchReason, MatchStatus
from edm.models.tasks import SubTask
from edm.system import runtime_settings
from edm.vocabulary.events import EventType

# Events that may change the contact too: their SubTask's contact is read (and locked) with the batch.
_CONTACT_EVENTS = frozenset(
    {
        EventType.DELIVERED,
        EventType.SOFT_BOUNCED,
        EventType.HARD_BOUNCED,
        EventType.REJECTED,
        EventType.COMPLAINED,
        EventType.UNSUBSCRIBED,
        EventType.REPLIED,
        EventType.OPENED,
        EventType.CLICKED,
    }
)


@dataclass(slots=True)
class ApplyCounts:
    processed: int = 0
    matched: int = 0
    unmatched: int = 0
    ignored: int = 0
    reconciled: int = 0  # uncertain -> sent
    last_id: int = 0  # the highest event id taken

    def add(self, other: ApplyCounts) -> None:
        for name in ("processed", "matched", "unmatched", "ignored", "reconciled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_id = max(self.last_id, other.last_id)


async def drain(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    simulated_matches_any: bool,
    batch: int = 500,
    loops: int = 1,
    should_stop: Callable[[], bool] = lambda: False,
) -> ApplyCounts:
    """Apply stored events until none is left, one transaction per batch (an entry point's loop: the
    `events` job, `edm events apply`).

    On PostgreSQL `loops` > 1 runs that many loops side by side, each on its own connection and its own share of
    the queue: the events whose SubTask reference (else provider message id) hashes to it. While one loop waits
    for PostgreSQL, another computes its batch; the shares keep their SubTasks apart, so they seldom wait on each
    other's row locks (bench/RESULTS.md, "Webhook ingest"). SQLite has one writer: one loop."""
    async with sessionmaker() as session:
        shares = loops if loops > 1 and is_postgresql(session) else 1
    if shares == 1:
        return await _drain_share(sessionmaker, None, simulated_matches_any, batch, should_stop)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(_drain_share(sessionmaker, (i, shares), simulated_matches_any, batch, should_stop))
                for i in range(shares)
            ]
    except BaseExceptionGroup as failed:
        # One loop's error cancelled the others: raise it as one loop would, so that the job logs an outage as a
        # warning line (edm.db.availability) rather than a group's traceback.
        raise failed.exceptions[0] from None
    total = ApplyCounts()
    for task in tasks:
        total.add(task.result())
    return total


async def _drain_share(
    sessionmaker: async_sessionmaker[AsyncSession],
    share: tuple[int, int] | None,
    simulated_matches_any: bool,
    batch: int,
    should_stop: Callable[[], bool],
) -> ApplyCounts:
    """One loop: batch after batch, each taken after the last one's highest id. An index scan from the start of
    the queue would step over every event applied since the last vacuum (their old row versions stay in the
    pending index until then, longer while any transaction of the cluster is open): with 180,000 queued events
    that made taking a batch cost more than applying it. An event left behind (held by another worker that then
    rolled back, or committed late with a lower id) is taken by the next drain, which starts from the beginning."""
    total = ApplyCounts()
    while not should_stop():
        async with unit_of_work(sessionmaker) as session:
            counts = await apply_pending(
                session,
                now=utc_now(),
                simulated_matches_any=simulated_matches_any,
                limit=batch,
                share=share,
                after_id=total.last_id,
            )
        total.add(counts)
        if counts.processed < batch:
            break
    return total


async def apply_pending(
    session: AsyncSession,
    *,
    now: dt.datetime,
    simulated_matches_any: bool,
    limit: int = 500,
    only_ids: Sequence[int] | None = None,
    share: tuple[int, int] | None = None,
    after_id: int = 0,
) -> ApplyCounts:
    """Apply up to `limit` stored, unprocessed events (of share `share` = (i, n) of the queue only, on
    PostgreSQL: see `drain`). The caller commits.

    Rows are read as plain records and written back with one executemany UPDATE per table (events, SubTasks,
    contacts): no ORM identity map on this path, which profiling showed to cost more than the SQL itself."""
    events = await _take_pending(session, limit, only_ids, share, after_id)
    counts = ApplyCounts(processed=len(events), last_id=max((e.id for e in events), default=after_id))
    if not events:
        return counts
    providers = await service_providers(session)
    runtime = await runtime_settings.load(session)
    ambiguous: set[int] = set()
    subtasks = await find_subtasks(session, events, ambiguous)
    await load_recent_clicks(session, events, subtasks, runtime.tracking_click_burst_window)
    attempted = await attempted_services(session, needing_attempts(events, subtasks, providers))
    contacts = await contact_records(
        session, {subtasks[e.id].contact_id for e in events if e.id in subtasks and e.event_type in _CONTACT_EVENTS}
    )
    suppressions: list[dict[str, Any]] = []
    settled: list[Any] = []
    for event in events:
        subtask = subtasks.get(event.id)
        status, reason = match(event, subtask, providers, attempted, simulated_matches_any)
        if event.id in ambiguous:
            status, reason = MatchStatus.UNMATCHED, MatchReason.AMBIGUOUS_PROVIDER_ID
        event.processed_at = now
        if status is MatchStatus.UNMATCHED or subtask is None:
            event.match_status, event.match_reason = MatchStatus.UNMATCHED, reason
            counts.unmatched += 1
            continue
        event.subtask_id, event.task_id, event.user_id = subtask.id, subtask.task_id, subtask.user_id
        if settle_uncertain(subtask, event, now):
            await move_usage_to_accepted(session, subtask, providers)
            counts.reconciled += 1
            settled.append(subtask)
        if status is MatchStatus.IGNORED:
            event.match_status, event.match_reason = MatchStatus.IGNORED, reason
            counts.ignored += 1
            continue
        contact = contacts.get(subtask.contact_id or 0)
        apply_event(subtask, contact, event, runtime)
        suppression = suppression_for(event, subtask, contact, runtime)
        if suppression is not None:
            suppressions.append(suppression)
        event.match_status = MatchStatus.MATCHED
        counts.matched += 1
    await update_many(session, Event, EVENT_WRITE, events)
    await update_many(
        session, SubTask, SUBTASK_WRITE, [s for s in {r.id: r for r in subtasks.values()}.values() if s.changed()]
    )
    await update_many(session, Contact, CONTACT_WRITE, [c for c in contacts.values() if c.changed()])
    await add_suppressions(session, suppressions, now)
    _count_when_committed(session, events)
    for subtask in settled:  # a conversation answer proven sent reaches its thread (docs/conversations-answers.md)
        if subtask.service_id is not None:
            answer = SentAnswer(subtask.id, None, None)
            await record_sent(session, service_id=subtask.service_id, answers=[answer], now=subtask.sent_at)
    return counts


_TRACKED_HITS = {EventType.OPENED: "open", EventType.CLICKED: "click"}


def _count_when_committed(session: AsyncSession, events: list[Any]) -> None:
    """The process's metrics (`edm.telemetry`): the events by source, type and match status, and EDM's own open and
    click hits matched to a recipient, by person or machine (as `delivery` classified them)."""
    applied: Counter[tuple[str, str, str]] = Counter()
    hits: Counter[tuple[str, bool]] = Counter()
    for event in events:
        applied[(event.source, event.event_type, str(event.match_status))] += 1
        kind = _TRACKED_HITS.get(event.event_type)
        if kind and event.source in TRACKING_SOURCES and event.match_status == MatchStatus.MATCHED:
            hits[(kind, bool((event.details or {}).get("machine")))] += 1
    after_commit(session, lambda: telemetry.count_events(applied, hits))


async def _take_pending(
    session: AsyncSession,
    limit: int,
    only_ids: Sequence[int] | None = None,
    share: tuple[int, int] | None = None,
    after_id: int = 0,
) -> list[Any]:
    query = (
        select(*columns(Event, EVENT_READ + EVENT_WRITE))
        .where(Event.processed_at.is_(None), Event.id > after_id)
        .order_by(Event.id)
        .limit(limit)
    )
    if only_ids is not None:  # applied synchronously by the request that stored them (one-click unsubscribe)
        query = query.where(Event.id.in_(list(only_ids)))
    if is_postgresql(session):
        if share is not None:
            index, shares = share
            key = func.coalesce(Event.subtask_ref, Event.provider_message_id, "")
            query = query.where(func.abs(func.mod(func.hashtext(key), shares)) == index)
        query = query.with_for_update(skip_locked=True)
    return Record.all(await core_execute(session, query), EVENT_WRITE)
