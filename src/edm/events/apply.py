"""Applying stored events to SubTasks and contacts (SPEC §9.5, §9.6). Run by the `events` job.

Rules that hold for every event:
- the SubTask is found only by our id (custom args, metadata, tags, our headers, VERP), else by the provider
  message id the service gave us at send time; never guessed from the recipient address;
- a match counts only if the SubTask was attempted on a service of the event's provider (and on the event's
  service when the webhook URL named one); outside production a SubTask sent through `fake` matches events
  of any provider, so the fake stands in for every provider in demos, tests and benchmarks;
- applying is monotonic: delivery_state only climbs (§5.6), first_* keep the earliest time, last_* the
  latest, counts only grow and each stored event adds at most one;
- an event never changes a task's status; it may turn `uncertain` into `sent` (it proves acceptance).

Rows are taken with SKIP LOCKED (PostgreSQL), so any number of workers share the queue.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.dispatch.queue import upsert_usage
from edm.dispatch.service_day import service_day
from edm.models.contacts import Contact
from edm.models.email_services import EmailService
from edm.models.events import Event, MatchReason, MatchStatus
from edm.models.suppressions import Suppression
from edm.models.tasks import SendAttempt, SubTask
from edm.system import runtime_settings
from edm.system.runtime_settings import RuntimeSettings
from edm.vocabulary.events import BounceClass, EventType
from edm.vocabulary.tasks import DELIVERY_RANK, DeliveryState, SendState

log = logging.getLogger("edm.events")

TRACKING_SOURCES = frozenset({"tracking"})  # EDM's own pixel/click/unsubscribe: the only counted engagement
REPORT_SOURCES = frozenset({"dsn", "arf"})  # SMTP bounce/complaint reports: match SMTP services
SIMULATED_PROVIDER = "fake"

# Events that prove the provider took the message: they settle an `uncertain` send (§7.8).
_PROVES_ACCEPTANCE = frozenset(EventType) - {EventType.UNKNOWN}
# Rejections that say the address itself is bad: they count against the contact (bounce policy).
_ADDRESS_REJECTIONS = frozenset({BounceClass.INVALID, BounceClass.SUPPRESSED, BounceClass.HARD})


@dataclass(slots=True)
class ApplyCounts:
    processed: int = 0
    matched: int = 0
    unmatched: int = 0
    ignored: int = 0
    reconciled: int = 0  # uncertain -> sent

    def add(self, other: ApplyCounts) -> None:
        for name in ("processed", "matched", "unmatched", "ignored", "reconciled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


async def drain(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    simulated_matches_any: bool,
    batch: int = 500,
    should_stop: Callable[[], bool] = lambda: False,
) -> ApplyCounts:
    """Apply stored events until none is left, one transaction per batch (an entry point's loop: the
    `events` job, `edm events apply`)."""
    total = ApplyCounts()
    while not should_stop():
        async with unit_of_work(sessionmaker) as session:
            counts = await apply_pending(
                session, now=utc_now(), simulated_matches_any=simulated_matches_any, limit=batch
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
) -> ApplyCounts:
    """Apply up to `limit` stored, unprocessed events. The caller commits.

    Rows are read as plain records and written back with one executemany UPDATE per table (events, SubTasks,
    contacts): no ORM identity map on this path, which profiling showed to cost more than the SQL itself."""
    events = await _take_pending(session, limit, only_ids)
    counts = ApplyCounts(processed=len(events))
    if not events:
        return counts
    providers = await _service_providers(session)
    runtime = await runtime_settings.load(session)
    ambiguous: set[int] = set()
    subtasks = await _find_subtasks(session, events, ambiguous)
    await _load_recent_clicks(session, events, subtasks, runtime.tracking_click_burst_window)
    attempted_services = await _attempted_services(session, _needing_attempts(events, subtasks, providers))
    contacts = await _contacts(
        session, {subtasks[e.id].contact_id for e in events if e.id in subtasks and e.event_type in _CONTACT_EVENTS}
    )
    suppressions: list[dict[str, Any]] = []
    for event in events:
        subtask = subtasks.get(event.id)
        status, reason = _match(event, subtask, providers, attempted_services, simulated_matches_any)
        if event.id in ambiguous:
            status, reason = MatchStatus.UNMATCHED, MatchReason.AMBIGUOUS_PROVIDER_ID
        event.processed_at = now
        if status is MatchStatus.UNMATCHED or subtask is None:
            event.match_status, event.match_reason = MatchStatus.UNMATCHED, reason
            counts.unmatched += 1
            continue
        event.subtask_id, event.task_id, event.user_id = subtask.id, subtask.task_id, subtask.user_id
        if _settle_uncertain(subtask, event, now):
            await _move_usage_to_accepted(session, subtask, providers)
            counts.reconciled += 1
        if status is MatchStatus.IGNORED:
            event.match_status, event.match_reason = MatchStatus.IGNORED, reason
            counts.ignored += 1
            continue
        contact = contacts.get(subtask.contact_id or 0)
        _apply(subtask, contact, event, runtime)
        suppression = suppression_for(event, subtask, contact, runtime)
        if suppression is not None:
            suppressions.append(suppression)
        event.match_status = MatchStatus.MATCHED
        counts.matched += 1
    await _update_many(session, Event, _EVENT_WRITE, events)
    await _update_many(
        session, SubTask, _SUBTASK_WRITE, [s for s in {r.id: r for r in subtasks.values()}.values() if s.changed()]
    )
    await _update_many(session, Contact, _CONTACT_WRITE, [c for c in contacts.values() if c.changed()])
    await _add_suppressions(session, suppressions, now)
    return counts


# --------------------------------------------------------------------------------------------------------
# Finding the SubTask
# --------------------------------------------------------------------------------------------------------


class _Record:
    """A mutable copy of a row's columns; `changed()` says whether any of the writable ones moved."""

    id: int

    def __init__(self, mapping: Any, writable: tuple[str, ...]) -> None:
        self.__dict__.update(mapping)
        self._writable = writable
        self._before = tuple(mapping[name] for name in writable)

    def changed(self) -> bool:
        return tuple(getattr(self, name) for name in self._writable) != self._before

    def values(self) -> dict[str, Any]:
        return {"b_id": self.id, **{"b_" + name: getattr(self, name) for name in self._writable}}


