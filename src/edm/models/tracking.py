"""Tracked links (docs/tracking.md#rewriting), each distinct rendered URL of a task, the only places a click may
redirect to; and unsubscribe tombstones (docs/tracking.md#after-a-task-is-deleted), which keep the links of deleted
tasks working."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from edm.clock import utc_now
from edm.db.base import Base, BigId
from edm.db.types import UTCDateTime


class TrackedLink(Base):
    """`id` is derived from (task, URL) — see `tracking.links.link_id` — so rendering can put it in the click
    token without a database round trip; the row is written before the mail is sent."""

    __tablename__ = "tracked_links"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now)


class UnsubscribeTombstone(Base):
    """Written for every sent SubTask when its task is deleted: the unsubscribe token names a SubTask id, and
    mail already delivered must keep unsubscribing (RFC 8058, docs/tracking.md#after-a-task-is-deleted) for `expires_at`
    (365 days)."""

    __tablename__ = "unsubscribe_tombstones"

    subtask_public_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(BigId)
    recipient_email: Mapped[str] = mapped_column(String(320))
    task_name: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


class TaskLinkArchive(Base):
    """What the retention job took away from a link's click report (docs/operations.md#retention): the clicks of the
    `clicked` events it deleted, and the human clickers none of whose clicks on the link remain. The report adds
    these to what the remaining events say, so a task's figures do not change when its old events go."""

    __tablename__ = "task_link_archive"

    link_id: Mapped[int] = mapped_column(BigId, ForeignKey("tracked_links.id", ondelete="CASCADE"), primary_key=True)
    clicks_human: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks_machine: Mapped[int] = mapped_column(BigInteger, default=0)
    human_clickers: Mapped[int] = mapped_column(BigInteger, default=0)
