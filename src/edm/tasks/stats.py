"""Task statistics as a function of SubTask rows (docs/statistics.md). Nothing else is authoritative.

On PostgreSQL the counts are read from `task_stat_counters`, which a trigger on `subtasks` keeps in the
same transaction as every row change (migration 0002): a few dozen rows to sum, whatever the task's size.
On SQLite they come from one grouped aggregate over the task's rows. Rates are derived. `recount()` is the
independent check used by `edm stats verify`: every row read and classified in Python.

"Opened" has one definition, here, used by the statistics, the reports, the dashboards and the recipient
filters: a recipient opened the message (human) when a person opened it or clicked in it. A click proves the
open even when the images, and so the pixel, were blocked. Machine hits (scanners, previews, privacy proxies)
never count as a person's; `opened_total` counts them as well. (The PostgreSQL counter trigger of migration
0002 spells the same expressions in SQL; `recount()` checks the two agree.)
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import ColumnElement, case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from edm.models.tasks import SubTask, TaskStatCounter
from edm.vocabulary.tasks import SendState

DELIVERY_STATES = ("deferred", "soft_bounced", "hard_bounced", "rejected", "complained")
_BOUNCED = ("soft_bounced", "hard_bounced", "rejected")


def opened_human() -> ColumnElement[bool]:
    """The SubTask's recipient opened the message: a human open or a human click."""
    return (SubTask.open_count > 0) | (SubTask.click_count > 0)


def opened_total() -> ColumnElement[bool]:
    """Any open or click, a machine's included."""
    return opened_human() | (SubTask.machine_open_count > 0) | (SubTask.machine_click_count > 0)


def clicked_human() -> ColumnElement[bool]:
    return SubTask.click_count > 0


def clicked_total() -> ColumnElement[bool]:
    return (SubTask.click_count > 0) | (SubTask.machine_click_count > 0)


def first_opened_human_at() -> ColumnElement[dt.datetime]:
    """When the recipient first opened (human): the earlier of the first human open and the first human click;
    NULL when neither happened. (Spelled as a CASE: SQLite's min() of a NULL is NULL.)"""
    opened, clicked = SubTask.first_opened_at, SubTask.first_clicked_at
    return case((opened.is_(None), clicked), (clicked.is_(None), opened), (clicked < opened, clicked), else_=opened)


