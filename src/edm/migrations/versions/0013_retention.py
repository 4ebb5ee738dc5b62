"""retention: archived link clicks, the retention job's marks, indexes for the mail-blob sweep

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08

The daily retention job (docs/operations.md#retention) deletes events and send attempts past their periods. A task's
statistics must not change when it does: what a task's reports derive from those rows is first added to counters
kept under stripe -1 of `task_quarter_counters` and `task_attempt_counters` (tables that exist already), and, for
the clicks per link, to the new `task_link_archive`.

`retention_marks` holds how far a pass that rewrites rows in place has got (the raw payloads of events), so each
run starts where the last one stopped instead of walking the rows it already cleared.

The sweep of mail blobs that no message and no unrouted mail refers to any more looks them up by `blob_id`: two
partial indexes serve it.

This file is self-contained on purpose (a migration must not change when application code does).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import edm.db.types

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "task_link_archive",
        sa.Column("link_id", BIG_ID, nullable=False),
        sa.Column("clicks_human", sa.BigInteger(), nullable=False),
        sa.Column("clicks_machine", sa.BigInteger(), nullable=False),
        sa.Column("human_clickers", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["link_id"],
            ["tracked_links.id"],
            name="fk_task_link_archive_link_id_tracked_links",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("link_id", name="pk_task_link_archive"),
    )
    op.create_table(
        "retention_marks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", edm.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_retention_marks"),
    )
    op.create_index(
        "ix_conversation_messages_blob_id",
        "conversation_messages",
        ["blob_id"],
        postgresql_where=sa.text("blob_id IS NOT NULL"),
        sqlite_where=sa.text("blob_id IS NOT NULL"),
    )
    op.create_index(
        "ix_unrouted_inbound_blob_id",
        "unrouted_inbound",
        ["blob_id"],
        postgresql_where=sa.text("blob_id IS NOT NULL"),
        sqlite_where=sa.text("blob_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_unrouted_inbound_blob_id", table_name="unrouted_inbound")
    op.drop_index("ix_conversation_messages_blob_id", table_name="conversation_messages")
    op.drop_table("retention_marks")
    op.drop_table("task_link_archive")
