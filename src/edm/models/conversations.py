"""Conversations: replies to our mail and the answers sent from EDM (docs/conversations.md).

A conversation is one thread between one of our addresses and one outside address, owned by one user. Its messages
are inbound (parsed from the raw MIME we received, which is kept in `mail_blobs` for attachments and re-parsing) or
outbound (an answer: sent as the single SubTask of a task of kind `reply`, so it goes through the same claim, rate
slots, quota, credit, retries and failover as every other mail; the SubTask holds its send state). Mail that no
user owns is kept in `unrouted_inbound` for admins only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from edm.clock import utc_now
from edm.db.base import Base, BigId, IdMixin, TimestampMixin
from edm.db.types import JsonType, UTCDateTime


class MailBlob(IdMixin, Base):
    """A raw RFC 5322 message as received (bounded in size by the inbound limits), read only for a message's
    attachments, its source view, or a re-parse. Kept apart so that lists and threads never load it."""

    __tablename__ = "mail_blobs"

    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)


class Conversation(IdMixin, TimestampMixin, Base):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("user_id", "our_address", "their_address"),
        # The inbox: a user's conversations by status, newest activity first.
        Index("ix_conversations_user_id_status_last", "user_id", "status", "last_message_at"),
        Index("ix_conversations_user_id_last", "user_id", "last_message_at"),
        Index(
            "ix_conversations_contact_id",
            "contact_id",
            postgresql_where=text("contact_id IS NOT NULL"),
            sqlite_where=text("contact_id IS NOT NULL"),
        ),
    )

    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    our_address: Mapped[str] = mapped_column(String(320))  # normalized (lower-cased domain and local part)
    their_address: Mapped[str] = mapped_column(String(320))  # normalized
    their_name: Mapped[str | None] = mapped_column(String(200))
    contact_id: Mapped[int | None] = mapped_column(BigId)
    subject: Mapped[str] = mapped_column(String(998), default="")  # without Re:/Fwd: prefixes
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, closed, archived
    last_message_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    unread_count: Mapped[int] = mapped_column(Integer, default=0)  # inbound messages with read_at null
    last_service_id: Mapped[int | None] = mapped_column(BigId)  # the service of the last mail either way
    # The first of our sends the conversation was matched to (null when it began by address or from EDM).
    task_id: Mapped[int | None] = mapped_column(BigId)
    subtask_id: Mapped[int | None] = mapped_column(BigId)


class ConversationMessage(IdMixin, Base):
    __tablename__ = "conversation_messages"
    __table_args__ = (
        # Inbound mail is stored once per (user, Message-ID): a provider's retry or a second source adds nothing.
        Index(
            "uq_conversation_messages_inbound",
            "user_id",
            "message_id",
            unique=True,
            postgresql_where=text("direction = 'inbound'"),
            sqlite_where=text("direction = 'inbound'"),
        ),
        Index("ix_conversation_messages_conversation_id_id", "conversation_id", "id"),
        Index(
            "ix_conversation_messages_subtask_id",
            "subtask_id",
            postgresql_where=text("subtask_id IS NOT NULL"),
            sqlite_where=text("subtask_id IS NOT NULL"),
        ),
        # The retention job's sweep of mail blobs nothing refers to (migration 0013).
        Index(
            "ix_conversation_messages_blob_id",
            "blob_id",
            postgresql_where=text("blob_id IS NOT NULL"),
            sqlite_where=text("blob_id IS NOT NULL"),
        ),
    )

    conversation_id: Mapped[int] = mapped_column(BigId, ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(BigId)
    direction: Mapped[str] = mapped_column(String(8))  # inbound, outbound
    # Inbound: the SubTask (of a campaign or of an earlier answer) it replies to, if threading found one.
    # Outbound: the SubTask that sends it (the single SubTask of its `reply` task).
    subtask_id: Mapped[int | None] = mapped_column(BigId)
    task_id: Mapped[int | None] = mapped_column(BigId)
    message_id: Mapped[str] = mapped_column(String(400))  # without angle brackets
    in_reply_to: Mapped[str | None] = mapped_column(String(400))
    references: Mapped[str | None] = mapped_column(Text)  # space-separated ids without angle brackets
    from_address: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str | None] = mapped_column(String(200))
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(998), default="")
    text_body: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)  # as received; sanitized when shown
    is_auto_reply: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str | None] = mapped_column(String(16))  # inbound: provider code, `smtp`, `imap`
    service_id: Mapped[int | None] = mapped_column(BigId)  # inbound: the receiving service; outbound: the sender
    received_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    read_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # inbound only
    blob_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("mail_blobs.id", ondelete="SET NULL"))
    attachments: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)  # name, type, size, part
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)


class UnroutedInbound(IdMixin, Base):
    """Inbound mail that no user owns: no Message-ID of ours in its threading headers and an address that names no
    sender. Admins only; an admin may assign it to a user (then it is processed as if it had been routed) or
    discard it."""

    __tablename__ = "unrouted_inbound"
    __table_args__ = (
        Index(
            "ix_unrouted_inbound_open",
            "id",
            postgresql_where=text("resolved_at IS NULL"),
            sqlite_where=text("resolved_at IS NULL"),
        ),
        # A provider's retry of the same unrouted mail adds nothing.
        UniqueConstraint("message_id"),
        Index(
            "ix_unrouted_inbound_blob_id",
            "blob_id",
            postgresql_where=text("blob_id IS NOT NULL"),
            sqlite_where=text("blob_id IS NOT NULL"),
        ),
    )

    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)
    source: Mapped[str] = mapped_column(String(16))
    service_id: Mapped[int | None] = mapped_column(BigId)
    from_address: Mapped[str | None] = mapped_column(String(320))
    to_address: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(String(998))
    message_id: Mapped[str] = mapped_column(String(400))
    reason: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(String(500))  # reason `unreadable`: what failed when it was handled
    blob_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("mail_blobs.id", ondelete="SET NULL"))
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    resolution: Mapped[str | None] = mapped_column(String(16))  # assigned, discarded
    assigned_user_id: Mapped[int | None] = mapped_column(BigId)
    resolved_by: Mapped[int | None] = mapped_column(BigId)


class InboundQueueItem(IdMixin, Base):
    """Inbound mail a webhook accepted and the worker's `inbound` job has not handled yet
    (docs/conversations.md#accepted-then-processed): the raw message and what the source said about its envelope.
    Deleted once handled; `attempts` and `next_attempt_at` space out the retries of a message that failed."""

    __tablename__ = "inbound_queue"

    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(16))
    service_id: Mapped[int | None] = mapped_column(BigId)
    recipient: Mapped[str | None] = mapped_column(String(320))
    sender: Mapped[str | None] = mapped_column(String(320))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(500))
