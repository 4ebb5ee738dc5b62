"""Matching stored events to SubTasks.

- the SubTask is found only by our id (custom args, metadata, tags, our headers, VERP), else by the provider
  message id the service gave us at send time; never guessed from the recipient address;
- a match counts only if the SubTask was attempted on a service of the event's provider (and on the event's
  service when the webhook URL named one); outside production a SubTask sent through `fake` matches events
  of any provider, so the fake stands in for every provider in demos, tests and benchmarks.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import any_of, is_postgresql
from edm.events.records import SUBTASK_READ, SUBTASK_WRITE, Record, columns, core_execute
from edm.models.email_services import EmailService
from edm.models.events import MatchReason, MatchStatus
from edm.models.tasks import SendAttempt, SubTask
from edm.vocabulary.events import EventType

TRACKING_SOURCES = frozenset({"tracking"})  # EDM's own pixel/click/unsubscribe: the only counted engagement
# A reply that conversations threaded to our Message-ID (edm.conversations.ingest): it names the SubTask by the id we
# generated, whichever way it came back (another provider's inbound route, a mailbox), so no provider check applies.
INBOUND_SOURCE = "inbound"
OWN_SOURCES = TRACKING_SOURCES | {INBOUND_SOURCE}
REPORT_SOURCES = frozenset({"dsn", "arf"})  # SMTP bounce/complaint reports: match SMTP services
SIMULATED_PROVIDER = "fake"


async def service_providers(session: AsyncSession) -> dict[int, EmailService]:
    return {s.id: s for s in (await session.scalars(select(EmailService))).all()}


async def find_subtasks(session: AsyncSession, events: Sequence[Any], ambiguous: set[int]) -> dict[int, Any]:
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
    if not by_ref and not by_provider_id:
        return found
    # Both lookups in one statement: its rows are locked in id order, the one lock order of every writer of
    # SubTasks here (two statements would take two ordered sets, and two batches could wait on each other).
    lookups = []
    if by_ref:
        lookups.append(any_of(session, SubTask.public_id, by_ref))
    if by_provider_id:
        lookups.append(
            and_(any_of(session, SubTask.provider_message_id, by_provider_id), SubTask.service_id.is_not(None))
        )
    query = select(*columns(SubTask, SUBTASK_READ + SUBTASK_WRITE)).where(or_(*lookups)).order_by(SubTask.id)
    if is_postgresql(session):
        query = query.with_for_update()
    candidates: dict[int, list[Any]] = defaultdict(list)
    for subtask in Record.all(await core_execute(session, query), SUBTASK_WRITE):
        for event in by_ref.get(subtask.public_id, ()):
            found[event.id] = subtask
        for event in by_provider_id.get(subtask.provider_message_id or "", ()) if subtask.service_id else ():
            # The provider id is unique only per service: the event's service (when the URL named one or its
            # secret identified it) must be the SubTask's.
            if event.service_id is None or event.service_id == subtask.service_id:
                candidates[event.id].append(subtask)
    for event_id, subtasks in candidates.items():
        # A batch request gives all its recipients one id (SendGrid's X-Message-Id): then the id names
        # several SubTasks and choosing one would be a guess, so the event stays unmatched.
        if len(subtasks) == 1:
            found[event_id] = subtasks[0]
        else:
            ambiguous.add(event_id)
    return found


def needing_attempts(events: Sequence[Any], subtasks: dict[int, Any], services: dict[int, EmailService]) -> list[int]:
    """SubTasks whose current service does not settle the provider check (a deferred row lost its service,
    or it moved between providers): only their attempts are read."""
    sources: dict[int, set[str]] = defaultdict(set)
    for event in events:
        if event.id in subtasks:
            sources[subtasks[event.id].id].add(event.source)
    needed = []
    for subtask in {s.id: s for s in subtasks.values()}.values():
        service = services.get(subtask.service_id or 0)
        wanted = sources[subtask.id] - OWN_SOURCES
        if not wanted or subtask.attempts == 0:
            continue
        if service is not None and (
            service.provider == SIMULATED_PROVIDER
            or all(service.provider == ("smtp" if source in REPORT_SOURCES else source) for source in wanted)
        ):
            continue
        needed.append(subtask.id)
    return needed


async def attempted_services(session: AsyncSession, subtask_ids: list[int]) -> dict[int, set[int]]:
    """SubTask id -> every service it was attempted on (a deferred row loses its service_id)."""
    result: dict[int, set[int]] = defaultdict(set)
    for start in range(0, len(subtask_ids), 1000):
        chunk = subtask_ids[start : start + 1000]
        rows = await core_execute(
            session,
            select(SendAttempt.subtask_id, SendAttempt.service_id).where(
                SendAttempt.subtask_id.in_(chunk), SendAttempt.service_id.is_not(None)
            ),
        )
        for row in rows:
            if row.service_id is not None:
                result[row.subtask_id].add(row.service_id)
    return result


def match(
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
    if event.source not in OWN_SOURCES:
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
    return bool(service.provider == event.source)


def _as_uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None