_EVENT_READ = ("id", "source", "service_id", "event_type", "occurred_at", "subtask_ref", "provider_message_id")
# `details` is written back: applying a tracking hit records its classification (machine, machine_reason).
_EVENT_WRITE = ("processed_at", "match_status", "match_reason", "subtask_id", "task_id", "user_id", "details")
_SUBTASK_READ = (
    "id",
    "public_id",
    "task_id",
    "user_id",
    "contact_id",
    "service_id",
    "attempts",
    "allocated_at",
    "provider_message_id",
    "sent_at",
    "recipient_email",
)
_SUBTASK_WRITE = (
    "send_state",
    "sent_at",
    "last_error_class",
    "delivery_state",
    "delivered_at",
    "bounced_at",
    "delivery_detail",
    "complained_at",
    "unsubscribed_at",
    "replied_at",
    "open_count",
    "machine_open_count",
    "first_opened_at",
    "last_opened_at",
    "click_count",
    "machine_click_count",
    "first_clicked_at",
    "last_clicked_at",
)
_CONTACT_WRITE = (
    "soft_bounce_streak",
    "hard_bounced_at",
    "complained_at",
    "unsubscribed_at",
    "last_replied_at",
    "last_opened_at",
    "last_clicked_at",
)
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


def _columns(model: Any, names: tuple[str, ...]) -> list[Any]:
    return [model.__table__.c[name] for name in names]


