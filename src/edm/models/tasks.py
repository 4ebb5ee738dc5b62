"""Tasks, their template snapshots, status history, SubTasks and send attempts
(docs/data-model.md#tasks-and-subtasks)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from edm.clock import utc_now
from edm.db.base import Base, BigId, IdMixin, TimestampMixin
from edm.db.types import JsonType, UTCDateTime
from edm.vocabulary.tasks import DeliveryState, SendState, TaskStatus


class Task(IdMixin, TimestampMixin, Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_status_schedule_at", "status", "schedule_at"),
        Index("ix_tasks_user_id_status", "user_id", "status"),
    )

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.DRAFT)
    # "bulk" (a campaign) or "test" (a template test send, docs/templates.md#test-sends: claimed before bulk work,
    # hidden from task lists and dashboards, sent with `[TEST] ` and no tracking).
    kind: Mapped[str] = mapped_column(String(8), default="bulk", server_default="bulk")
    pause_reason: Mapped[str | None] = mapped_column(String(32))
    pause_detail: Mapped[str | None] = mapped_column(String(1000))
    resume_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    waiting_reason: Mapped[str | None] = mapped_column(String(32))
    waiting_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    sender_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("senders.id", ondelete="RESTRICT"))
    recipient_rule: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    schedule_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    priority: Mapped[int] = mapped_column(Integer, default=5)
    track_opens: Mapped[bool] = mapped_column(Boolean, default=True)
    track_clicks: Mapped[bool] = mapped_column(Boolean, default=True)
    on_capacity_exhausted: Mapped[str] = mapped_column(String(8), default="wait")
    allowed_service_ids: Mapped[list[int] | None] = mapped_column(JsonType)
    error_thresholds: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    generated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    first_sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    schedule_estimate: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    generation_summary: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    completion_note: Mapped[str | None] = mapped_column(String(200))
    threshold_window_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # When this task last got SubTasks in a claim: the fairness order among one user's tasks (docs/sending.md#fairness).
    last_claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # When the final refund of a finished/cancelled/closed task was written (null while one may still be owed).
    settled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # When no usable service was first seen (grace period of docs/sending.md#when-a-task-waits-or-pauses), null
    # otherwise.
    unavailable_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class TaskTemplate(IdMixin, TimestampMixin, Base):
    """A task's use of a template, with the frozen snapshot taken at generation."""

    __tablename__ = "task_templates"

    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    template_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("templates.id", ondelete="SET NULL"))
    weight: Mapped[int] = mapped_column(Integer, default=1)
    position: Mapped[int] = mapped_column(Integer, default=0)
    snapshot_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    name: Mapped[str | None] = mapped_column(String(200))
    subject: Mapped[str | None] = mapped_column(String(998))
    preheader: Mapped[str | None] = mapped_column(String(255))
    html: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    inline_css: Mapped[bool] = mapped_column(Boolean, default=True)


class TaskStatusChange(IdMixin, Base):
    __tablename__ = "task_status_changes"

    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(String(1000))
    actor: Mapped[str] = mapped_column(String(32))  # user id or "system"
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)


class SubTask(IdMixin, Base):
    """One email to one recipient: the unit of sending, tracking and statistics.

    Kept narrow on purpose: the claim scans pending rows through partial indexes, and every outcome
    rewrites the row, so fewer and smaller columns mean cheaper updates and vacuum.
    """

    __tablename__ = "subtasks"
    __table_args__ = (
        UniqueConstraint("task_id", "contact_id"),
        UniqueConstraint("task_id", "recipient_email"),
        CheckConstraint(
            "(send_state <> 'pending' OR service_id IS NULL) AND (send_state <> 'allocated' OR service_id IS NOT NULL)",
            name="service_binding",
        ),
        # The claim's two partial indexes (docs/performance.md, lesson 6): fresh rows in generation order,
        # and due retries by time. Rows leave them as soon as they are claimed.
        Index(
            "ix_subtasks_fresh",
            "task_id",
            "seq",
            postgresql_where=text("send_state = 'pending' AND attempts = 0"),
            sqlite_where=text("send_state = 'pending' AND attempts = 0"),
        ),
        Index(
            "ix_subtasks_retry",
            "task_id",
            "next_attempt_at",
            postgresql_where=text("send_state = 'pending' AND attempts > 0"),
            sqlite_where=text("send_state = 'pending' AND attempts > 0"),
        ),
        Index(
            "ix_subtasks_allocated",
            "service_id",
            "lease_expires_at",
            postgresql_where=text("send_state = 'allocated'"),
            sqlite_where=text("send_state = 'allocated'"),
        ),
        Index("ix_subtasks_task_id_send_state", "task_id", "send_state"),
        # The recipient lists filtered by a delivery state (who bounced, complained…); rows enter it when a delivery
        # state arrives, so generation does not maintain it (migration 0010).
        Index(
            "ix_subtasks_task_id_delivery_state",
            "task_id",
            "delivery_state",
            postgresql_where=text("delivery_state <> 'none'"),
            sqlite_where=text("delivery_state <> 'none'"),
        ),
        # Partial: rows enter it when a provider gives them an id, so generation does not maintain it.
        Index(
            "ix_subtasks_service_id_provider_message_id",
            "service_id",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
            sqlite_where=text("provider_message_id IS NOT NULL"),
        ),
    )

    # Only task_id is a foreign key. Each FK fires a referential check per inserted row, and the one to
    # contacts also locks every contact: together 28 s of a 46 s generation of 1,000,000 rows
    # (bench/RESULTS.md). The other references are kept by the product instead: user_id is copied from the
    # task; task templates and SubTasks go with their task; services are archived, never deleted; a deleted
    # contact leaves contact_id pointing at no row, which the claim-time check reads as `contact_deleted`.
    public_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, default=uuid.uuid4)
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(BigId)
    contact_id: Mapped[int | None] = mapped_column(BigId)
    recipient_email: Mapped[str] = mapped_column(String(320))
    task_template_id: Mapped[int | None] = mapped_column(BigId)
    seq: Mapped[int] = mapped_column(Integer)
    send_state: Mapped[str] = mapped_column(String(16), default=SendState.PENDING)
    suppressed_reason: Mapped[str | None] = mapped_column(String(32))
    # True when credit was reserved for this row at generation (pending then); refunds are owed for
    # charged rows that end suppressed or cancelled.
    charged: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retryable_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    service_id: Mapped[int | None] = mapped_column(BigId)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    allocated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    from_address: Mapped[str | None] = mapped_column(String(320))
    message_id: Mapped[str | None] = mapped_column(String(400))
    subject_sent: Mapped[str | None] = mapped_column(String(998))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error_class: Mapped[str | None] = mapped_column(String(32))
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivery_state: Mapped[str] = mapped_column(String(16), default=DeliveryState.NONE)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    bounced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    delivery_detail: Mapped[str | None] = mapped_column(String(500))
    first_opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    open_count: Mapped[int] = mapped_column(Integer, default=0)
    machine_open_count: Mapped[int] = mapped_column(Integer, default=0)
    first_clicked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_clicked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    click_count: Mapped[int] = mapped_column(Integer, default=0)
    machine_click_count: Mapped[int] = mapped_column(Integer, default=0)
    unsubscribed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    complained_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    replied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


