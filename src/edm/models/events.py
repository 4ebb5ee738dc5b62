"""The normalized event store (docs/data-model.md#credit-events-and-suppression, docs/events.md#dedupe) and the webhook
replay guard."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Boolean, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from edm.clock import utc_now
from edm.db.base import Base, BigId, IdMixin
from edm.db.types import JsonType, UTCDateTime


class MatchStatus(enum.StrEnum):
    PENDING = "pending"  # stored, not applied yet (the `events` job picks it up)
    MATCHED = "matched"  # applied to its SubTask
    UNMATCHED = "unmatched"  # no SubTask (match_reason says why); kept for the admin view
    IGNORED = "ignored"  # matched but applied to nothing by rule (provider open/click events, docs/events.md#matching)


class MatchReason(enum.StrEnum):
    UNKNOWN_SUBTASK = "unknown_subtask"  # our id / provider id present, no such SubTask
    NO_ID = "no_id"  # a batch element without any id to look up
    AMBIGUOUS_PROVIDER_ID = "ambiguous_provider_id"  # no id of ours, and the provider id names several SubTasks
    PROVIDER_MISMATCH = "provider_mismatch"  # the SubTask was never attempted on this provider / service
    NEVER_SENT = "never_sent"  # the SubTask was never attempted
    BAD_ELEMENT = "bad_element"  # a batch element that could not be parsed (processing_error says why)
    NOT_A_REPORT = "not_a_report"  # a mail at the DSN endpoint that is no bounce or complaint report
    PROVIDER_TRACKING = "provider_tracking"  # a provider's open/click: EDM counts only its own tracking
    INBOUND = "inbound"  # an inbound reply (conversations are planned)


class Event(IdMixin, Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("source", "dedupe_key"),
        # The `events` job's queue: rows leave this index once processed, so it stays small.
        Index(
            "ix_events_pending",
            "id",
            postgresql_where=text("processed_at IS NULL"),
            sqlite_where=text("processed_at IS NULL"),
        ),
        Index(
            "ix_events_subtask_id",
            "subtask_id",
            postgresql_where=text("subtask_id IS NOT NULL"),
            sqlite_where=text("subtask_id IS NOT NULL"),
        ),
        Index("ix_events_match_status_id", "match_status", "id"),
        # Per-task reports (timeline, links, heat map, per-recipient detail) read a task's events by type.
        Index(
            "ix_events_task_id_type_time",
            "task_id",
            "event_type",
            "occurred_at",
            postgresql_where=text("task_id IS NOT NULL"),
            sqlite_where=text("task_id IS NOT NULL"),
        ),
    )

    source: Mapped[str] = mapped_column(String(16))  # provider code, `tracking`, `dsn`, `arf`, `inbound`
    service_id: Mapped[int | None] = mapped_column(BigId)
    dedupe_key: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(16))
    provider_event: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # Our SubTask id exactly as the provider echoed it (public UUID text), before matching.
    subtask_ref: Mapped[str | None] = mapped_column(String(64))
    subtask_id: Mapped[int | None] = mapped_column(BigId)
    task_id: Mapped[int | None] = mapped_column(BigId)
    user_id: Mapped[int | None] = mapped_column(BigId, index=True)
    match_status: Mapped[str] = mapped_column(String(16), default=MatchStatus.PENDING)
    match_reason: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    recipient: Mapped[str | None] = mapped_column(String(320))
    details: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    raw: Mapped[Any] = mapped_column(JsonType)
    raw_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    processing_error: Mapped[str | None] = mapped_column(String(500))


class WebhookNonce(Base):
    """Single-use values of signed webhooks (Mailgun's token): a token seen twice is a replay
    (docs/events.md#verification). Kept past the provider's timestamp window, then deleted by retention."""

    __tablename__ = "webhook_nonces"

    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now, index=True)