async def _take_pending(session: AsyncSession, limit: int, only_ids: Sequence[int] | None = None) -> list[Any]:
    query = (
        select(*_columns(Event, _EVENT_READ + _EVENT_WRITE))
        .where(Event.processed_at.is_(None))
        .order_by(Event.id)
        .limit(limit)
    )
    if only_ids is not None:  # applied synchronously by the request that stored them (one-click unsubscribe)
        query = query.where(Event.id.in_(list(only_ids)))
    if _dialect(session) == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [_Record(row._mapping, _EVENT_WRITE) for row in await session.execute(query)]


async def _service_providers(session: AsyncSession) -> dict[int, EmailService]:
    return {s.id: s for s in (await session.scalars(select(EmailService))).all()}


async def _find_subtasks(session: AsyncSession, events: Sequence[Any], ambiguous: set[int]) -> dict[int, Any]:
    """Event id -> its SubTask, by our public id first, else by (service, provider message id). Events whose
    provider id names several SubTasks are added to `ambiguous`."""
    by_ref: dict[uuid.UUID, list[Any]] = defaultdict(list)
    by_provider_id: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        ref = _as_uuid(event.subtask_ref)
        if ref is not None:
            by_ref[ref].append(event)
        elif event.provider_message_id:
            by_provider_id[event.provider_message_id].append(event)
    found: dict[int, Any] = {}
    records: dict[int, Any] = {}  # one copy per SubTask, whichever events and lookups reach it
    if by_ref:
        query = _subtask_query(session, SubTask.public_id.in_(list(by_ref)))
        for subtask in await _subtask_records(session, query, records):
            for event in by_ref[subtask.public_id]:
                found[event.id] = subtask
    if by_provider_id:
        query = _subtask_query(
            session, SubTask.provider_message_id.in_(list(by_provider_id)), SubTask.service_id.is_not(None)
        )
        candidates: dict[int, list[Any]] = defaultdict(list)
        for subtask in await _subtask_records(session, query, records):
            for event in by_provider_id[subtask.provider_message_id or ""]:
                # The provider id is unique only per service: the event's service (when the URL named one or
                # its secret identified it) must be the SubTask's.
                if event.service_id is None or event.service_id == subtask.service_id:
                    candidates[event.id].append(subtask)
        for event_id, subtasks in candidates.items():
            # A batch request gives all its recipients one id (SendGrid's X-Message-Id): then the id names
            # several SubTasks and choosing one would be a guess (§9.5), so the event stays unmatched.
            if len(subtasks) == 1:
                found[event_id] = subtasks[0]
            else:
                ambiguous.add(event_id)
    return found


def _subtask_query(session: AsyncSession, *conditions: Any) -> Any:
    query = select(*_columns(SubTask, _SUBTASK_READ + _SUBTASK_WRITE)).where(*conditions).order_by(SubTask.id)
    return query.with_for_update() if _dialect(session) == "postgresql" else query


async def _subtask_records(session: AsyncSession, query: Any, records: dict[int, Any]) -> list[Any]:
    """The query's SubTasks as records, reusing the copy already taken for a SubTask (two events of one
    SubTask must apply to the same copy)."""
    found = []
    for row in await session.execute(query):
        found.append(records.setdefault(row.id, _Record(row._mapping, _SUBTASK_WRITE)))
    return found


def _needing_attempts(events: Sequence[Any], subtasks: dict[int, Any], services: dict[int, EmailService]) -> list[int]:
    """SubTasks whose current service does not settle the provider check (a deferred row lost its service,
    or it moved between providers): only their attempts are read."""
    sources: dict[int, set[str]] = defaultdict(set)
    for event in events:
        if event.id in subtasks:
            sources[subtasks[event.id].id].add(event.source)
    needed = []
    for subtask in {s.id: s for s in subtasks.values()}.values():
        service = services.get(subtask.service_id or 0)
        wanted = sources[subtask.id] - TRACKING_SOURCES
        if not wanted or subtask.attempts == 0:
            continue
        if service is not None and (
            service.provider == SIMULATED_PROVIDER
            or all(service.provider == ("smtp" if source in REPORT_SOURCES else source) for source in wanted)
        ):
            continue
        needed.append(subtask.id)
    return needed


