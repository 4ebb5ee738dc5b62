"""login_attempts.user_id: throttle failed logins per account, whichever identifier was typed

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

A user logs in with its username or its email (any case). Counting failures per typed identifier let an
attacker spread guesses over both spellings; each attempt now also records the account the identifier
resolved to, and the throttle counts failures per account as well.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("login_attempts") as batch:
        batch.add_column(sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True))
        batch.create_index("ix_login_attempts_user_id_at", ["user_id", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("login_attempts") as batch:
        batch.drop_index("ix_login_attempts_user_id_at")
        batch.drop_column("user_id")
