"""contacts fillfactor 90: room on each page for a send's in-place update

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Every accepted send writes the contact's `last_sent_at`, and every open, click or reply one of its other
`last_*_at` columns. None of those columns is indexed, so PostgreSQL can update the row in place on its own page
(a HOT update) and leave the contacts' eight indexes alone, but only if the page has room for the new version.
At the default fillfactor (100) the pages are full and every such update wrote a new entry into each index:
recording a batch of sends at 10,000,000 contacts was dozens of times slower than at 1,000,000
(bench/RESULTS.md, "Past a million"). Leaving a tenth of each page free keeps those updates in place.

The setting applies to pages written from now on (new and re-packed ones); an operator with a large existing
table can re-pack it in a quiet hour with `VACUUM FULL contacts` (docs/deploy.md#past-a-million-rows). SQLite has
no such setting: nothing to do there.

This file is self-contained on purpose (a migration must not change when application code does).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE contacts SET (fillfactor = 90)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE contacts RESET (fillfactor)")
