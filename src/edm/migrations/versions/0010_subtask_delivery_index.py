"""subtasks: a partial index of rows with a delivery state, for the recipient lists filtered by it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

"Who bounced", "who complained", "whose delivery is delayed": the task's recipient list filtered by a display status
that rests on the delivery state. Without an index the list and its count read every SubTask of the task (0.3 s per
page at 1,000,000 recipients). Only rows that have a delivery state enter the index, so generating a task (every row
`none`) does not maintain it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_subtasks_task_id_delivery_state",
        "subtasks",
        ["task_id", "delivery_state"],
        postgresql_where=sa.text("delivery_state <> 'none'"),
        sqlite_where=sa.text("delivery_state <> 'none'"),
    )


def downgrade() -> None:
    op.drop_index("ix_subtasks_task_id_delivery_state", table_name="subtasks")