# The stripe of the counters that hold what the retention job deleted from events and send attempts
# (edm.tasks.archive): never folded, added to what readers count from the rows.
ARCHIVED_STRIPE = -1


class TaskStatCounter(Base):
    """Task statistics kept as counters (docs/statistics.md#where-the-numbers-come-from: ≤ 100 ms for a task of
    1,000,000 SubTasks).

    One row per (task, stripe, group) where the group is the tuple `tasks.stats` groups SubTasks by, holding
    the row count and the engagement sums of that group. On PostgreSQL a statement-level trigger on
    `subtasks` adds the difference between the old and new rows of every INSERT, UPDATE and DELETE, in the
    same transaction (migration 0002). `stripe` is the writing backend's pid, so two transactions never
    wait on the same counter row; the `stats` maintenance job folds stripes into stripe 0. SQLite has no
    statement-level triggers: there the statistics are aggregated from the SubTask rows directly.
    """

    __tablename__ = "task_stat_counters"

    # No foreign key: its check would take a KEY SHARE lock on the task row in every transaction that
    # changes a SubTask, which waits behind (and can deadlock with) the jobs that lock tasks FOR UPDATE.
    # A deleted task's SubTasks subtract themselves to zero, and the fold drops empty groups.
    task_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_template_id: Mapped[int] = mapped_column(BigId, primary_key=True, default=0)  # 0 for none (migration 0007)
    service_id: Mapped[int] = mapped_column(BigId, primary_key=True, default=0)  # of the last attempt; 0 for none
    send_state: Mapped[str] = mapped_column(String(16), primary_key=True)
    tried: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    charged: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    suppressed_reason: Mapped[str] = mapped_column(String(32), primary_key=True)  # '' for none
    last_error_class: Mapped[str] = mapped_column(String(32), primary_key=True)  # '' for none
    delivery_state: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    opened_human: Mapped[int] = mapped_column(BigInteger, default=0)
    opened_total: Mapped[int] = mapped_column(BigInteger, default=0)
    clicked_human: Mapped[int] = mapped_column(BigInteger, default=0)
    clicked_total: Mapped[int] = mapped_column(BigInteger, default=0)
    opens: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_opens: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    machine_clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    unsubscribed: Mapped[int] = mapped_column(BigInteger, default=0)
    replied: Mapped[int] = mapped_column(BigInteger, default=0)


class TaskQuarterCounter(Base):
    """Per task, fact and UTC quarter hour (epoch seconds ÷ 900): how many times the fact happened then
    (docs/statistics.md#breakdowns-and-timelines). Facts of SubTask rows (`sent`, `delivered`, `opened`, `clicked`,
    `hard_bounced`, `complained`, `unsubscribed`, `replied`, `refused`) count each recipient once, at the time on
    its row; `open_hits` and `click_hits` count every matched human tracking event. Kept on PostgreSQL by the
    triggers of migration 0007, striped and folded like `TaskStatCounter`; empty on SQLite, where the same numbers
    are aggregated from the rows."""

    __tablename__ = "task_quarter_counters"

    task_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    fact: Mapped[str] = mapped_column(String(16), primary_key=True)
    quarter: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stripe: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class TaskAttemptCounter(Base):
    """Per task, service (0 for one since deleted) and outcome: the send attempts and their summed and timed
    durations (the per-service report). Kept on PostgreSQL by a trigger on `send_attempts` (migration 0007);
    empty on SQLite."""

    __tablename__ = "task_attempt_counters"

    task_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    service_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(24), primary_key=True)
    stripe: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    total_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    timed: Mapped[int] = mapped_column(BigInteger, default=0)


class SendAttempt(IdMixin, Base):
    """One per claim: the per-recipient 'what happened' log. Never bodies or credentials."""

    __tablename__ = "send_attempts"

    subtask_id: Mapped[int] = mapped_column(BigId, ForeignKey("subtasks.id", ondelete="CASCADE"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    service_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("email_services.id", ondelete="SET NULL"))
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(24))
    status: Mapped[int | None] = mapped_column(Integer)
    provider_code: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(String(500))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
