"""What a task's reports derive from rows the retention job deletes, kept as counters (docs/operations.md#retention).

Tasks and SubTasks are kept until someone deletes them, but events and send attempts go after their periods. The
task statistics come from SubTask rows and are not touched; a few breakdowns read events and attempts, and must not
change either:

- the human open and click hits per quarter hour (timeline, heat map, dashboard): `task_quarter_counters`, facts
  `open_hits` and `click_hits`;
- each bounced recipient once, at its first bounce event (the timeline's bounces): fact `first_bounce`;
- the attempts per service and outcome with their durations: `task_attempt_counters`;
- the clicks per link and its unique human clickers: `task_link_archive`.

The deleted rows' share goes to stripe `ARCHIVED` (-1) of the counter tables, in the transaction that deletes
them, from the rows the DELETE returned (so two workers can never count a row twice). Readers add the archived
share to what they read from the rows; on PostgreSQL, whose readers sum every stripe of the counters, it is there
already (the triggers subtract the deleted rows from the writing backend's stripe; the archive adds them back
under -1, which the `stats` job never folds).

Counts of distinct recipients (unique clickers of a link, bounced recipients) are archived when a recipient's last
event of the kind is deleted, so that a recipient is counted either by its remaining events or by the archive,
never both. The counts stay exact; the time of a bounced recipient may move: the timeline places it at its first
bounce event, so one whose first bounce event is gone and a later one remains moves to that later one's quarter,
and one archived in the batch of its last bounce event is placed at the first of that batch's.

Services: they flush, the entry point commits.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import dialect_insert
from edm.models.events import Event, MatchStatus
from edm.models.tasks import ARCHIVED_STRIPE, SubTask, Task, TaskAttemptCounter, TaskQuarterCounter
from edm.models.tracking import TaskLinkArchive, TrackedLink
from edm.tasks.facts import BOUNCE_EVENTS, FIRST_BOUNCE, HIT_FACTS, machine_flag, quarter_of
from edm.vocabulary.events import EventType
from edm.vocabulary.tasks import SendState

ARCHIVED = ARCHIVED_STRIPE
EVENT_COLUMNS = (
    Event.id,
    Event.task_id,
    Event.subtask_id,
    Event.event_type,
    Event.occurred_at,
    Event.match_status,
    Event.details,
)
_HIT_FACT_OF = {event_type: fact for fact, event_type in HIT_FACTS.items()}


def _machine(details: Any) -> bool:
    """A tracking hit the events job flagged as a machine's (the migration's `details ->> 'machine' = 'true'`)."""
    return isinstance(details, dict) and str(details.get("machine")).lower() == "true"


def _link_id(details: Any) -> int | None:
    value = details.get("link_id") if isinstance(details, dict) else None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


async def archive_events(session: AsyncSession, rows: Sequence[Any]) -> None:
    """Add the share of `rows` (deleted events, the columns of EVENT_COLUMNS) in the reports of tasks that still
    exist to the archive. Call it after the DELETE, in the same transaction."""
    matched = [r for r in rows if r.match_status == MatchStatus.MATCHED and r.task_id is not None]
    if not matched:
        return
    tasks = set(await session.scalars(select(Task.id).where(Task.id.in_({r.task_id for r in matched}))))
    matched = [r for r in matched if r.task_id in tasks]
    hits: Counter[tuple[int, str, int]] = Counter()
    clicks: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])  # link → [human, machine, clickers]
    clicked: dict[tuple[int, int], int] = {}  # (subtask, link) of a human click → task
    bounced: dict[int, tuple[int, dt.datetime]] = {}  # subtask → (task, its first bounce among these rows)
    for r in matched:
        machine = _machine(r.details)
        fact = _HIT_FACT_OF.get(r.event_type)
        if fact is not None and not machine:
            hits[(r.task_id, fact, quarter_of(r.occurred_at))] += 1
        if r.event_type == EventType.CLICKED and (link := _link_id(r.details)) is not None:
            clicks[link][1 if machine else 0] += 1
            if not machine and r.subtask_id is not None:
                clicked[(r.subtask_id, link)] = r.task_id
        if r.event_type in BOUNCE_EVENTS and r.subtask_id is not None:
            first = bounced.get(r.subtask_id)
            if first is None or r.occurred_at < first[1]:
                bounced[r.subtask_id] = (r.task_id, r.occurred_at)
    for subtask_id, link in await _still_clicked(session, {s for s, _ in clicked}):
        clicked.pop((subtask_id, link), None)
    for _subtask_id, link in clicked:
        clicks[link][2] += 1
    for subtask_id in await _still_bounced(session, set(bounced)):
        bounced.pop(subtask_id, None)
    for task_id, at in bounced.values():
        hits[(task_id, FIRST_BOUNCE, quarter_of(at))] += 1
    await _add_quarters(session, hits)
    await _add_link_clicks(session, clicks)


async def _still_clicked(session: AsyncSession, subtask_ids: set[int]) -> set[tuple[int, int]]:
    """(subtask, link) of the human clicks of these SubTasks that remain."""
    if not subtask_ids:
        return set()
    rows = await session.execute(
        select(Event.subtask_id, Event.details).where(
            Event.subtask_id.in_(subtask_ids),
            Event.event_type == EventType.CLICKED,
            Event.match_status == MatchStatus.MATCHED,
            machine_flag() == 0,
        )
    )
    return {(subtask_id, link) for subtask_id, details in rows if (link := _link_id(details)) is not None}


async def _still_bounced(session: AsyncSession, subtask_ids: set[int]) -> set[int]:
    """Those of these SubTasks that the bounce timeline does not count from the archive: a bounce event of theirs
    remains, or they failed at send time (counted as `refused` instead)."""
    if not subtask_ids:
        return set()
    remaining = set(
        await session.scalars(
            select(Event.subtask_id)
            .where(
                Event.subtask_id.in_(subtask_ids),
                Event.event_type.in_(BOUNCE_EVENTS),
                Event.match_status == MatchStatus.MATCHED,
            )
            .distinct()
        )
    )
    failed = set(
        await session.scalars(
            select(SubTask.id).where(SubTask.id.in_(subtask_ids), SubTask.send_state == SendState.FAILED)
        )
    )
    return {int(i) for i in remaining if i is not None} | failed


async def archive_attempts(session: AsyncSession, rows: Sequence[Any]) -> None:
    """Add deleted send attempts (subtask_id, service_id, outcome, duration_ms) to their tasks' archived attempts
    per service. Call it after the DELETE, in the same transaction (the SubTasks still exist)."""
    if not rows:
        return
    task_of = dict(
        (
            await session.execute(
                select(SubTask.id, SubTask.task_id).where(SubTask.id.in_({r.subtask_id for r in rows}))
            )
        ).all()
    )
    sums: dict[tuple[int, int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        task_id = task_of.get(r.subtask_id)
        if task_id is None:
            continue
        figures = sums[(task_id, r.service_id or 0, r.outcome)]
        figures[0] += 1
        figures[1] += r.duration_ms or 0
        figures[2] += r.duration_ms is not None
    if not sums:
        return
    c = TaskAttemptCounter
    values = [
        {"task_id": t, "service_id": s, "outcome": o, "stripe": ARCHIVED, "n": n, "total_ms": ms, "timed": timed}
        for (t, s, o), (n, ms, timed) in sorted(sums.items())
    ]
    statement = dialect_insert(session, c).values(values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[c.task_id, c.service_id, c.outcome, c.stripe],
            set_={
                "n": c.n + statement.excluded.n,
                "total_ms": c.total_ms + statement.excluded.total_ms,
                "timed": c.timed + statement.excluded.timed,
            },
        )
    )


async def _add_quarters(session: AsyncSession, counts: Counter[tuple[int, str, int]]) -> None:
    if not counts:
        return
    c = TaskQuarterCounter
    values = [
        {"task_id": t, "fact": f, "quarter": q, "stripe": ARCHIVED, "n": n} for (t, f, q), n in sorted(counts.items())
    ]
    statement = dialect_insert(session, c).values(values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[c.task_id, c.fact, c.quarter, c.stripe], set_={"n": c.n + statement.excluded.n}
        )
    )


async def _add_link_clicks(session: AsyncSession, clicks: dict[int, list[int]]) -> None:
    if not clicks:
        return
    known = set(await session.scalars(select(TrackedLink.id).where(TrackedLink.id.in_(list(clicks)))))
    values = [
        {"link_id": link, "clicks_human": human, "clicks_machine": machine, "human_clickers": clickers}
        for link, (human, machine, clickers) in sorted(clicks.items())
        if link in known
    ]
    if not values:
        return
    a = TaskLinkArchive
    statement = dialect_insert(session, a).values(values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[a.link_id],
            set_={
                "clicks_human": a.clicks_human + statement.excluded.clicks_human,
                "clicks_machine": a.clicks_machine + statement.excluded.clicks_machine,
                "human_clickers": a.human_clickers + statement.excluded.human_clickers,
            },
        )
    )


# ---- reading ------------------------------------------------------------------------------------------------------


async def archived_attempts(session: AsyncSession, task_id: int) -> list[tuple[int, str, int, int, int]]:
    """(service id or 0, outcome, attempts, summed ms, timed attempts) archived for the task."""
    c = TaskAttemptCounter
    rows = await session.execute(
        select(c.service_id, c.outcome, c.n, c.total_ms, c.timed).where(c.task_id == task_id, c.stripe == ARCHIVED)
    )
    return [(int(s), str(o), int(n), int(ms), int(t)) for s, o, n, ms, t in rows]


async def archived_link_clicks(session: AsyncSession, link_ids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """Per link: archived (human clicks, machine clicks, unique human clickers)."""
    ids = list(link_ids)
    if not ids:
        return {}
    a = TaskLinkArchive
    rows = await session.execute(
        select(a.link_id, a.clicks_human, a.clicks_machine, a.human_clickers).where(a.link_id.in_(ids))
    )
    return {int(link): (int(h), int(m), int(c)) for link, h, m, c in rows}


async def forget_deleted_tasks(session: AsyncSession, *, limit: int) -> int:
    """Drop archived counters of tasks that no longer exist (on PostgreSQL the `stats` job does it for every stripe);
    at most `limit` rows per table. Returns how many."""
    dropped = 0
    for model in (TaskQuarterCounter, TaskAttemptCounter):
        gone = (
            select(model.task_id)
            .where(model.stripe == ARCHIVED, ~select(Task.id).where(Task.id == model.task_id).exists())
            .distinct()
            .limit(limit)
        )
        ids = list(await session.scalars(gone))
        if ids:
            result = await session.execute(delete(model).where(model.task_id.in_(ids), model.stripe == ARCHIVED))
            dropped += int(getattr(result, "rowcount", 0) or 0)
    return dropped


async def count_deleted_tasks(session: AsyncSession) -> int:
    """How many archived counter rows belong to tasks that no longer exist."""
    total = 0
    for model in (TaskQuarterCounter, TaskAttemptCounter):
        orphan = ~select(Task.id).where(Task.id == model.task_id).exists()
        total += int(
            await session.scalar(select(func.count()).select_from(model).where(model.stripe == ARCHIVED, orphan)) or 0
        )
    return total