async def _attempted_services(session: AsyncSession, subtask_ids: list[int]) -> dict[int, set[int]]:
    """SubTask id -> every service it was attempted on (a deferred row loses its service_id)."""
    result: dict[int, set[int]] = defaultdict(set)
    for start in range(0, len(subtask_ids), 1000):
        chunk = subtask_ids[start : start + 1000]
        rows = await session.execute(
            select(SendAttempt.subtask_id, SendAttempt.service_id).where(
                SendAttempt.subtask_id.in_(chunk), SendAttempt.service_id.is_not(None)
            )
        )
        for subtask_id, service_id in rows:
            if service_id is not None:
                result[subtask_id].add(service_id)
    return result


def _match(
    event: Any,
    subtask: Any,
    services: dict[int, EmailService],
    attempted: dict[int, set[int]],
    simulated_matches_any: bool,
) -> tuple[MatchStatus, str | None]:
    if event.event_type == EventType.REPLIED and subtask is None:
        return MatchStatus.UNMATCHED, MatchReason.INBOUND
    if subtask is None:
        has_id = event.subtask_ref or event.provider_message_id
        return MatchStatus.UNMATCHED, MatchReason.UNKNOWN_SUBTASK if has_id else MatchReason.NO_ID
    if event.source not in TRACKING_SOURCES:
        tried = set(attempted.get(subtask.id, set()))
        if subtask.service_id is not None:
            tried.add(subtask.service_id)
        if not tried:
            return MatchStatus.UNMATCHED, MatchReason.NEVER_SENT
        if not any(_same_provider(event, services.get(s), simulated_matches_any) for s in tried):
            return MatchStatus.UNMATCHED, MatchReason.PROVIDER_MISMATCH
        if event.event_type in (EventType.OPENED, EventType.CLICKED):
            return MatchStatus.IGNORED, MatchReason.PROVIDER_TRACKING
    return MatchStatus.MATCHED, None


def _same_provider(event: Any, service: EmailService | None, simulated_matches_any: bool) -> bool:
    if service is None:
        return False
    if event.service_id is not None and event.service_id != service.id:
        return simulated_matches_any and service.provider == SIMULATED_PROVIDER
    if service.provider == SIMULATED_PROVIDER and simulated_matches_any:
        return True
    if event.source in REPORT_SOURCES:
        return service.provider == "smtp"
    return service.provider == event.source


# --------------------------------------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------------------------------------


def _settle_uncertain(subtask: Any, event: Any, now: dt.datetime) -> bool:
    if subtask.send_state != SendState.UNCERTAIN or event.event_type not in _PROVES_ACCEPTANCE:
        return False
    subtask.send_state = SendState.SENT
    subtask.sent_at = min(event.occurred_at, now)
    subtask.last_error_class = None
    return True


async def _move_usage_to_accepted(session: AsyncSession, subtask: Any, services: dict[int, EmailService]) -> None:
    """An uncertain send was counted as `uncertain` usage on its claim day; it is now `accepted`."""
    service = services.get(subtask.service_id or 0)
    if service is None or subtask.allocated_at is None:
        return
    day = service_day(subtask.allocated_at, timezone=service.timezone, reset_time=service.quota_reset_time)
    await upsert_usage(session, service_id=service.id, day=day, deltas={"uncertain": -1, "accepted": 1})


