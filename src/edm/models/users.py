"""Users, API tokens and the append-only credit ledger (docs/data-model.md)."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from edm.db.base import Base, BigId, IdMixin, TimestampMixin
from edm.db.types import UTCDateTime


class Role(enum.StrEnum):
    ADMIN = "admin"  # operator: services, users, credit, settings; plus everything a user does
    USER = "user"  # marketer: own contacts, templates, tasks
    READ_ONLY = "read_only"  # reads own data, changes nothing


class TokenScope(enum.StrEnum):
    READ = "read"
    WRITE = "write"


class LedgerKind(enum.StrEnum):
    GRANT = "grant"  # admin add
    REVOKE = "revoke"  # admin subtract
    SET = "set"  # admin set (amount is the delta)
    RESERVE = "reserve"  # task generation (negative)
    CHARGE = "charge"  # test send or conversation message (negative)
    REFUND = "refund"  # suppressed/cancelled SubTasks given back (positive)


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("credit_balance >= 0", name="credit_non_negative"),)

    username: Mapped[str] = mapped_column(String(64), unique=True)  # stored lower-case
    email: Mapped[str] = mapped_column(String(320), unique=True)  # normalized
    password_hash: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), default=Role.USER)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # The console's language (`en`, `zh_Hans`); null: the browser's preference (docs/console.md#languages).
    locale: Mapped[str | None] = mapped_column(String(16))
    credit_balance: Mapped[int] = mapped_column(Integer, default=0)
    low_credit_threshold: Mapped[int | None] = mapped_column(Integer)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[int | None] = mapped_column(BigId)


class ApiToken(IdMixin, TimestampMixin, Base):
    __tablename__ = "api_tokens"

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(8), default=TokenScope.WRITE)
    token_prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class QuotaLedgerEntry(IdMixin, TimestampMixin, Base):
    """Append-only: the product never updates or deletes a row. balance_after is the running sum."""

    __tablename__ = "quota_ledger"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        CheckConstraint("balance_after >= 0", name="balance_non_negative"),
        Index("ix_quota_ledger_user_id_id", "user_id", "id"),
    )

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Integer)
    balance_after: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="SET NULL"), index=True)
    actor_user_id: Mapped[int | None] = mapped_column(BigId)
    reason: Mapped[str] = mapped_column(String(500))


class ConsoleSession(IdMixin, Base):
    """A console login (docs/auth.md#logging-in). Only the SHA-256 of the cookie value is stored; `csrf_secret` is the
    token state-changing requests must echo (form field or `X-CSRF-Token`)."""

    __tablename__ = "sessions"

    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())  # absolute lifetime
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class LoginAttempt(IdMixin, Base):
    """Failed (and successful) logins, for throttling by account, by the identifier typed and by IP across API
    processes."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_username_at", "username", "at"),
        Index("ix_login_attempts_user_id_at", "user_id", "at"),
        Index("ix_login_attempts_ip_at", "ip", "at"),
    )

    username: Mapped[str] = mapped_column(String(320))  # as typed, lower-cased
    # The account the identifier resolved to (username or email), so both spellings count against it. No
    # foreign key: attempts are pruned after a day, and a deleted user's rows are harmless until then.
    user_id: Mapped[int | None] = mapped_column(BigId)
    ip: Mapped[str | None] = mapped_column(String(64))
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
