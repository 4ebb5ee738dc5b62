"""When things happened: per task, fact and UTC quarter hour, how many times
(docs/statistics.md#breakdowns-and-timelines).

The task timeline and heat map, the dashboard's activity windows and its daily series all ask the same question:
how many recipients were sent to, delivered, opened … in each quarter hour. On PostgreSQL the answer is read from
`task_quarter_counters`, which triggers keep in the same transaction as every SubTask and event change (migration
0007): a few hundred rows per task, whatever its size. On SQLite it is aggregated from the rows, one GROUP BY per
fact. The two must agree: `FACTS` below and the migration's SQL spell the same definitions, and the counter test
compares them after every kind of change.

Quarters are integers (epoch seconds ÷ 900). Every time zone offset in use is a multiple of 15 minutes, so
callers fold quarters into local hours and days exactly.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, Select, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.models.events import Event, MatchStatus
from edm.models.tasks import ARCHIVED_STRIPE, SubTask, TaskQuarterCounter
from edm.tasks.stats import first_opened_human_at
from edm.vocabulary.events import EventType
from edm.vocabulary.tasks import DeliveryState, SendState

QUARTER = 900  # seconds
Quarters = list[tuple[int, int]]  # (quarter, count), in no particular order
REFUSED_STATES = (DeliveryState.SOFT_BOUNCED, DeliveryState.HARD_BOUNCED, DeliveryState.REJECTED)


@dataclass(frozen=True, slots=True)
class _RowFact:
    """A fact a SubTask row records once: the time it happened, and when it counts."""

    time: Any
    only_when: tuple[Any, ...] = ()


def _row_facts() -> dict[str, _RowFact]:
    s = SubTask
    return {
        "sent": _RowFact(s.sent_at),
        "delivered": _RowFact(s.delivered_at),
        "opened": _RowFact(first_opened_human_at()),  # the first human open or click
        "clicked": _RowFact(s.first_clicked_at),
        "hard_bounced": _RowFact(s.bounced_at),
        "complained": _RowFact(s.complained_at),
        "unsubscribed": _RowFact(s.unsubscribed_at),
        "replied": _RowFact(s.replied_at),
        # refused by the provider at send time: failed with a bounce delivery state, and no event to date it
        "refused": _RowFact(s.failed_at, (s.send_state == SendState.FAILED, s.delivery_state.in_(REFUSED_STATES))),
    }


# Every matched human tracking hit (an event without the `machine` flag is a person's).
HIT_FACTS = {"open_hits": EventType.OPENED, "click_hits": EventType.CLICKED}
# The events of a bounce after sending (the timeline's bounces), and the fact under which the retention job keeps the
# bounced recipients whose events it deleted (edm.tasks.archive).
BOUNCE_EVENTS = (EventType.SOFT_BOUNCED, EventType.HARD_BOUNCED, EventType.REJECTED)
FIRST_BOUNCE = "first_bounce"
ROW_FACTS = tuple(_row_facts())
FACTS = ROW_FACTS + tuple(HIT_FACTS)


def quarter_of(moment: dt.datetime) -> int:
    return int(moment.timestamp()) // QUARTER


def start_of(quarter: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(quarter * QUARTER, dt.UTC)


def quarter_expression(session: AsyncSession, column: Any) -> ColumnElement[int]:
    """The UTC quarter hour a timestamp falls in, as an integer, in SQL."""
    if _dialect(session) == "postgresql":
        # date_part() is double precision, exact to the microsecond for these dates; extract() is numeric and
        # took 2.5× as long over 200,000 rows.
        return cast(func.floor(func.date_part("epoch", column) / QUARTER), BigInteger)
    return cast(func.strftime("%s", column), Integer) // QUARTER


def machine_flag() -> ColumnElement[int]:
    """1 for a hit the events job flagged as a machine's (docs/tracking.md#people-and-machines), else 0."""
    flag = Event.details["machine"].as_boolean()
    return case((flag.is_(True), 1), else_=0)


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else "sqlite"