def _apply(subtask: Any, contact: Any, event: Any, runtime: RuntimeSettings) -> None:
    kind, at = event.event_type, event.occurred_at
    if kind == EventType.DELIVERED:
        _raise_delivery(subtask, DeliveryState.DELIVERED, event)
        subtask.delivered_at = _earliest(subtask.delivered_at, at)
        if contact is not None:
            contact.soft_bounce_streak = 0
    elif kind == EventType.DEFERRED:
        _raise_delivery(subtask, DeliveryState.DEFERRED, event)
    elif kind == EventType.SOFT_BOUNCED:
        if _raise_delivery(subtask, DeliveryState.SOFT_BOUNCED, event) and contact is not None:
            contact.soft_bounce_streak = (contact.soft_bounce_streak or 0) + 1  # once per SubTask
    elif kind == EventType.HARD_BOUNCED:
        _raise_delivery(subtask, DeliveryState.HARD_BOUNCED, event)
        subtask.bounced_at = _earliest(subtask.bounced_at, at)
        # A permanent policy/content block (SMTP 5.7.x) is the sender's problem, not the address's.
        if contact is not None and (event.details or {}).get("bounce_class") != BounceClass.BLOCK:
            contact.hard_bounced_at = _earliest(contact.hard_bounced_at, at)
    elif kind == EventType.REJECTED:
        _raise_delivery(subtask, DeliveryState.REJECTED, event)
        # Policy and content blocks say nothing about the address: only a bad or provider-suppressed
        # address counts against the contact (§9.6).
        if contact is not None and (event.details or {}).get("bounce_class") in _ADDRESS_REJECTIONS:
            contact.hard_bounced_at = _earliest(contact.hard_bounced_at, at)
    elif kind == EventType.COMPLAINED:
        _raise_delivery(subtask, DeliveryState.COMPLAINED, event)
        subtask.complained_at = _earliest(subtask.complained_at, at)
        subtask.delivered_at = _earliest(subtask.delivered_at, at)  # a complaint implies delivery
        if contact is not None:
            contact.complained_at = _earliest(contact.complained_at, at)
    elif kind == EventType.UNSUBSCRIBED:
        subtask.unsubscribed_at = _earliest(subtask.unsubscribed_at, at)
        if contact is not None:
            contact.unsubscribed_at = _earliest(contact.unsubscribed_at, at)
    elif kind == EventType.REPLIED:
        subtask.replied_at = _earliest(subtask.replied_at, at)
        if contact is not None:
            contact.last_replied_at = _latest(contact.last_replied_at, at)
    elif kind in (EventType.OPENED, EventType.CLICKED):
        _apply_engagement(subtask, contact, event, runtime)


def _apply_engagement(subtask: Any, contact: Any, event: Any, runtime: RuntimeSettings) -> None:
    """EDM's own tracking hits (§10.4): machine hits are counted apart; any hit implies delivery. The
    classification is written into the event (`details.machine`, `details.machine_reason`) so reports and the
    per-recipient view show why a hit did not count as a person's."""
    at = event.occurred_at
    details = dict(event.details or {})
    reason = machine_reason(event, subtask, runtime)
    if reason is None and details.get("machine"):  # flagged before applying: keep the flag and its reason
        reason = str(details.get("machine_reason") or "flagged")
    machine = reason is not None
    event.details = {**details, "machine": machine, "machine_reason": reason}
    _raise_delivery(subtask, DeliveryState.DELIVERED, event)
    subtask.delivered_at = _earliest(subtask.delivered_at, at)
    if event.event_type == EventType.OPENED:
        if machine:
            subtask.machine_open_count = (subtask.machine_open_count or 0) + 1
            return
        subtask.open_count = (subtask.open_count or 0) + 1
        subtask.first_opened_at = _earliest(subtask.first_opened_at, at)
        subtask.last_opened_at = _latest(subtask.last_opened_at, at)
        if contact is not None:
            contact.last_opened_at = _latest(contact.last_opened_at, at)
        return
    if machine:
        subtask.machine_click_count = (subtask.machine_click_count or 0) + 1
        return
    subtask.click_count = (subtask.click_count or 0) + 1
    subtask.first_clicked_at = _earliest(subtask.first_clicked_at, at)
    subtask.last_clicked_at = _latest(subtask.last_clicked_at, at)
    if contact is not None:
        contact.last_clicked_at = _latest(contact.last_clicked_at, at)


# The automatic suppressions of SPEC §10.5. Where each goes is an admin setting (`suppression.*_scope`: user,
# global or off); the soft-bounce limit is `bounce.soft_limit`. This is its default, kept for readers.
SOFT_BOUNCE_LIMIT = 3


