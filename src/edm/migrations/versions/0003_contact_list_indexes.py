"""indexes for the contact list at 1,000,000 contacts: sorts, text search, attribute filters

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Both databases: (user_id, created_at, id) and (user_id, updated_at, id), the keyset orders of the
`created` and `updated` sorts (without them PostgreSQL sorted all of a user's contacts for each page:
1.7 s at 1,000,000).

PostgreSQL only (listed in `edm.migrations.migrate.POSTGRESQL_ONLY_INDEXES`, so autogenerate leaves them alone):
- a trigram GIN index on the search expression of `edm.contacts.filters.search_text` (a rare term took
  2.0 s by sequential scan), when the pg_trgm extension can be created; without it search still works;
- a `jsonb_path_ops` GIN index on custom_attributes, which serves the `@>` attribute filters (845 ms);
- (user_id, coalesce(name, ''), id) for the `name` sort.

The expressions are spelled out here (a migration must not change when application code does);
tests/integration/contacts/test_list_indexes.py checks on PostgreSQL that the queries use these indexes.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

SEPARATOR = "'\x1f'"
OPTIONAL_FIELDS = (
    "name",
    "first_name",
    "last_name",
    "username",
    "phone",
    "company",
    "position",
    "tiktok_unique_id",
    "instagram_id",
    "youtube_id",
)


def search_expression() -> str:
    """lower(email || sep || email_normalized || sep || coalesce(name, '') || …), parenthesised as SQLAlchemy
    compiles it, so PostgreSQL matches the query's expression to the index."""
    expression = "email"
    for part in ["email_normalized", *(f"coalesce({field}, '')" for field in OPTIONAL_FIELDS)]:
        expression = f"({expression} || {SEPARATOR}) || {part}"
        expression = f"({expression})"
    return f"lower({expression[1:-1]})"


def upgrade() -> None:
    op.create_index("ix_contacts_user_id_created_at_id", "contacts", ["user_id", "created_at", "id"])
    op.create_index("ix_contacts_user_id_updated_at_id", "contacts", ["user_id", "updated_at", "id"])
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("CREATE INDEX ix_contacts_attributes ON contacts USING gin (custom_attributes jsonb_path_ops)")
    op.execute("CREATE INDEX ix_contacts_user_id_name_id ON contacts (user_id, (coalesce(name, '')), id)")
    if _trigram_extension(bind):
        op.execute(f"CREATE INDEX ix_contacts_search_trgm ON contacts USING gin (({search_expression()}) gin_trgm_ops)")


def _trigram_extension(bind: sa.engine.Connection) -> bool:
    """pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it. Where it is not
    installed or not allowed, the migration goes on without the trigram index."""
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        return True
    except sa.exc.DBAPIError as exc:
        log.warning(
            "pg_trgm unavailable (%s): contact search runs without its trigram index", str(exc.orig).splitlines()[0]
        )
        return False


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in ("ix_contacts_search_trgm", "ix_contacts_user_id_name_id", "ix_contacts_attributes"):
            op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_index("ix_contacts_user_id_updated_at_id", table_name="contacts")
    op.drop_index("ix_contacts_user_id_created_at_id", table_name="contacts")
