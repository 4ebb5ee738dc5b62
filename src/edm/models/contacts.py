"""Contacts and the two-level tag tree (docs/data-model.md#contacts-and-tags). Memberships are a join table, never JSON
arrays."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from edm.clock import utc_now
from edm.db.base import Base, BigId, IdMixin, TimestampMixin
from edm.db.types import JsonType, UTCDateTime


class ContactStatus(enum.StrEnum):
    ACTIVE = "active"  # sendable
    PENDING = "pending"  # sendable (e.g. awaiting confirmation elsewhere)
    INACTIVE = "inactive"  # not sendable
    ARCHIVED = "archived"  # not sendable, hidden by default


SENDABLE_CONTACT_STATUSES = (ContactStatus.ACTIVE, ContactStatus.PENDING)


class Contact(IdMixin, TimestampMixin, Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("user_id", "email_normalized"),
        Index("ix_contacts_user_id_id", "user_id", "id"),
        # The keyset orders of the `created` and `updated` sorts; PostgreSQL has more list indexes
        # (migration 0003, edm.migrations.migrate.POSTGRESQL_ONLY_INDEXES).
        Index("ix_contacts_user_id_created_at_id", "user_id", "created_at", "id"),
        Index("ix_contacts_user_id_updated_at_id", "user_id", "updated_at", "id"),
        # Room on each page for the in-place (HOT) update of a send's `last_sent_at` (migration 0015).
        {"postgresql_with": {"fillfactor": 90}},
    )

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    email_normalized: Mapped[str] = mapped_column(String(320))
    # Domain part of the normalized address, kept so domain suppressions are a plain indexed comparison.
    email_domain: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(200))
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    username: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    position: Mapped[str | None] = mapped_column(String(200))
    tiktok_unique_id: Mapped[str | None] = mapped_column(String(200))
    instagram_id: Mapped[str | None] = mapped_column(String(200))
    youtube_id: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=ContactStatus.ACTIVE)
    custom_attributes: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    timezone: Mapped[str | None] = mapped_column(String(64))
    unsubscribed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    hard_bounced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    complained_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    soft_bounce_streak: Mapped[int] = mapped_column(Integer, default=0)
    import_id: Mapped[int | None] = mapped_column(BigId)
    imported_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_clicked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_replied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Tag(IdMixin, TimestampMixin, Base):
    __tablename__ = "tags"
    __table_args__ = (
        UniqueConstraint("user_id", "parent_id", "name"),
        # NULL parents never collide in a unique constraint: root names need their own partial index.
        Index(
            "uq_tags_root_name",
            "user_id",
            "name",
            unique=True,
            postgresql_where=text("parent_id IS NULL"),
            sqlite_where=text("parent_id IS NULL"),
        ),
        Index("ix_tags_user_id_parent_id", "user_id", "parent_id"),
    )

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(500))
    color: Mapped[str] = mapped_column(String(7), default="#3b82f6")
    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("tags.id", ondelete="RESTRICT"))
    is_split_group: Mapped[bool] = mapped_column(Boolean, default=False)


class ContactTag(Base):
    __tablename__ = "contact_tags"
    __table_args__ = (Index("ix_contact_tags_tag_id_contact_id", "tag_id", "contact_id"),)

    contact_id: Mapped[int] = mapped_column(BigId, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    tag_id: Mapped[int] = mapped_column(BigId, ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)


class ContactAttributeKey(Base):
    """The custom attribute keys a user's contacts have carried (docs/data-model.md#contacts-and-tags): the template
    editor's suggestions, read without scanning every contact's JSON. Every write of `custom_attributes` adds its
    keys (`edm.contacts.attribute_keys`); nothing removes a key when the last contact carrying it changes or goes, so
    the list may name keys no contact has any more (a suggestion that renders as nothing: harmless)."""

    __tablename__ = "contact_attribute_keys"

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)


class ImportStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Import(IdMixin, TimestampMixin, Base):
    """A background import of contacts or suppressions (docs/import.md, docs/data-model.md#contacts-and-tags). The
    uploaded file is kept in `import_chunks`, so any worker on any host can process it and nothing depends on a local
    disk."""

    __tablename__ = "imports"
    __table_args__ = (Index("ix_imports_user_id_id", "user_id", "id"), Index("ix_imports_status", "status"))

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="contacts")  # contacts | suppressions
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(8))  # csv | xlsx
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    options: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=ImportStatus.QUEUED)
    total_rows: Mapped[int | None] = mapped_column(Integer)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(String(1000))  # why it failed, in one line
    worker_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ImportChunk(Base):
    __tablename__ = "import_chunks"

    import_id: Mapped[int] = mapped_column(BigId, ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ImportRowError(IdMixin, Base):
    __tablename__ = "import_errors"
    __table_args__ = (Index("ix_import_errors_import_id_row_number", "import_id", "row_number"),)

    import_id: Mapped[int] = mapped_column(BigId, ForeignKey("imports.id", ondelete="CASCADE"))
    row_number: Mapped[int] = mapped_column(Integer)
    column: Mapped[str | None] = mapped_column(String(100))
    value: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(String(500))