def suppression_for(event: Any, subtask: Any, contact: Any, runtime: RuntimeSettings) -> dict[str, Any] | None:
    """The suppression entry an applied event adds, or None. By default an unsubscribe goes to the sending
    user's list; a hard bounce, a bad or provider-suppressed address, a complaint and the soft-bounce limit go
    to the global list. A provider-suppressed address follows the hard-bounce scope."""
    trigger = _suppression_trigger(event, contact, runtime)
    if trigger is None:
        return None
    scope, reason = trigger
    return _suppression(scope, subtask, reason, event.id) if scope in ("user", "global") else None  # or "off"


def _suppression_trigger(event: Any, contact: Any, runtime: RuntimeSettings) -> tuple[str, str] | None:
    """(scope setting, reason) of the policy row an event triggers, or None."""
    bounce_class = (event.details or {}).get("bounce_class")
    kind = event.event_type
    if kind == EventType.UNSUBSCRIBED:
        return runtime.suppression_unsubscribe_scope, "unsubscribed"
    if kind == EventType.COMPLAINED:
        return runtime.suppression_complaint_scope, "complaint"
    if kind == EventType.HARD_BOUNCED and bounce_class != BounceClass.BLOCK:
        return runtime.suppression_hard_bounce_scope, "hard_bounce"
    if kind == EventType.REJECTED and bounce_class in _ADDRESS_REJECTIONS:
        reason = "provider_suppressed" if bounce_class == BounceClass.SUPPRESSED else "hard_bounce"
        return runtime.suppression_hard_bounce_scope, reason
    streak = (contact.soft_bounce_streak or 0) if contact is not None else 0
    # A limit of 0 would suppress on a streak of nothing: the first soft bounce is the least that counts.
    if kind == EventType.SOFT_BOUNCED and streak >= max(runtime.bounce_soft_limit, 1):
        return runtime.suppression_soft_bounce_scope, "soft_bounce_limit"
    return None


def _suppression(scope: str, subtask: Any, reason: str, event_id: int) -> dict[str, Any]:
    owner = subtask.user_id if scope == "user" else None
    return {
        "scope": scope,
        "user_id": owner,
        "owner_key": owner or 0,
        "kind": "address",
        "value": subtask.recipient_email,
        "reason": reason,
        "source_task_id": subtask.task_id,
        "source_event_id": event_id,
    }


async def _add_suppressions(session: AsyncSession, rows: list[dict[str, Any]], now: dt.datetime) -> None:
    """One insert; an address already on that list keeps its first entry (and within a batch, the entry of
    the earliest event)."""
    unique: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in rows:
        unique.setdefault((row["scope"], row["owner_key"], row["value"]), row)
    if not unique:
        return
    insert = postgresql.insert if _dialect(session) == "postgresql" else sqlite.insert
    statement = insert(Suppression).on_conflict_do_nothing(index_elements=["scope", "owner_key", "kind", "value"])
    await session.execute(statement, [{**r, "created_at": now, "updated_at": now} for r in unique.values()])


# Clients that fetch images without a person: link scanners, preview fetchers, HTTP libraries. Webmail image
# proxies (GoogleImageProxy, YahooMailProxy) fetch on a real open and stay human (§10.4). Admins add their own
# substrings with `tracking.bot_user_agents`.
_MACHINE_AGENTS = re.compile(
    r"bot\b|crawler|spider|scanner|preview|headless|python-|curl/|wget/|go-http-client|java/|okhttp|"
    r"barracuda|proofpoint|mimecast|symantec|forcepoint|safelinks|urldefense|msnbot|bingpreview",
    re.IGNORECASE,
)
# The windows are admin settings (`tracking.machine_open_window`, `tracking.machine_click_window`,
# `tracking.click_burst_window`, in seconds); these are their defaults, kept for readers. 0 turns a rule off.
MACHINE_OPEN_WINDOW = dt.timedelta(seconds=60)
MACHINE_CLICK_WINDOW = dt.timedelta(seconds=10)
CLICK_BURST_WINDOW = dt.timedelta(seconds=2)
# A tracking hit keeps only its network (tracking.api.truncated_ip): the prefix the stored address stands for.
_STORED_PREFIX = {4: 24, 6: 48}


