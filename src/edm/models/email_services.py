"""Sending services: admin configuration, runtime state, per-service-day usage, mappings, status log
(docs/data-model.md#sending-services)."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from edm.clock import utc_now
from edm.db.base import Base, BigId, IdMixin, TimestampMixin
from edm.db.types import JsonType, UTCDateTime


class FreezeReason(enum.StrEnum):
    FAILURES = "failures"  # consecutive transient failures; cools down by itself (half-open probe)
    AUTH_CONFIG = "auth_config"  # credentials/config rejected; until an admin unfreezes
    MANUAL = "manual"  # an admin froze it


class StatusChange(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    FROZEN = "frozen"
    UNFROZEN = "unfrozen"
    PROBE_SUCCEEDED = "probe_succeeded"
    PROBE_FAILED = "probe_failed"
    THROTTLED = "throttled"
    EXHAUSTED = "exhausted"
    EXHAUSTION_CLEARED = "exhaustion_cleared"
    USAGE_ADJUSTED = "usage_adjusted"
    CONFIG_UPDATED = "config_updated"
    CREDENTIALS_UPDATED = "credentials_updated"
    BACKOFF_CLEARED = "backoff_cleared"
    TEST_SEND = "test_send"


class EmailService(IdMixin, TimestampMixin, Base):
    __tablename__ = "email_services"
    __table_args__ = (
        CheckConstraint("sending_interval_seconds >= 0 AND sending_interval_seconds <= 86400", name="interval"),
        CheckConstraint("max_concurrency BETWEEN 1 AND 100", name="concurrency"),
        CheckConstraint("batch_size BETWEEN 1 AND 1000", name="batch_size"),
        CheckConstraint("daily_quota >= 1", name="daily_quota"),
    )

    name: Mapped[str] = mapped_column(String(100), unique=True)
    label: Mapped[str] = mapped_column(String(100))
    provider: Mapped[str] = mapped_column(String(32))
    # Encrypted JSON (Fernet token text); never returned by any API, page or log.
    credentials_encrypted: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    domain: Mapped[str] = mapped_column(String(255))
    sending_interval_seconds: Mapped[Decimal] = mapped_column(Numeric(9, 3), default=Decimal("1.0"))
    max_concurrency: Mapped[int] = mapped_column(Integer, default=2)
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    daily_quota: Mapped[int] = mapped_column(Integer, default=1000)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    quota_reset_time: Mapped[str] = mapped_column(String(5), default="00:00")
    weight: Mapped[int] = mapped_column(Integer, default=100)
    priority: Mapped[int] = mapped_column(Integer, default=50)
    backup_only: Mapped[bool] = mapped_column(Boolean, default=False)
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    request_timeout_seconds: Mapped[int] = mapped_column(Integer, default=30)
    archived_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class EmailServiceState(Base):
    """Runtime state, one row per service, written only by the dispatcher and admin actions.

    The claim locks this row (FOR UPDATE SKIP LOCKED on PostgreSQL), so it is also the per-service mutex
    that makes rate slots, concurrency and quota hold across any number of workers.
    """

    __tablename__ = "email_service_states"

    service_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("email_services.id", ondelete="CASCADE"), primary_key=True
    )
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    frozen_reason: Mapped[str | None] = mapped_column(String(16))
    frozen_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    freeze_level: Mapped[int] = mapped_column(Integer, default=0)
    probe_in_flight: Mapped[bool] = mapped_column(Boolean, default=False)
    throttled_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    throttle_level: Mapped[int] = mapped_column(Integer, default=0)
    exhausted_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_slot_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_failure_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(500))
    recent_success_rate: Mapped[float | None] = mapped_column(Float)
    recent_samples: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms_ewma: Mapped[float | None] = mapped_column(Float)
    rr_user_cursor: Mapped[int | None] = mapped_column(BigId)
    last_claim_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now, onupdate=utc_now)


class ServiceDayUsage(IdMixin, Base):
    __tablename__ = "service_day_usage"
    __table_args__ = (UniqueConstraint("service_id", "service_day"),)

    service_id: Mapped[int] = mapped_column(BigId, ForeignKey("email_services.id", ondelete="CASCADE"))
    service_day: Mapped[dt.date] = mapped_column(Date)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    uncertain: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    adjustment: Mapped[int] = mapped_column(Integer, default=0)

    # Reservations in flight are not stored: they are the service's `allocated` SubTasks, counted under the
    # claim's lock, so a crashed worker can never leave a phantom reservation behind (docs/architecture.md).


class UserServiceMapping(IdMixin, TimestampMixin, Base):
    __tablename__ = "user_service_mappings"
    __table_args__ = (UniqueConstraint("user_id", "service_id"),)

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(BigId, ForeignKey("email_services.id", ondelete="CASCADE"), index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[int | None] = mapped_column(BigId)


class EmailServiceStatusLog(IdMixin, Base):
    __tablename__ = "email_service_status_log"

    service_id: Mapped[int] = mapped_column(BigId, ForeignKey("email_services.id", ondelete="CASCADE"), index=True)
    change: Mapped[str] = mapped_column(String(32))
    old_value: Mapped[str | None] = mapped_column(String(200))
    new_value: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(String(500))
    actor_user_id: Mapped[int | None] = mapped_column(BigId)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)


class ServiceAttemptHour(Base):
    """Per service (0 for one since deleted), UTC hour (epoch seconds ÷ 3600) and outcome: the send attempts that
    finished in that hour, their summed durations and how many had one, for the health history
    (docs/providers.md#the-health-view). Kept on PostgreSQL by the trigger on `send_attempts` (migration 0012),
    one row per writing backend (`stripe`) until the `stats` job folds it into stripe 0; empty on SQLite, where the
    history is aggregated from `send_attempts` with the same definitions."""

    __tablename__ = "service_attempt_hours"

    service_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(24), primary_key=True)
    stripe: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    total_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    timed: Mapped[int] = mapped_column(BigInteger, default=0)
