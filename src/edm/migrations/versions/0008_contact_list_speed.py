"""contact_attribute_keys: the custom attribute keys in use per user, for the template editor

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

The template editor listed the keys with `SELECT DISTINCT k FROM contacts, jsonb_object_keys(custom_attributes)`
over every contact of the user on each load (330 ms at 100,000 contacts, bench/RESULTS.md (k)). The keys are now
kept in `contact_attribute_keys (user_id, key)` as contacts are written (`edm.contacts.attribute_keys`); this
migration fills it from the contacts already stored. Keys are never removed (a stale key is a harmless suggestion).

The tag-filtered contact list reads memberships through the existing `ix_contact_tags_tag_id_contact_id`; nothing
else is needed in the schema for the console's capped counts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "contact_attribute_keys",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "key"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "INSERT INTO contact_attribute_keys (user_id, key) "
            "SELECT DISTINCT c.user_id, k FROM contacts c, jsonb_object_keys(CASE WHEN "
            "jsonb_typeof(c.custom_attributes) = 'object' THEN c.custom_attributes ELSE '{}'::jsonb END) AS k "
            "WHERE length(k) <= 64"
        )
    else:
        op.execute(
            "INSERT INTO contact_attribute_keys (user_id, key) "
            "SELECT DISTINCT c.user_id, j.key FROM contacts c, json_each(c.custom_attributes) AS j "
            "WHERE json_type(c.custom_attributes) = 'object' AND length(j.key) <= 64"
        )


def downgrade() -> None:
    op.drop_table("contact_attribute_keys")