def machine_reason(event: Any, subtask: Any, runtime: RuntimeSettings) -> str | None:
    """Why a tracking hit is a machine's, or None for a person (§10.4). The rules are tried in this order and
    the first that holds names the reason:

    - `empty_user_agent`: no user agent at all;
    - `bot_user_agent`: a built-in scanner/bot/HTTP-library agent, or one containing an admin substring
      (`tracking.bot_user_agents`, case-insensitive);
    - `privacy_proxy`: the stored network of the hit (/24, /48) lies in or overlaps an admin CIDR
      (`tracking.proxy_cidrs`);
    - `too_soon_after_send`: an open within `tracking.machine_open_window`, a click within
      `tracking.machine_click_window` seconds of `sent_at`;
    - `link_burst`: a click when an earlier-recorded click (lower event id) of the same SubTask on a different
      link lies within `tracking.click_burst_window` seconds of it. The comparison clicks are attached to the
      SubTask record by `_load_recent_clicks` (`recent_clicks`).
    """
    details = event.details or {}
    agent = (details.get("user_agent") or "").strip()
    if not agent:
        return "empty_user_agent"
    if _MACHINE_AGENTS.search(agent) or _has_custom_agent(agent, runtime.tracking_bot_user_agents):
        return "bot_user_agent"
    if _in_proxy_networks(details.get("ip"), runtime.tracking_proxy_cidrs):
        return "privacy_proxy"
    if _too_soon_after_send(event, subtask, runtime):
        return "too_soon_after_send"
    if event.event_type == EventType.CLICKED and _in_link_burst(event, subtask, runtime.tracking_click_burst_window):
        return "link_burst"
    return None


def _has_custom_agent(agent: str, substrings: tuple[str, ...]) -> bool:
    lowered = agent.lower()
    return any(item and item.lower() in lowered for item in substrings)


def _in_proxy_networks(stored_ip: Any, cidrs: tuple[str, ...]) -> bool:
    """Whether the hit's stored network overlaps a listed one. The hit keeps only its /24 (/48), so an entry
    narrower than that matches the whole /24 (/48) it lies in: that is all that can be known of the hit."""
    if not stored_ip or not cidrs:
        return False
    try:
        address = ipaddress.ip_address(str(stored_ip))
        hit = ipaddress.ip_network(f"{address}/{_STORED_PREFIX[address.version]}", strict=False)
    except ValueError:
        return False
    return any(
        hit.version == network.version and hit.overlaps(network)  # type: ignore[arg-type]
        for network in _networks(cidrs)
    )


