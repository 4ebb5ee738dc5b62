"""Suppression entries (docs/data-model.md#credit-events-and-suppression). Checked at generation and again at claim
time."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from edm.db.base import Base, BigId, IdMixin, TimestampMixin
from edm.db.types import UTCDateTime


class Suppression(IdMixin, TimestampMixin, Base):
    __tablename__ = "suppressions"
    # user_id is NULL for global entries; a plain unique constraint would let NULLs repeat, so uniqueness
    # of (scope, user_id, kind, value) is enforced on a coalesced key.
    __table_args__ = (
        Index("uq_suppressions_key", "scope", "owner_key", "kind", "value", unique=True),
        Index("ix_suppressions_value", "value"),
    )

    scope: Mapped[str] = mapped_column(String(8))  # global | user
    user_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    owner_key: Mapped[int] = mapped_column(BigId, default=0)  # user_id, or 0 for global
    kind: Mapped[str] = mapped_column(String(8))  # address | domain
    value: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(String(500))
    source_task_id: Mapped[int | None] = mapped_column(BigId)
    source_event_id: Mapped[int | None] = mapped_column(BigId)
    created_by: Mapped[int | None] = mapped_column(BigId)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
