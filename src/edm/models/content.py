"""Templates and senders (docs/data-model.md#content)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
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
    # The Markdown source when the template is written in Markdown (`html` is then its conversion), and the editor
    # mode the console opens it in: html, rich or markdown (docs/templates.md#editor-modes).
    markdown: Mapped[str | None] = mapped_column(Text)
    editor: Mapped[str] = mapped_column(String(16), default="html", server_default="html")


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


class Media(IdMixin, TimestampMixin, Base):
    """An uploaded image (docs/media.md), stored as uploaded and served at /media/{public_id}/{filename}.
    The bytes live in the database so every API process can serve them without a shared disk."""

    __tablename__ = "media"
    __table_args__ = (Index("ix_media_user_id_id", "user_id", "id"),)

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    public_id: Mapped[str] = mapped_column(String(32), unique=True)  # random: URLs are not guessable
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