@functools.lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The parsed list, once per distinct setting value (every batch hands in the same tuple)."""
    parsed = []
    for cidr in cidrs:
        try:
            parsed.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:  # `coerce` refuses these; a hand-edited row must not stop the events job
            log.warning("tracking.bad_proxy_cidr", extra={"cidr": cidr})
    return tuple(parsed)


def _too_soon_after_send(event: Any, subtask: Any, runtime: RuntimeSettings) -> bool:
    opened = event.event_type == EventType.OPENED
    seconds = runtime.tracking_machine_open_window if opened else runtime.tracking_machine_click_window
    sent_at = getattr(subtask, "sent_at", None)
    return seconds > 0 and sent_at is not None and event.occurred_at - sent_at < dt.timedelta(seconds=seconds)


def _in_link_burst(event: Any, subtask: Any, window_seconds: float) -> bool:
    """A different link of the same SubTask clicked within the window, by a click recorded before this one.

    The first click of a burst stays human: it was counted before the second link was clicked, and counts
    never move. Every later click inside the window, on any link (a repeat of the first one too), is machine."""
    if window_seconds <= 0:
        return False
    window = dt.timedelta(seconds=window_seconds)
    link = _link_of(event.details)
    return any(
        other_id < event.id and other_link != link and abs(other_at - event.occurred_at) <= window
        for other_id, other_at, other_link in getattr(subtask, "recent_clicks", ())
    )


def _link_of(details: Any) -> str | None:
    link = (details or {}).get("link_id")
    return None if link is None else str(link)


async def _load_recent_clicks(
    session: AsyncSession, events: Sequence[Any], subtasks: dict[int, Any], window_seconds: float
) -> None:
    """Attach to every SubTask clicked in this batch (`recent_clicks`: event id, time, link) the tracking clicks
    the burst rule compares with: this batch's own, those already applied (by SubTask id), and those another
    worker holds right now (still pending, with a lower id than this batch's last: found by SubTask ref)."""
    clicks = [
        e for e in events if e.id in subtasks and e.event_type == EventType.CLICKED and e.source in TRACKING_SOURCES
    ]
    clicked = {subtasks[e.id].id: subtasks[e.id] for e in clicks}
    for record in clicked.values():
        record.recent_clicks = []
    if not clicks or window_seconds <= 0:
        return
    window = dt.timedelta(seconds=window_seconds)
    batch_ids = {e.id for e in events}
    by_ref = {str(record.public_id): record for record in clicked.values()}
    nearby = select(Event.id, Event.occurred_at, Event.details, Event.subtask_id, Event.subtask_ref).where(
        Event.source.in_(TRACKING_SOURCES),
        Event.event_type == EventType.CLICKED,
        Event.occurred_at >= min(e.occurred_at for e in clicks) - window,
        Event.occurred_at <= max(e.occurred_at for e in clicks) + window,
    )
    applied = nearby.where(Event.subtask_id.in_(list(clicked)))
    held = nearby.where(Event.processed_at.is_(None), Event.id < max(batch_ids), Event.subtask_ref.in_(list(by_ref)))
    for query in (applied, held):
        for row in await session.execute(query):
            record = clicked.get(row.subtask_id) if row.subtask_id is not None else by_ref.get(row.subtask_ref)
            if record is not None and row.id not in batch_ids:
                record.recent_clicks.append((row.id, row.occurred_at, _link_of(row.details)))
    for event in clicks:
        subtasks[event.id].recent_clicks.append((event.id, event.occurred_at, _link_of(event.details)))


def _raise_delivery(subtask: Any, state: DeliveryState, event: Any) -> bool:
    """Move delivery_state up to `state` if that is a higher rank; True when it moved."""
    current = DeliveryState(subtask.delivery_state or DeliveryState.NONE)
    if DELIVERY_RANK[state] <= DELIVERY_RANK[current]:
        return False
    subtask.delivery_state = state
    reason = (event.details or {}).get("reason")
    if reason and state != DeliveryState.DELIVERED:
        subtask.delivery_detail = str(reason)[:500]
    return True


# --------------------------------------------------------------------------------------------------------


async def _contacts(session: AsyncSession, ids: Iterable[int | None]) -> dict[int, Any]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    query = select(*_columns(Contact, ("id", *_CONTACT_WRITE))).where(Contact.id.in_(wanted)).order_by(Contact.id)
    if _dialect(session) == "postgresql":
        query = query.with_for_update()  # one lock order (by id) for every writer: no deadlocks
    return {row.id: _Record(row._mapping, _CONTACT_WRITE) for row in await session.execute(query)}


async def _update_many(session: AsyncSession, model: Any, names: tuple[str, ...], records: Sequence[Any]) -> None:
    """One executemany UPDATE of the writable columns, keyed by id."""
    if not records:
        return
    table = model.__table__
    statement = (
        update(table).where(table.c.id == bindparam("b_id")).values({name: bindparam("b_" + name) for name in names})
    )
    await session.execute(statement, [record.values() for record in records])


def _earliest(current: dt.datetime | None, new: dt.datetime) -> dt.datetime:
    return new if current is None or new < current else current


def _latest(current: dt.datetime | None, new: dt.datetime) -> dt.datetime:
    return new if current is None or new > current else current


def _as_uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else "sqlite"
