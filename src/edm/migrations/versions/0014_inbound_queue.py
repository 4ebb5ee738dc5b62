"""inbound queue: inbound mail accepted by a webhook, waiting for the worker's `inbound` job

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Receiving a reply used to parse, classify, thread and store it inside the provider's request: about 12 ms of the
server's CPU per 20 KB message, so one `edm serve` took fewer than 100 replies a second and a provider's burst
queued up in front of the tracking and API requests. Now the request verifies the sender, checks the size and
stores the raw message here (one INSERT, in the transaction that also claims a single-use token), answers, and the
worker's `inbound` job does the rest in batches (docs/conversations.md#accepted-then-processed). A row is deleted
when its message has been handled; a message that fails to be handled is tried again later (`next_attempt_at`)
and, after a few attempts, kept for the admins as unrouted mail (reason `unreadable`, with the error in the new
`unrouted_inbound.error`), so nothing is lost.

This file is self-contained on purpose (a migration must not change when application code does).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inbound_queue",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("service_id", BIG_ID, nullable=True),
        sa.Column("recipient", sa.String(320), nullable=True),
        sa.Column("sender", sa.String(320), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
    )
    op.add_column("unrouted_inbound", sa.Column("error", sa.String(500), nullable=True))


def downgrade() -> None:
    op.drop_column("unrouted_inbound", "error")
    op.drop_table("inbound_queue")