async def fact_quarters(
    session: AsyncSession,
    tasks: int | Select[Any],
    facts: Iterable[str],
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> dict[str, Quarters]:
    """Per fact, (quarter, count) for the task `tasks` (an id) or the tasks a SELECT of ids returns, restricted to
    the quarters from the one holding `since` to the one holding `until` when given."""
    wanted = list(facts)
    low = quarter_of(since) if since else None
    high = quarter_of(until) if until else None
    if _dialect(session) == "postgresql":
        return await _from_counters(session, tasks, wanted, low, high)
    return await from_rows(session, tasks, wanted, low, high)


def _of_tasks(column: Any, tasks: int | Select[Any]) -> Any:
    return column == tasks if isinstance(tasks, int) else column.in_(tasks.scalar_subquery())


def _in_range(expression: Any, low: int | None, high: int | None) -> list[Any]:
    conditions = []
    if low is not None:
        conditions.append(expression >= low)
    if high is not None:
        conditions.append(expression <= high)
    return conditions


async def _from_counters(
    session: AsyncSession, tasks: int | Select[Any], facts: list[str], low: int | None, high: int | None
) -> dict[str, Quarters]:
    c = TaskQuarterCounter
    found: dict[str, Quarters] = {fact: [] for fact in facts}
    rows = await session.execute(
        select(c.fact, c.quarter, func.sum(c.n))
        .where(_of_tasks(c.task_id, tasks), c.fact.in_(facts), *_in_range(c.quarter, low, high))
        .group_by(c.fact, c.quarter)
        .having(func.sum(c.n) != 0)
    )
    for fact, quarter, n in rows:
        found[fact].append((int(quarter), int(n)))
    return found


async def from_rows(
    session: AsyncSession, tasks: int | Select[Any], facts: list[str], low: int | None = None, high: int | None = None
) -> dict[str, Quarters]:
    """`fact_quarters` aggregated from the rows whatever the database (what SQLite serves, and what
    `edm stats verify` compares the PostgreSQL counters with), with the hits of events the retention job deleted
    (`archived_quarters`)."""
    row_facts = _row_facts()
    found: dict[str, Quarters] = defaultdict(list)
    archived = await archived_quarters(session, tasks, [f for f in facts if f in HIT_FACTS], low, high)
    for fact in facts:
        if fact in HIT_FACTS:
            time = Event.occurred_at
            conditions = [
                _of_tasks(Event.task_id, tasks),
                Event.event_type == HIT_FACTS[fact],
                Event.match_status == MatchStatus.MATCHED,
                machine_flag() == 0,
            ]
        else:
            time = row_facts[fact].time
            conditions = [_of_tasks(SubTask.task_id, tasks), time.is_not(None), *row_facts[fact].only_when]
        quarter = quarter_expression(session, time)
        query = select(quarter, func.count()).where(*conditions, *_in_range(quarter, low, high)).group_by(quarter)
        found[fact] = [(int(q), int(n)) for q, n in await session.execute(query)]
        if archived.get(fact):
            found[fact] = merge_quarters(found[fact], archived[fact])
    return {fact: found[fact] for fact in facts}


async def archived_quarters(
    session: AsyncSession,
    tasks: int | Select[Any],
    facts: Iterable[str],
    low: int | None = None,
    high: int | None = None,
) -> dict[str, Quarters]:
    """Per fact, the (quarter, count) the retention job archived (stripe ARCHIVED_STRIPE, edm.tasks.archive) for the
    task `tasks` (an id) or the tasks a SELECT of ids returns."""
    c = TaskQuarterCounter
    wanted = list(facts)
    found: dict[str, Quarters] = {fact: [] for fact in wanted}
    if not wanted:
        return found
    rows = await session.execute(
        select(c.fact, c.quarter, func.sum(c.n))
        .where(
            c.stripe == ARCHIVED_STRIPE,
            c.fact.in_(wanted),
            _of_tasks(c.task_id, tasks),
            *_in_range(c.quarter, low, high),
        )
        .group_by(c.fact, c.quarter)
    )
    for fact, quarter, n in rows:
        found[fact].append((int(quarter), int(n)))
    return found


def merge_quarters(*parts: Quarters) -> Quarters:
    """Quarters of several sources, summed per quarter."""
    total: dict[int, int] = defaultdict(int)
    for part in parts:
        for quarter, n in part:
            total[quarter] += n
    return [(q, n) for q, n in total.items() if n]
