"""Every table of EDM, one module per domain. Importing the package loads them all, so `metadata` is complete
(Alembic, tests, create_all). Models hold columns, constraints and indexes only: the rules live in the
domain packages above, and everything that touches the database imports its tables from here."""

from edm.db.base import Base
from edm.models import (
    contacts,
    content,
    conversations,
    email_services,
    events,
    suppressions,
    system,
    tasks,
    tracking,
    users,
)

__all__ = [
    "contacts",
    "content",
    "conversations",
    "email_services",
    "events",
    "suppressions",
    "system",
    "tasks",
    "tracking",
    "users",
]

metadata = Base.metadata
