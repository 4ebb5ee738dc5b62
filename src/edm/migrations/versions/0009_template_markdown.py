"""templates.markdown and templates.editor: the template editor's Markdown source and remembered mode

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

A template written in Markdown keeps its source in `markdown` (its `html` is the conversion, which every render
uses), and `editor` is the mode the console's editor opens it in: `html` (every existing template), `rich` or
`markdown` (docs/templates.md#editor-modes).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("templates") as batch:
        batch.add_column(sa.Column("markdown", sa.Text(), nullable=True))
        batch.add_column(sa.Column("editor", sa.String(length=16), server_default="html", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("templates") as batch:
        batch.drop_column("editor")
        batch.drop_column("markdown")
