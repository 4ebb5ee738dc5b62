"""conversations: inbound replies, answers sent from EDM, unrouted inbound mail, raw message blobs

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

docs/conversations.md: a conversation is one thread between one of our addresses and one outside address, owned by one
user; its messages are inbound (parsed; the raw MIME kept in `mail_blobs`) or outbound (sent as the single SubTask of a
task of kind `reply`). Inbound mail is unique per (user, Message-ID). Mail that no user owns waits in
`unrouted_inbound` for an admin.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import edm.db.types

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mail_blobs",
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", edm.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_blobs")),
    )
    op.create_table(
        "conversations",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("our_address", sa.String(length=320), nullable=False),
        sa.Column("their_address", sa.String(length=320), nullable=False),
        sa.Column("their_name", sa.String(length=200), nullable=True),
        sa.Column("contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("subject", sa.String(length=998), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_message_at", edm.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("unread_count", sa.Integer(), nullable=False),
        sa.Column("last_service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("subtask_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("created_at", edm.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", edm.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_conversations_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint(
            "user_id", "our_address", "their_address", name=op.f("uq_conversations_user_id_our_address_their_address")
        ),
    )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_conversations_contact_id",
            ["contact_id"],
            unique=False,
            postgresql_where=sa.text("contact_id IS NOT NULL"),
            sqlite_where=sa.text("contact_id IS NOT NULL"),
        )
        batch_op.create_index("ix_conversations_user_id_last", ["user_id", "last_message_at"], unique=False)
        batch_op.create_index(
            "ix_conversations_user_id_status_last", ["user_id", "status", "last_message_at"], unique=False
        )

    op.create_table(
        "unrouted_inbound",
        sa.Column("received_at", edm.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("from_address", sa.String(length=320), nullable=True),
        sa.Column("to_address", sa.String(length=320), nullable=True),
        sa.Column("subject", sa.String(length=998), nullable=True),
        sa.Column("message_id", sa.String(length=400), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("blob_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("resolved_at", edm.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("assigned_user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("resolved_by", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_id"], ["mail_blobs.id"], name=op.f("fk_unrouted_inbound_blob_id_mail_blobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unrouted_inbound")),
        sa.UniqueConstraint("message_id", name=op.f("uq_unrouted_inbound_message_id")),
    )
    with op.batch_alter_table("unrouted_inbound", schema=None) as batch_op:
        batch_op.create_index(
            "ix_unrouted_inbound_open",
            ["id"],
            unique=False,
            postgresql_where=sa.text("resolved_at IS NULL"),
            sqlite_where=sa.text("resolved_at IS NULL"),
        )

    op.create_table(
        "conversation_messages",
        sa.Column("conversation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("subtask_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("message_id", sa.String(length=400), nullable=False),
        sa.Column("in_reply_to", sa.String(length=400), nullable=True),
        sa.Column("references", sa.Text(), nullable=True),
        sa.Column("from_address", sa.String(length=320), nullable=False),
        sa.Column("from_name", sa.String(length=200), nullable=True),
        sa.Column("to_address", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=998), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=True),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("is_auto_reply", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=True),
        sa.Column("service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("received_at", edm.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", edm.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("read_at", edm.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("blob_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "attachments", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("created_at", edm.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_id"],
            ["mail_blobs.id"],
            name=op.f("fk_conversation_messages_blob_id_mail_blobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_messages")),
    )
    with op.batch_alter_table("conversation_messages", schema=None) as batch_op:
        batch_op.create_index("ix_conversation_messages_conversation_id_id", ["conversation_id", "id"], unique=False)
        batch_op.create_index(
            "ix_conversation_messages_subtask_id",
            ["subtask_id"],
            unique=False,
            postgresql_where=sa.text("subtask_id IS NOT NULL"),
            sqlite_where=sa.text("subtask_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_conversation_messages_inbound",
            ["user_id", "message_id"],
            unique=True,
            postgresql_where=sa.text("direction = 'inbound'"),
            sqlite_where=sa.text("direction = 'inbound'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("conversation_messages", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_conversation_messages_inbound",
            postgresql_where=sa.text("direction = 'inbound'"),
            sqlite_where=sa.text("direction = 'inbound'"),
        )
        batch_op.drop_index(
            "ix_conversation_messages_subtask_id",
            postgresql_where=sa.text("subtask_id IS NOT NULL"),
            sqlite_where=sa.text("subtask_id IS NOT NULL"),
        )
        batch_op.drop_index("ix_conversation_messages_conversation_id_id")

    op.drop_table("conversation_messages")
    with op.batch_alter_table("unrouted_inbound", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_unrouted_inbound_open",
            postgresql_where=sa.text("resolved_at IS NULL"),
            sqlite_where=sa.text("resolved_at IS NULL"),
        )

    op.drop_table("unrouted_inbound")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_user_id_status_last")
        batch_op.drop_index("ix_conversations_user_id_last")
        batch_op.drop_index(
            "ix_conversations_contact_id",
            postgresql_where=sa.text("contact_id IS NOT NULL"),
            sqlite_where=sa.text("contact_id IS NOT NULL"),
        )

    op.drop_table("conversations")
    op.drop_table("mail_blobs")
