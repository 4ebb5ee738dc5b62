"""Tracked links (SPEC §10.1): each distinct rendered URL of a task, the only places a click may redirect to."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Text
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
