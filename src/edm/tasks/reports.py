"""Task reports (docs/statistics.md#reports): breakdowns of one task by service, template, link, recipient domain and
time, and the per-recipient list, detail and CSV export.

Read-only queries over the task's SubTasks, their send attempts and the task's matched events. Counts come
from SubTask rows, as the task statistics do (docs/statistics.md#where-the-numbers-come-from); only what a row cannot
say comes from events: which link was clicked, every human open and click hit for the timeline and heat map, and when
a bounce arrived. A tracking event counts as a machine's when its `details.machine` flag is true; a missing flag is
human.

Time buckets are computed in two steps so that one query shape serves SQLite and PostgreSQL and every time
zone: the database groups by UTC quarter hour (every zone offset in use is a multiple of 15 minutes), and
Python moves each quarter into the task's time zone and folds it into local hours, days or weekday × hour.

The CSV export (`export_rows`) opens one short read session per chunk of rows rather than taking one: a
streamed download may take minutes and must not hold a transaction (on SQLite, the database's write lock)
while the bytes travel to the client.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import BigInteger, and_, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import csvfmt
from edm.models.email_services import EmailService
from edm.models.events import Event, MatchStatus
from edm.models.tasks import SendAttempt, SubTask, Task, TaskAttemptCounter, TaskTemplate
from edm.models.tracking import TrackedLink
from edm.paging import Page
from edm.tasks import archive
from edm.tasks.facts import (
    BOUNCE_EVENTS,
    FIRST_BOUNCE,
    Quarters,
    archived_quarters,
    fact_quarters,
    machine_flag,
    merge_quarters,
    quarter_expression,
    start_of,
)
from edm.tasks.stats import _assemble, clicked_human, opened_human, stat_groups
from edm.vocabulary.events import EventType
from edm.vocabulary.tasks import DeliveryState, SendState, TaskKind

BOUNCED_STATES = (DeliveryState.SOFT_BOUNCED, DeliveryState.HARD_BOUNCED, DeliveryState.REJECTED)
TOP_DOMAINS = 20
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class DisplayStatus(enum.StrEnum):
    """The display status (docs/states.md#engagement-and-display-status), in the order the conditions are tried:
    the first that holds names the recipient."""

    REPLIED = "replied"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    CLICKED = "clicked"
    OPENED = "opened"
    HARD_BOUNCED = "hard_bounced"
    REJECTED = "rejected"
    SOFT_BOUNCED = "soft_bounced"
    DELIVERED = "delivered"
    DELIVERY_DELAYED = "delivery_delayed"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
    UNCERTAIN = "uncertain"
    SENDING = "sending"
    RETRYING = "retrying"
    QUEUED = "queued"


class Engagement(enum.StrEnum):
    OPENED = "opened"  # a human open or click (a click implies the open, docs/statistics.md)
    CLICKED = "clicked"  # at least one human click
    UNSUBSCRIBED = "unsubscribed"
    NONE = "none"  # no human open or click, no unsubscribe, no reply


class Bucket(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"


def display_status() -> Any:
    """The display status (docs/states.md#engagement-and-display-status) as one SQL expression: the same definition
    filters the list and labels every row."""
    s = SubTask
    return case(
        (s.replied_at.is_not(None), DisplayStatus.REPLIED.value),
        (s.delivery_state == DeliveryState.COMPLAINED, DisplayStatus.COMPLAINED.value),
        (s.unsubscribed_at.is_not(None), DisplayStatus.UNSUBSCRIBED.value),
        (s.click_count > 0, DisplayStatus.CLICKED.value),
        (s.open_count > 0, DisplayStatus.OPENED.value),
        (s.delivery_state.in_(BOUNCED_STATES), s.delivery_state),
        (s.delivery_state == DeliveryState.DELIVERED, DisplayStatus.DELIVERED.value),
        (s.delivery_state == DeliveryState.DEFERRED, DisplayStatus.DELIVERY_DELAYED.value),
        (
            s.send_state.in_(
                (SendState.SENT, SendState.FAILED, SendState.SUPPRESSED, SendState.CANCELLED, SendState.UNCERTAIN)
            ),
            s.send_state,
        ),
        (s.send_state == SendState.ALLOCATED, DisplayStatus.SENDING.value),
        (s.attempts > 0, DisplayStatus.RETRYING.value),
        else_=DisplayStatus.QUEUED.value,
    )


def display_condition(status: DisplayStatus) -> Any:
    """`display_status() == status` spelled as plain column conditions, so that the database can filter a task's
    recipients by a display status through the indexes on send and delivery state instead of evaluating the CASE
    for every row. Each status holds when its own condition holds and none tried before it does (the order of
    `display_status`); a test compares the two for every status."""
    s, d = SubTask, DisplayStatus
    quiet = and_(s.replied_at.is_(None), s.unsubscribed_at.is_(None), s.click_count == 0, s.open_count == 0)
    engaged_before: dict[DisplayStatus, list[Any]] = {  # what is tried before each engagement status
        d.REPLIED: [],
        d.COMPLAINED: [s.replied_at.is_(None)],
        d.UNSUBSCRIBED: [s.replied_at.is_(None), s.delivery_state != DeliveryState.COMPLAINED],
        d.CLICKED: [s.replied_at.is_(None), s.unsubscribed_at.is_(None), s.delivery_state != DeliveryState.COMPLAINED],
        d.OPENED: [
            s.replied_at.is_(None),
            s.unsubscribed_at.is_(None),
            s.click_count == 0,
            s.delivery_state != DeliveryState.COMPLAINED,
        ],
    }
    own = {
        d.REPLIED: s.replied_at.is_not(None),
        d.COMPLAINED: s.delivery_state == DeliveryState.COMPLAINED,
        d.UNSUBSCRIBED: s.unsubscribed_at.is_not(None),
        d.CLICKED: s.click_count > 0,
        d.OPENED: s.open_count > 0,
    }
    if status in own:
        return and_(own[status], *engaged_before[status])
    by_delivery = {
        d.HARD_BOUNCED: DeliveryState.HARD_BOUNCED,
        d.REJECTED: DeliveryState.REJECTED,
        d.SOFT_BOUNCED: DeliveryState.SOFT_BOUNCED,
        d.DELIVERED: DeliveryState.DELIVERED,
        d.DELIVERY_DELAYED: DeliveryState.DEFERRED,
    }
    if status in by_delivery:
        return and_(s.delivery_state == by_delivery[status], quiet)
    no_delivery = and_(s.delivery_state == DeliveryState.NONE, quiet)
    if status is d.SENDING:
        return and_(s.send_state == SendState.ALLOCATED, no_delivery)
    if status is d.RETRYING:
        return and_(s.send_state == SendState.PENDING, s.attempts > 0, no_delivery)
    if status is d.QUEUED:
        return and_(s.send_state == SendState.PENDING, s.attempts == 0, no_delivery)
    return and_(s.send_state == SendState(status.value), no_delivery)  # sent, failed, suppressed, cancelled, uncertain


def _engagement(kind: Engagement) -> Any:
    s = SubTask
    opened = opened_human()
    return {
        Engagement.OPENED: opened,
        Engagement.CLICKED: clicked_human(),
        Engagement.UNSUBSCRIBED: s.unsubscribed_at.is_not(None),
        Engagement.NONE: ~opened & s.unsubscribed_at.is_(None) & s.replied_at.is_(None),
    }[kind]


@dataclass(frozen=True, slots=True)
class SubtaskFilters:
    """The per-recipient filters (docs/statistics.md#per-recipient-who-got-it-and-what-happened); None means "any"."""

    send_state: SendState | None = None
    delivery_state: DeliveryState | None = None
    display_status: DisplayStatus | None = None
    engagement: Engagement | None = None
    email: str | None = None  # a substring of the address, case-insensitive
    service_id: int | None = None  # the service of the last attempt

    def conditions(self) -> list[Any]:
        s, found = SubTask, []
        if self.send_state is not None:
            found.append(s.send_state == self.send_state)
        if self.delivery_state is not None:
            found.append(s.delivery_state == self.delivery_state)
        if self.display_status is not None:
            found.append(display_condition(self.display_status))
        if self.engagement is not None:
            found.append(_engagement(self.engagement))
        if self.email and self.email.strip():
            found.append(s.recipient_email.contains(self.email.strip().lower(), autoescape=True))
        if self.service_id is not None:
            found.append(s.service_id == self.service_id)
        return found


# --------------------------------------------------------------------------------------------------------
# Per recipient
# --------------------------------------------------------------------------------------------------------


def _subtasks(task_id: int, filters: SubtaskFilters) -> Any:
    """SubTask rows with their display status and the label of their service, in id order."""
    return (
        select(SubTask, display_status().label("display_status"), EmailService.label.label("service_label"))
        .outerjoin(EmailService, EmailService.id == SubTask.service_id)
        .where(SubTask.task_id == task_id, *filters.conditions())
        .order_by(SubTask.id)
    )


async def subtask_page(
    session: AsyncSession, task_id: int, filters: SubtaskFilters, *, after_id: int | None, limit: int
) -> list[Any]:
    """Rows (SubTask, display_status, service_label) after `after_id`, at most `limit`."""
    query = _subtasks(task_id, filters).limit(limit)
    if after_id:
        query = query.where(SubTask.id > after_id)
    return list((await session.execute(query)).all())


async def count_subtasks(
    session: AsyncSession, task_id: int, filters: SubtaskFilters, *, cap: int | None = None
) -> int:
    """How many of the task's SubTasks match; with `cap`, counting stops after cap + 1 (exact up to `cap`, cap + 1
    meaning "more than cap": what a list page shows, in time that does not grow with the task)."""
    conditions = [SubTask.task_id == task_id, *filters.conditions()]
    if cap is None:
        return int(await session.scalar(select(func.count()).select_from(SubTask).where(*conditions)) or 0)
    matching = select(SubTask.id).where(*conditions).limit(cap + 1).subquery()
    return int(await session.scalar(select(func.count()).select_from(matching)) or 0)


async def subtask_row(session: AsyncSession, task_id: int, subtask_id: int) -> Any | None:
    query = _subtasks(task_id, SubtaskFilters()).where(SubTask.id == subtask_id)
    return (await session.execute(query)).first()


async def subtasks_of_address(session: AsyncSession, *, user_id: int, email: str, page: Page) -> list[SubTask]:
    """What happened to this address across the user's own campaigns (not test sends), in id order:
    `page.limit + 1` rows after its id (for `page_of`). Reaches the (task_id, recipient_email) index."""
    own_tasks = select(Task.id).where(Task.user_id == user_id, Task.kind == TaskKind.BULK)
    query = (
        select(SubTask)
        .where(
            SubTask.task_id.in_(own_tasks),
            SubTask.user_id == user_id,
            SubTask.recipient_email == email.strip().lower(),
        )
        .order_by(SubTask.id)
        .limit(page.limit + 1)
    )
    if page.after_id:
        query = query.where(SubTask.id > page.after_id)
    return list(await session.scalars(query))


async def awaiting_delivery_reports(session: AsyncSession, task_id: int, *, provider: str) -> int:
    """The task's SubTasks sent through services of `provider` whose delivery report has not been applied."""
    services = select(EmailService.id).where(EmailService.provider == provider)
    query = (
        select(func.count())
        .select_from(SubTask)
        .where(
            SubTask.task_id == task_id,
            SubTask.send_state == SendState.SENT,
            SubTask.delivery_state == DeliveryState.NONE,
            SubTask.service_id.in_(services),
        )
    )
    return int(await session.scalar(query) or 0)


async def subtask_history(session: AsyncSession, subtask_id: int) -> dict[str, list[dict[str, Any]]]:
    """Every send attempt and every event of one SubTask, each list and their merge in time order."""
    attempts = [
        _attempt_view(a)
        for a in await session.scalars(
            select(SendAttempt)
            .where(SendAttempt.subtask_id == subtask_id)
            .order_by(func.coalesce(SendAttempt.started_at, SendAttempt.finished_at), SendAttempt.id)
        )
    ]
    events = [
        _event_view(e)
        for e in await session.scalars(
            select(Event).where(Event.subtask_id == subtask_id).order_by(Event.occurred_at, Event.id)
        )
    ]
    merged = [{"kind": "attempt", **a} for a in attempts] + [{"kind": "event", **e} for e in events]
    merged.sort(key=lambda item: (item["at"], item["kind"] == "event"))  # an attempt before its own events
    return {"attempts": attempts, "events": events, "history": merged}


def _attempt_view(a: SendAttempt) -> dict[str, Any]:
    return {
        "at": a.started_at or a.finished_at,
        "attempt_no": a.attempt_no,
        "service_id": a.service_id,
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "duration_ms": a.duration_ms,
        "outcome": a.outcome,
        "status": a.status,
        "provider_code": a.provider_code,
        "message": a.message,
        "provider_message_id": a.provider_message_id,
    }


def _event_view(e: Event) -> dict[str, Any]:
    return {
        "at": e.occurred_at,
        "id": e.id,
        "event_type": e.event_type,
        "source": e.source,
        "provider_event": e.provider_event,
        "occurred_at": e.occurred_at,
        "received_at": e.received_at,
        "match_status": e.match_status,
        "details": e.details,
    }


# --------------------------------------------------------------------------------------------------------
# Per service
# --------------------------------------------------------------------------------------------------------


def _count_if(condition: Any) -> Any:
    return func.sum(case((condition, 1), else_=0))


async def by_service(session: AsyncSession, task_id: int, *, admin: bool) -> list[dict[str, Any]]:
    """Per service: its attempts for this task by outcome and their mean latency, and the SubTasks whose last
    attempt it made by result. Users see the label only; admins also the id, name and provider."""
    report: dict[int | None, dict[str, Any]] = defaultdict(_empty_service_row)
    for service_id, outcome, n, total_ms, timed in await attempts_by_service(session, task_id):
        row = report[service_id or None]
        row["attempts"][outcome] = row["attempts"].get(outcome, 0) + int(n)
        row["attempts_total"] += int(n)
        row["_ms"] += int(total_ms or 0)
        row["_timed"] += int(timed)
    for service_id, groups in (await stat_groups(session, task_id, by="service_id")).items():
        if service_id is None:
            continue
        row = report[service_id]
        for g in groups:
            if g.state in (SendState.SENT, SendState.FAILED, SendState.UNCERTAIN):
                row[g.state] += g.n
            if g.delivery in BOUNCED_STATES:
                row["bounced"] += g.n
            if g.delivery in (DeliveryState.DELIVERED, DeliveryState.COMPLAINED):
                row["delivered"] += g.n
    services = {
        svc.id: svc
        for svc in await session.execute(  # never the credentials columns
            select(EmailService.id, EmailService.label, EmailService.name, EmailService.provider).where(
                EmailService.id.in_([k for k in report if k is not None])
            )
        )
    }
    rows = [_service_view(report[k], services.get(k) if k else None, admin=admin) for k in report]
    return sorted(rows, key=lambda r: (-r["sent"], -r["attempts_total"], r["label"] or ""))


async def attempts_by_service(session: AsyncSession, task_id: int, *, from_rows: bool = False) -> Sequence[Any]:
    """(service id or 0/None, outcome, attempts, summed ms, timed attempts) of the task's send attempts: from the
    counters of migration 0007 on PostgreSQL, from the attempt rows on SQLite (or when `from_rows`) with those the
    retention job deleted (edm.tasks.archive)."""
    query: Any
    if _dialect(session) == "postgresql" and not from_rows:
        c = TaskAttemptCounter
        query = (
            select(c.service_id, c.outcome, func.sum(c.n), func.sum(c.total_ms), func.sum(c.timed))
            .where(c.task_id == task_id)
            .group_by(c.service_id, c.outcome)
            .having(func.sum(c.n) != 0)
        )
    else:
        query = (
            select(
                SendAttempt.service_id,
                SendAttempt.outcome,
                func.count(),
                func.sum(SendAttempt.duration_ms),
                func.count(SendAttempt.duration_ms),
            )
            .join(SubTask, SubTask.id == SendAttempt.subtask_id)
            .where(SubTask.task_id == task_id)
            .group_by(SendAttempt.service_id, SendAttempt.outcome)
        )
        return _with_archived(
            list((await session.execute(query)).all()), await archive.archived_attempts(session, task_id)
        )
    return (await session.execute(query)).all()


def _with_archived(rows: list[Any], archived: list[tuple[int, str, int, int, int]]) -> list[Any]:
    """Attempt rows per (service, outcome) with the archived ones added (a deleted service is None in the rows and 0
    in the archive)."""
    if not archived:
        return rows
    merged: dict[tuple[int, str], list[int]] = {}
    for service_id, outcome, n, total_ms, timed in [*rows, *archived]:
        figures = merged.setdefault((int(service_id or 0), str(outcome)), [0, 0, 0])
        figures[0] += int(n)
        figures[1] += int(total_ms or 0)
        figures[2] += int(timed)
    return [(s or None, o, n, ms, t) for (s, o), (n, ms, t) in merged.items()]


def _empty_service_row() -> dict[str, Any]:
    return {
        "attempts": {},
        "attempts_total": 0,
        "sent": 0,
        "failed": 0,
        "uncertain": 0,
        "bounced": 0,
        "delivered": 0,
        "_ms": 0,
        "_timed": 0,
    }


def _service_view(row: dict[str, Any], service: Any, *, admin: bool) -> dict[str, Any]:
    total_ms, timed = row.pop("_ms"), row.pop("_timed")
    view = {
        "label": service.label if service else None,
        **row,
        "avg_latency_ms": round(total_ms / timed, 1) if timed else None,
    }
    if admin:
        view.update(
            service_id=service.id if service else None,
            name=service.name if service else None,
            provider=service.provider if service else None,
        )
    return view


# --------------------------------------------------------------------------------------------------------
# Per template (A/B)
# --------------------------------------------------------------------------------------------------------


async def by_template(session: AsyncSession, task_id: int) -> list[dict[str, Any]]:
    """Per task template: every count and rate of the task statistics (docs/statistics.md#the-numbers), over its
    recipients only."""
    groups = await stat_groups(session, task_id, by="task_template_id")
    templates = list(
        await session.scalars(
            select(TaskTemplate).where(TaskTemplate.task_id == task_id).order_by(TaskTemplate.position, TaskTemplate.id)
        )
    )
    rows = [
        {
            "task_template_id": t.id,
            "template_id": t.template_id,
            "name": t.name,
            "weight": t.weight,
            **_assemble(groups.pop(t.id, [])),
        }
        for t in templates
    ]
    for orphan, found in groups.items():  # a SubTask whose task template is gone: kept visible, not dropped
        rows.append({"task_template_id": orphan, "template_id": None, "name": None, "weight": None, **_assemble(found)})
    return rows


# --------------------------------------------------------------------------------------------------------
# Per link
# --------------------------------------------------------------------------------------------------------


def _task_events(task_id: int, *types: str) -> list[Any]:
    return [Event.task_id == task_id, Event.event_type.in_(types), Event.match_status == MatchStatus.MATCHED]


async def by_link(session: AsyncSession, task_id: int, *, after_id: int | None, limit: int) -> list[dict[str, Any]]:
    """Tracked links of the task in id order, each with its human and machine clicks and unique human clickers
    (from the task's matched `clicked` events, by `details.link_id`)."""
    query = select(TrackedLink).where(TrackedLink.task_id == task_id).order_by(TrackedLink.id).limit(limit)
    if after_id:
        query = query.where(TrackedLink.id > after_id)
    links = list(await session.scalars(query))
    counts: dict[int, dict[str, int]] = {
        link.id: {"clicks_human": 0, "clicks_machine": 0, "unique_human_clickers": 0} for link in links
    }
    if links:
        link_id = cast(Event.details["link_id"].as_string(), BigInteger)
        machine = machine_flag()
        for link, is_machine, clicks, clickers in await session.execute(
            select(link_id, machine, func.count(), func.count(Event.subtask_id.distinct()))
            .where(*_task_events(task_id, EventType.CLICKED), link_id.in_(list(counts)))
            .group_by(link_id, machine)
        ):
            row = counts[int(link)]
            if is_machine:
                row["clicks_machine"] += int(clicks)
            else:
                row["clicks_human"] += int(clicks)
                row["unique_human_clickers"] += int(clickers)
        for archived_link, (human, by_machine, people) in (await archive.archived_link_clicks(session, counts)).items():
            row = counts[archived_link]
            row["clicks_human"] += human
            row["clicks_machine"] += by_machine
            row["unique_human_clickers"] += people
    return [{"id": link.id, "url": link.url, **counts[link.id]} for link in links]


# --------------------------------------------------------------------------------------------------------
# Per recipient domain
# --------------------------------------------------------------------------------------------------------


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else "sqlite"


def _domain(session: AsyncSession) -> Any:
    """The part after the last `@`. SQLite has no reverse(): rtrim() by every other character of the address
    strips the domain, which leaves the position of the last `@`."""
    email = SubTask.recipient_email
    if _dialect(session) == "postgresql":
        return func.reverse(func.split_part(func.reverse(email), "@", 1))
    return func.substr(email, func.length(func.rtrim(email, func.replace(email, "@", ""))) + 1)


async def by_domain(session: AsyncSession, task_id: int, *, top: int = TOP_DOMAINS) -> dict[str, Any]:
    """The `top` recipient domains by sent (then recipients, then name), and everything else as `other`."""
    s, domain = SubTask, _domain(session)
    rows = [
        {
            "domain": d,
            "recipients": int(n),
            "sent": int(sent or 0),
            "bounced": int(bounced or 0),
            "opened": int(opened or 0),
        }
        for d, n, sent, bounced, opened in await session.execute(
            select(
                domain,
                func.count(),
                _count_if(s.send_state == SendState.SENT),
                _count_if(s.delivery_state.in_(BOUNCED_STATES)),
                _count_if(opened_human()),
            )
            .where(s.task_id == task_id)
            .group_by(domain)
        )
    ]
    rows.sort(key=lambda r: (-r["sent"], -r["recipients"], r["domain"]))
    rest = rows[top:]
    other = None
    if rest:
        other = {
            "domains": len(rest),
            **{k: sum(r[k] for r in rest) for k in ("recipients", "sent", "bounced", "opened")},
        }
    return {"items": rows[:top], "other": other}


# --------------------------------------------------------------------------------------------------------
# Timeline and heat map
# --------------------------------------------------------------------------------------------------------


def task_zone(task: Task) -> ZoneInfo:
    try:
        return ZoneInfo(task.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):  # validated when set; a bad stored value falls back to UTC
        return ZoneInfo("UTC")


# Timeline metric ← fact of `tasks.facts` (bounces are assembled by `_bounce_quarters`).
_TIMELINE_FACTS = {
    "sent": "sent",
    "delivered": "delivered",
    "opens": "open_hits",
    "clicks": "click_hits",
    "unsubscribes": "unsubscribed",
    "complaints": "complained",
    "replies": "replied",
}


async def metric_quarters(session: AsyncSession, task_id: int) -> dict[str, Quarters]:
    """Per timeline metric, (UTC quarter, count): each recipient once where a row keeps the first occurrence
    (sent, delivered, unsubscribed, complained, replied), every human open and click hit, and bounces as
    `_bounce_quarters` says."""
    found = await fact_quarters(session, task_id, [*_TIMELINE_FACTS.values(), "refused"])
    metrics = {metric: found[fact] for metric, fact in _TIMELINE_FACTS.items()}
    metrics["bounced"] = await _bounce_quarters(session, task_id) + found["refused"]
    return metrics


async def _bounce_quarters(session: AsyncSession, task_id: int) -> Quarters:
    """Each SubTask that bounced after it was sent, once, at its first bounce event (read through the task's events
    by type: a few per cent of its recipients), and those whose bounce events the retention job deleted. One the
    provider refused at send time has no event: it is the fact `refused`, at `failed_at`."""
    s = SubTask
    first_event = (
        select(func.min(Event.occurred_at).label("at"))
        .join(s, s.id == Event.subtask_id)
        .where(*_task_events(task_id, *BOUNCE_EVENTS), s.send_state != SendState.FAILED)
        .group_by(Event.subtask_id)
        .subquery()
    )
    quarter = quarter_expression(session, first_event.c.at)
    rows = [(int(q), int(n)) for q, n in await session.execute(select(quarter, func.count()).group_by(quarter))]
    archived = (await archived_quarters(session, task_id, [FIRST_BOUNCE]))[FIRST_BOUNCE]
    return merge_quarters(rows, archived) if archived else rows


TIMELINE_METRICS = ("sent", "delivered", "bounced", "opens", "clicks", "unsubscribes", "complaints", "replies")


def _local(quarter: int, zone: ZoneInfo) -> dt.datetime:
    return start_of(quarter).astimezone(zone)


def _bucket_of(local: dt.datetime, bucket: Bucket) -> tuple[Any, str]:
    """(sort key, label) of the local hour or day a local time falls in."""
    if bucket is Bucket.DAY:
        return local.date(), local.date().isoformat()
    start = local.replace(minute=0, second=0, microsecond=0)
    # Keyed by the UTC instant: the repeated hour when clocks go back is two buckets, not one.
    return start.astimezone(dt.UTC), start.isoformat()


async def timeline(session: AsyncSession, task: Task, bucket: Bucket) -> dict[str, Any]:
    """Non-empty buckets in the task's time zone, oldest first, with the totals of every metric."""
    return timeline_of(task, await metric_quarters(session, task.id), bucket)


def timeline_of(task: Task, metrics: dict[str, Quarters], bucket: Bucket) -> dict[str, Any]:
    """`timeline` from the quarters `metric_quarters` read (one read serves both bucket sizes)."""
    zone = task_zone(task)
    buckets: dict[Any, dict[str, Any]] = {}
    for metric, quarters in metrics.items():
        for quarter, n in quarters:
            key, label = _bucket_of(_local(quarter, zone), bucket)
            row = buckets.setdefault(key, {"start": label, **dict.fromkeys(TIMELINE_METRICS, 0)})
            row[metric] += n
    items = [buckets[k] for k in sorted(buckets)]
    totals = {m: sum(row[m] for row in items) for m in TIMELINE_METRICS}
    return {"task_id": task.id, "timezone": zone.key, "bucket": bucket.value, "items": items, "totals": totals}


async def heatmap(session: AsyncSession, task: Task) -> dict[str, Any]:
    """Human opens by local weekday (Monday first) × hour of the day, in the task's time zone."""
    zone = task_zone(task)
    cells = [[0] * 24 for _ in WEEKDAYS]
    for quarter, n in (await fact_quarters(session, task.id, ["open_hits"]))["open_hits"]:
        local = _local(quarter, zone)
        cells[local.weekday()][local.hour] += n
    return {
        "task_id": task.id,
        "timezone": zone.key,
        "weekdays": list(WEEKDAYS),
        "cells": cells,
        "total": sum(map(sum, cells)),
    }


# --------------------------------------------------------------------------------------------------------
# CSV export
# --------------------------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "email",
    "send_state",
    "delivery_state",
    "display_status",
    "service",
    "template",
    "attempts",
    "sent_at",
    "delivered_at",
    "opens",
    "clicks",
    "machine_opens",
    "machine_clicks",
    "first_opened_at",
    "first_clicked_at",
    "unsubscribed_at",
    "last_error_class",
    "last_error_code",
    "last_error",
    "subtask_id",
)
EXPORT_CHUNK = 1000
_TEMPLATE = CSV_COLUMNS.index("template")


def csv_cell(value: Any) -> str:
    """A value as a CSV cell; text a spreadsheet would run as a formula gets a leading `'`
    (docs/statistics.md#csv-export)."""
    if value is None:
        return ""
    return csvfmt.guard(value.isoformat() if isinstance(value, dt.datetime) else str(value))


def to_csv(rows: Iterable[Sequence[str]]) -> str:
    return csvfmt.records(rows)


def csv_header() -> str:
    return to_csv([CSV_COLUMNS])


def _export_query(task_id: int, filters: SubtaskFilters, *, after_id: int | None, limit: int) -> Any:
    """Plain columns in CSV order (the template as its id), after the row id: no ORM objects to build, which
    was half the export's time."""
    s = SubTask
    query = (
        select(
            s.id,
            s.recipient_email,
            s.send_state,
            s.delivery_state,
            display_status(),
            EmailService.label,
            s.task_template_id,
            s.attempts,
            s.sent_at,
            s.delivered_at,
            s.open_count,
            s.click_count,
            s.machine_open_count,
            s.machine_click_count,
            s.first_opened_at,
            s.first_clicked_at,
            s.unsubscribed_at,
            s.last_error_class,
            s.last_error_code,
            s.last_error,
            s.public_id,
        )
        .outerjoin(EmailService, EmailService.id == s.service_id)
        .where(s.task_id == task_id, *filters.conditions())
        .order_by(s.id)
        .limit(limit)
    )
    return query.where(s.id > after_id) if after_id else query


def _csv_row(row: Sequence[Any], templates: dict[int, str | None]) -> list[str]:
    cells = list(row[1:])
    cells[_TEMPLATE] = templates.get(cells[_TEMPLATE])
    return [csv_cell(value) for value in cells]


async def export_rows(
    sessionmaker: async_sessionmaker[AsyncSession], task_id: int, filters: SubtaskFilters, *, chunk: int = EXPORT_CHUNK
) -> AsyncIterator[list[list[str]]]:
    """The task's recipients as CSV cells, `chunk` rows at a time in id order, one short session per chunk
    (so the whole task is never in memory and no transaction stays open while a chunk is written out)."""
    async with sessionmaker() as session:
        templates = {
            tid: name
            for tid, name in await session.execute(
                select(TaskTemplate.id, TaskTemplate.name).where(TaskTemplate.task_id == task_id)
            )
        }
    after: int | None = None
    while True:
        async with sessionmaker() as session:
            rows = (await session.execute(_export_query(task_id, filters, after_id=after, limit=chunk))).all()
        if rows:
            yield [_csv_row(row, templates) for row in rows]
        if len(rows) < chunk:
            return
        after = rows[-1][0]
