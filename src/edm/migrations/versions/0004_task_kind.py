"""tasks.kind: "bulk" campaigns and "test" template test sends (docs/templates.md#test-sends)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

A template test send is a task of kind "test" whose SubTasks are the 1–5 test addresses: it goes through the
same claim, rate slots, daily quota and credit as a campaign (docs/templates.md#what-differs-from-a-campaign-mail), and
is claimed first (docs/sending.md#the-claim).
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
