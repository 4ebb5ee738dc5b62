"""tasks.kind: "bulk" campaigns and "test" template test sends (SPEC §14.5)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

A template test send is a task of kind "test" whose SubTasks are the 1–5 test addresses: it goes through the
same claim, rate slots, daily quota and credit as a campaign (§8.2), and is claimed first (§7.2).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("kind", sa.String(length=8), server_default="bulk", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("kind")
