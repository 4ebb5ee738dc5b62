"""Storing events once (docs/events.md#dedupe): rows for the event store, the dedupe key, one INSERT per batch.

Storing is separate from applying: a webhook request verifies, parses and stores (one statement), answers,
and the `events` job applies what was stored (`edm.events.apply`). A duplicate delivery hits the unique
(source, dedupe_key) and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from edm import telemetry
from edm.db.session import after_commit
from edm.models.events import Event, MatchReason, MatchStatus, WebhookNonce
from edm.vocabulary.events import BadElement, NormalizedEvent

RAW_LIMIT = 64 * 1024  # bytes of raw payload kept per event (docs/data-model.md#credit-events-and-suppression)
_KEY_LIMIT = 200


@dataclass(slots=True)
class StoreCounts:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    bad: int = 0
    queued: int = 0  # inbound mail accepted for the `inbound` job (edm.conversations.inbound_queue)

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "bad": self.bad,
            "queued": self.queued,
        }


def dedupe_key(event: NormalizedEvent) -> str:
    """The provider's event id where one exists, else a hash of what makes the event distinct
    (docs/events.md#dedupe)."""
    if event.provider_event_id:
        key = str(event.provider_event_id)
        return key if len(key) <= _KEY_LIMIT else "h:" + _digest(key)
    parts: tuple[str, ...] = (
        event.provider_message_id or event.subtask_id or "",
        event.provider_event,
        event.occurred_at.isoformat() if event.occurred_at else "",
        (event.recipient or "").lower(),
        event.url or "",
    )
    if not any((parts[0], parts[2], parts[3])):  # nothing identifying: the payload itself is the identity
        parts = (*parts, _dumps(event.raw).decode("utf-8", "replace"))
    return "h:" + _digest("\x1f".join(parts))


def event_row(source: str, service_id: int | None, event: NormalizedEvent, *, now: dt.datetime) -> dict[str, Any]:
    raw, truncated = _bounded_raw(event.raw)
    details = dict(event.details)
    for name in ("bounce_class", "smtp_code", "enhanced_code", "reason", "url", "ip", "user_agent"):
        value = getattr(event, name)
        if value is not None:
            details[name] = str(value)
    if event.task_id:
        details.setdefault("task_ref", str(event.task_id)[:64])
    return {
        "source": source,
        "service_id": service_id,
        "dedupe_key": dedupe_key(event),
        "event_type": str(event.event_type),
        "provider_event": (event.provider_event or "")[:64] or None,
        "occurred_at": event.occurred_at or now,
        "received_at": now,
        "subtask_ref": _clip(event.subtask_id, 64),
        "match_status": MatchStatus.PENDING,
        "provider_message_id": _clip(event.provider_message_id, 255),
        "recipient": _clip(event.recipient, 320),
        "details": details,
        "raw": raw,
        "raw_truncated": truncated,
    }


def bad_element_row(source: str, service_id: int | None, element: BadElement, *, now: dt.datetime) -> dict[str, Any]:
    """A batch element that could not be parsed: kept with its error for the admin view, never applied."""
    raw, truncated = _bounded_raw(element.raw)
    return {
        "source": source,
        "service_id": service_id,
        "dedupe_key": "bad:" + _digest(_dumps(element.raw).decode()),
        "event_type": "unknown",
        "provider_event": None,
        "occurred_at": now,
        "received_at": now,
        "subtask_ref": None,
        "match_status": MatchStatus.UNMATCHED,
        "match_reason": MatchReason.BAD_ELEMENT,
        "provider_message_id": None,
        "recipient": None,
        "details": {},
        "raw": raw,
        "raw_truncated": truncated,
        "processed_at": now,
        "processing_error": element.error[:500],
    }


async def store_returning_ids(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> list[int]:
    """`store`, answering the ids of the rows actually inserted (duplicates answer nothing)."""
    if not rows:
        return []
    connection = await session.connection()
    result = (await connection.execute(_store_statement(connection.dialect.name), _one_shape(rows))).all()
    _count_final(session, result)
    return [row[0] for row in result]


async def store(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> StoreCounts:
    """Insert rows, skipping those whose (source, dedupe_key) is already stored. One round trip.

    Two choices measured in bench/RESULTS.md (webhooks): the rows go as executemany parameters of one
    cached statement (SQLAlchemy batches them into a multi-row INSERT … RETURNING) rather than a
    `.values(list)` statement, which is compiled anew for every request (~70 % of the request's CPU); and
    they are inserted in key order, so two requests carrying the same redelivered events lock the unique
    index entries in the same order instead of deadlocking.
    """
    counts = StoreCounts(received=len(rows))
    if not rows:
        return counts
    unique = _one_shape(rows)
    connection = await session.connection()
    result = (await connection.execute(_store_statement(connection.dialect.name), unique)).all()
    _count_final(session, result)
    inserted = len(result)
    counts.stored = inserted
    counts.duplicates = len(rows) - inserted
    counts.bad = sum(1 for r in unique if r.get("match_reason") == MatchReason.BAD_ELEMENT)
    return counts


def _one_shape(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without in-batch duplicates, all with the same columns (one executemany), in key order."""
    by_key = {(r["source"], r["dedupe_key"]): r for r in rows}
    columns = set().union(*(r.keys() for r in by_key.values()))
    unique = [{c: by_key[key].get(c) for c in columns} for key in sorted(by_key)]
    for row in unique:
        row["match_status"] = row["match_status"] or MatchStatus.PENDING
    return unique


@functools.cache
def _store_statement(dialect: str) -> Any:
    table = cast(Table, Event.__table__)
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).on_conflict_do_nothing(index_elements=["source", "dedupe_key"])
    return statement.returning(table.c.id, table.c.source, table.c.event_type, table.c.match_status)


def _count_final(session: AsyncSession, inserted: Sequence[Any]) -> None:
    """Rows stored already final (a batch element that could not be parsed, a mail that is no report) are never
    applied: the process's event count (`edm.telemetry`) takes them here, the `events` job takes the others."""
    final = Counter((r.source, r.event_type, str(r.match_status)) for r in inserted if r.match_status != "pending")
    if final:
        after_commit(session, lambda: telemetry.count_events(final, {}))


async def claim_nonce(session: AsyncSession, source: str, nonce: str, *, now: dt.datetime) -> bool:
    """Record a single-use value; False when it was seen before (a replayed request)."""
    statement = _insert(session, WebhookNonce).values(source=source, nonce=nonce[:200], seen_at=now)
    statement = statement.on_conflict_do_nothing().returning(WebhookNonce.nonce)
    return (await session.execute(statement)).first() is not None


def _insert(session: AsyncSession, model: Any) -> Any:
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def _bounded_raw(raw: Any) -> tuple[Any, bool]:
    encoded = _dumps(raw)
    if len(encoded) <= RAW_LIMIT:
        return raw, False
    return {"truncated": encoded[:RAW_LIMIT].decode("utf-8", "ignore")}, True


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:40]


def _clip(value: Any, limit: int) -> str | None:
    if value is None or value == "":
        return None
    return str(value)[:limit]