def _rate(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else round(numerator / denominator, 4)


async def task_stats(session: AsyncSession, task_id: int) -> dict[str, Any]:
    return _assemble((await stat_groups(session, task_id)).get(None, []))


# What a task's SubTasks can be split by besides the statistics' own groups: the task template (A/B) and the
# service of the last attempt. Both are counter keys too (migration 0007), 0 standing for none.
SPLITS = ("task_template_id", "service_id")


async def stat_groups(session: AsyncSession, task_id: int, *, by: str | None = None) -> dict[int | None, list[_Group]]:
    """The task's SubTasks in the groups `_assemble` takes, all under the key None, or split by one of `SPLITS`
    (keyed by its value, None for none)."""
    if session.get_bind().dialect.name == "postgresql":
        return await _counter_groups(session, task_id, by)
    return await _row_groups(session, task_id, by)


_GROUP = ("send_state", "tried", "charged", "suppressed_reason", "last_error_class", "delivery_state")
_SUMS = (
    "opened_human",
    "opened_total",
    "clicked_human",
    "clicked_total",
    "opens",
    "machine_opens",
    "clicks",
    "machine_clicks",
    "unsubscribed",
    "replied",
)


async def _counter_groups(session: AsyncSession, task_id: int, by: str | None) -> dict[int | None, list[_Group]]:
    c = TaskStatCounter
    split = [getattr(c, by)] if by else []
    keys = [*split, *(getattr(c, k) for k in _GROUP)]
    rows = await session.execute(
        select(*keys, func.sum(c.n), *(func.sum(getattr(c, k)) for k in _SUMS))
        .where(c.task_id == task_id)
        .group_by(*keys)
        .having(func.sum(c.n) != 0)
    )
    groups: dict[int | None, list[_Group]] = defaultdict(list)
    for row in rows:
        key = (row[0] or None) if by else None
        state, tried, charged, reason, error, delivery, n, *sums = row[1:] if by else row
        groups[key].append(_Group(state, tried, charged, reason or None, error or None, delivery, int(n), *sums))
    return groups


_FOLD_LOCK = 0x4544_4D53_5441_5453  # "EDMSTATS": one fold at a time across workers
# Per counter table: its group keys (stripe excluded) and its sums.
_COUNTERS = {
    "task_stat_counters": (("task_id", *SPLITS, *_GROUP), ("n", *_SUMS)),
    "task_quarter_counters": (("task_id", "fact", "quarter"), ("n",)),
    "task_attempt_counters": (("task_id", "service_id", "outcome"), ("n", "total_ms", "timed")),
}
# Counter tables keyed by service rather than task, folded the same way. None is dropped as an orphan: services are
# archived, never deleted, and an attempt deleted with its task subtracts itself (its row names its service).
_SERVICE_COUNTERS = {"service_attempt_hours": (("service_id", "hour", "outcome"), ("n", "total_ms", "timed"))}


async def fold_counter_stripes(session: AsyncSession) -> int:
    """Fold every backend's stripe of every counter table into stripe 0 and drop emptied groups; the number of
    rows folded. Stripe -1 (what the retention job archived, edm.tasks.archive) stays as it is. Counters of tasks
    that no longer exist are dropped too (a deleted task's send attempts cannot subtract themselves: their
    SubTasks are gone first).

    It never waits for a lock, so it can never be part of a deadlock: one fold at a time (a transaction
    advisory lock, skipped when taken), and stripe rows a running transaction holds are skipped (SKIP
    LOCKED) until the next fold. A stripe row deleted here while its backend adds to it is re-inserted by
    that backend's upsert once this transaction commits."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _FOLD_LOCK}):
        return 0
    folded = 0
    for table, (group, sums) in _COUNTERS.items():
        folded += await _fold(session, table, group, sums)
        await session.execute(  # skipping locked rows, like the fold: never a wait
            text(f"""
            DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {table} c WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = c.task_id)
                FOR UPDATE SKIP LOCKED))""")
        )
    for table, (group, sums) in _SERVICE_COUNTERS.items():
        folded += await _fold(session, table, group, sums)
    return folded


async def _fold(session: AsyncSession, table: str, group: tuple[str, ...], sums: tuple[str, ...]) -> int:
    keys = ", ".join(group)
    result = await session.execute(
        text(f"""
        WITH moved AS (
            DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {table} WHERE stripe > 0 FOR UPDATE SKIP LOCKED))
            RETURNING *),
        folded AS (
            INSERT INTO {table} AS c ({keys}, stripe, {", ".join(sums)})
            SELECT {keys}, 0, {", ".join(f"sum({s})" for s in sums)}
            FROM moved GROUP BY {keys} ORDER BY {keys}
            ON CONFLICT ({keys}, stripe) DO UPDATE SET {", ".join(f"{s} = c.{s} + excluded.{s}" for s in sums)}
        )
        SELECT count(*) FROM moved""")
    )
    folded = int(result.scalar_one())
    emptied = " AND ".join(f"{s} = 0" for s in sums)
    await session.execute(text(f"DELETE FROM {table} WHERE stripe = 0 AND {emptied}"))
    return folded


async def _row_groups(session: AsyncSession, task_id: int, by: str | None) -> dict[int | None, list[_Group]]:
    s = SubTask
    split = [getattr(s, by)] if by else []
    tried = case((s.attempts > 0, True), else_=False).label("tried")
    keys = [*split, s.send_state, tried, s.charged, s.suppressed_reason, s.last_error_class, s.delivery_state]
    rows = await session.execute(
        select(
            *keys,
            func.count().label("n"),
            func.sum(case((opened_human(), 1), else_=0)),
            func.sum(case((opened_total(), 1), else_=0)),
            func.sum(case((clicked_human(), 1), else_=0)),
            func.sum(case((clicked_total(), 1), else_=0)),
            func.sum(s.open_count),
            func.sum(s.machine_open_count),
            func.sum(s.click_count),
            func.sum(s.machine_click_count),
            func.sum(case((s.unsubscribed_at.is_not(None), 1), else_=0)),
            func.sum(case((s.replied_at.is_not(None), 1), else_=0)),
        )
        .where(s.task_id == task_id)
        .group_by(*keys)
    )
    groups: dict[int | None, list[_Group]] = defaultdict(list)
    for row in rows:
        groups[row[0] if by else None].append(_Group(*(row[1:] if by else row)))
    return groups


class _Group:
    def __init__(
        self,
        state: str,
        tried: Any,
        charged: Any,
        reason: str | None,
        error_class: str | None,
        delivery: str,
        n: int,
        *sums: Any,
    ) -> None:
        self.state, self.tried, self.charged, self.reason = state, bool(tried), bool(charged), reason
        self.error_class, self.delivery, self.n = error_class, delivery, n
        (
            self.opened_human,
            self.opened_total,
            self.clicked_human,
            self.clicked_total,
            self.opens,
            self.machine_opens,
            self.clicks,
            self.machine_clicks,
            self.unsubscribed,
            self.replied,
        ) = (int(v or 0) for v in sums)


def _assemble(groups: list[_Group]) -> dict[str, Any]:
    c: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    failed_by_class: Counter[str] = Counter()
    delivery: Counter[str] = Counter()
    for g in groups:
        c["recipients"] += g.n
        if g.state == SendState.SUPPRESSED:
            if g.charged:
                c["suppressed_later"] += g.n
            else:
                excluded[g.reason or "unknown"] += g.n
        elif g.state == SendState.PENDING:
            c["retrying" if g.tried else "queued"] += g.n
        elif g.state == SendState.ALLOCATED:
            c["in_flight"] += g.n
        else:
            c[g.state] += g.n
        if g.state == SendState.FAILED:
            failed_by_class[g.error_class or "unknown"] += g.n
        delivery[g.delivery] += g.n
        if g.state == SendState.SENT and g.delivery in _BOUNCED:
            c["bounced_after_send"] += g.n
        for key in (
            "opened_human",
            "opened_total",
            "clicked_human",
            "clicked_total",
            "opens",
            "machine_opens",
            "clicks",
            "machine_clicks",
            "unsubscribed",
            "replied",
        ):
            c[key] += getattr(g, key)
    sent, failed = c["sent"], c["failed"]
    # Only sent mail can bounce: a recipient the provider refused at send time is `failed` with delivery state
    # `rejected`, and is in neither `sent` nor `reached` (docs/statistics.md#the-numbers defines reached as sent minus
    # bounces).
    bounced = c["bounced_after_send"]
    reached = sent - bounced
    delivered = delivery["delivered"] + delivery["complained"]
    final = sent + failed + c["cancelled"] + c["suppressed_later"] + sum(excluded.values())
    counts = {
        "recipients": c["recipients"],
        "excluded": sum(excluded.values()),
        "excluded_by_reason": dict(excluded),
        "suppressed_later": c["suppressed_later"],
        "queued": c["queued"],
        "retrying": c["retrying"],
        "in_flight": c["in_flight"],
        "uncertain": c["uncertain"],
        "sent": sent,
        "failed": failed,
        "failed_by_class": dict(failed_by_class),
        "cancelled": c["cancelled"],
        "delivered": delivered,
        **{state: delivery[state] for state in DELIVERY_STATES},
        "reached": reached,
        "opened_human": c["opened_human"],
        "opened_total": c["opened_total"],
        "clicked_human": c["clicked_human"],
        "clicked_total": c["clicked_total"],
        "opens": c["opens"],
        "machine_opens": c["machine_opens"],
        "clicks": c["clicks"],
        "machine_clicks": c["machine_clicks"],
        "unsubscribed": c["unsubscribed"],
        "replied": c["replied"],
    }
    counts["rates"] = {
        "delivery": _rate(delivered, sent),
        "bounce": _rate(bounced, sent),
        "failure": _rate(failed, sent + failed),
        "open_human": _rate(c["opened_human"], reached),
        "open_total": _rate(c["opened_total"], reached),
        "click": _rate(c["clicked_human"], reached),
        "click_to_open": _rate(c["clicked_human"], c["opened_human"]),
        "complaint": _rate(delivery["complained"], reached),
        "unsubscribe": _rate(c["unsubscribed"], reached),
        "reply": _rate(c["replied"], reached),
    }
    counts["progress"] = _rate(final, c["recipients"])
    return counts


async def recount(session: AsyncSession, task_id: int) -> dict[str, Any]:
    """Independent recount: stream every row and classify it in Python, then assemble the same shape. Whether
    a row counts as opened or clicked is read with the one definition above, evaluated per row."""
    groups: dict[tuple[Any, ...], _Group] = {}
    rows = await session.stream(
        select(
            SubTask.send_state,
            SubTask.attempts,
            SubTask.charged,
            SubTask.suppressed_reason,
            SubTask.last_error_class,
            SubTask.delivery_state,
            SubTask.open_count,
            SubTask.machine_open_count,
            SubTask.click_count,
            SubTask.machine_click_count,
            SubTask.unsubscribed_at,
            SubTask.replied_at,
            opened_human().label("opened_human"),
            opened_total().label("opened_total"),
            clicked_human().label("clicked_human"),
            clicked_total().label("clicked_total"),
        ).where(SubTask.task_id == task_id)
    )
    async for r in rows:
        key = (r.send_state, r.attempts > 0, bool(r.charged), r.suppressed_reason, r.last_error_class, r.delivery_state)
        g = groups.setdefault(key, _Group(*key, 0, *([0] * 10)))
        g.n += 1
        g.opened_human += bool(r.opened_human)
        g.opened_total += bool(r.opened_total)
        g.clicked_human += bool(r.clicked_human)
        g.clicked_total += bool(r.clicked_total)
        g.opens += r.open_count
        g.machine_opens += r.machine_open_count
        g.clicks += r.click_count
        g.machine_clicks += r.machine_click_count
        g.unsubscribed += r.unsubscribed_at is not None
        g.replied += r.replied_at is not None
    return _assemble(list(groups.values()))
