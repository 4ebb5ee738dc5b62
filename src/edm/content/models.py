"""Templates and senders (SPEC §4.4)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from edm.db.base import Base, BigId, IdMixin, TimestampMixin
from edm.db.types import UTCDateTime


class Template(IdMixin, TimestampMixin, Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(1000))
    subject: Mapped[str] = mapped_column(String(998))
    preheader: Mapped[str | None] = mapped_column(String(255))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    inline_css: Mapped[bool] = mapped_column(Boolean, default=True)


class Sender(IdMixin, TimestampMixin, Base):
    __tablename__ = "senders"
    __table_args__ = (Index("uq_senders_local_part_lower", "local_part_lower", unique=True),)

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    local_part: Mapped[str] = mapped_column(String(64))
    # Unique across the deployment, case-insensitively: inbound mail to local@domain maps to one user.
    local_part_lower: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str | None] = mapped_column(String(200))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    archived_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
