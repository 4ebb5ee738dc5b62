"""users.locale: the language a user chose for the web console

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

The console speaks English and Simplified Chinese. A user's own choice is kept here (`en` or `zh_Hans`); null
means no choice yet, and the console follows the browser's Accept-Language.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("locale", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("locale")
