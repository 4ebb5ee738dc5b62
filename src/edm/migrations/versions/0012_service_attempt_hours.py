"""service attempt hours: per service, UTC hour and outcome, the send attempts and their durations

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

The service page's health history (24 hours by the hour, 7 days by six hours: attempts, accept rate, average
latency, errors by class) would otherwise aggregate a week of `send_attempts` per service on every load, and that
table has no index on (service_id, finished_at): a scan of every attempt of the deployment. On PostgreSQL the
figures are kept the way migration 0007 keeps `task_attempt_counters`: the statement-level trigger function on
`send_attempts`, `edm_attempt_delta`, now also adds (new rows − old rows) to `service_attempt_hours` under the
writing backend's stripe, in the same transaction, and the `stats` job folds the stripes. One trigger function
doing both keeps one trigger call per statement instead of two.

The hour is the one `finished_at` falls in (epoch seconds ÷ 3600); an attempt without a service (its service
deleted: the foreign key sets NULL) counts under service 0. Unlike the task counters no join is needed (the row
carries its service and time), so a deleted task's attempts subtract themselves.

SQLite has no statement-level triggers: there the same numbers are aggregated from `send_attempts` when read. The
table exists on both databases so that one schema serves both.

This file is self-contained on purpose (a migration must not change when application code does).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COLUMNS = "subtask_id, service_id, outcome, duration_ms, finished_at"

# ---- the 0007 statement, unchanged: task_attempt_counters ------------------------------------------------------

ATTEMPT_KEYS = "task_id, service_id, outcome, stripe"


def _attempt_upsert(rows_sql: str, stripe_sql: str) -> str:
    return f"""
    INSERT INTO task_attempt_counters AS c ({ATTEMPT_KEYS}, n, total_ms, timed)
    SELECT s.task_id, coalesce(a.service_id, 0), a.outcome, {stripe_sql}, sum(a.sign),
           sum(a.sign * coalesce(a.duration_ms, 0)), sum(a.sign * (a.duration_ms IS NOT NULL)::int)
    FROM ({rows_sql}) a JOIN subtasks s ON s.id = a.subtask_id
    GROUP BY 1, 2, 3
    HAVING sum(a.sign) <> 0 OR sum(a.sign * coalesce(a.duration_ms, 0)) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT ({ATTEMPT_KEYS}) DO UPDATE SET n = c.n + excluded.n, total_ms = c.total_ms + excluded.total_ms,
        timed = c.timed + excluded.timed"""


# ---- service_attempt_hours -------------------------------------------------------------------------------------

HOUR_KEYS = "service_id, hour, outcome, stripe"


def _hour_upsert(rows_sql: str, stripe_sql: str) -> str:
    """The definitions SQLite's read spells in edm.email_services.history: the hour `finished_at` falls in, the
    service (0 for none), summed durations and the number of attempts that had one."""
    return f"""
    INSERT INTO service_attempt_hours AS c ({HOUR_KEYS}, n, total_ms, timed)
    SELECT coalesce(a.service_id, 0), floor(date_part('epoch', a.finished_at) / 3600)::bigint, a.outcome,
           {stripe_sql}, sum(a.sign), sum(a.sign * coalesce(a.duration_ms, 0)),
           sum(a.sign * (a.duration_ms IS NOT NULL)::int)
    FROM ({rows_sql}) a
    GROUP BY 1, 2, 3
    HAVING sum(a.sign) <> 0 OR sum(a.sign * coalesce(a.duration_ms, 0)) <> 0
        OR sum(a.sign * (a.duration_ms IS NOT NULL)::int) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT ({HOUR_KEYS}) DO UPDATE SET n = c.n + excluded.n, total_ms = c.total_ms + excluded.total_ms,
        timed = c.timed + excluded.timed"""


# ---- the trigger function ----------------------------------------------------------------------------------------


def _signed(table: str, sign: int) -> str:
    return f"SELECT {sign} AS sign, {COLUMNS} FROM {table}"


def _rows(table: str, sign: int, minus: str | None = None) -> str:
    rows = _signed(table, sign)
    return rows if minus is None else rows + " UNION ALL " + _signed(minus, -1)


def _function(with_hours: bool) -> str:
    def statements(table: str, sign: int, minus: str | None = None) -> str:
        rows = _rows(table, sign, minus)
        sql = _attempt_upsert(rows, "pg_backend_pid()") + ";"
        return sql + ("\n    " + _hour_upsert(rows, "pg_backend_pid()") + ";" if with_hours else "")

    return f"""
CREATE OR REPLACE FUNCTION edm_attempt_delta() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {statements("new_rows", 1)}
  ELSIF TG_OP = 'UPDATE' THEN
    {statements("new_rows", 1, "old_rows")}
  ELSE
    {statements("old_rows", -1)}
  END IF;
  RETURN NULL;
END
$fn$
"""


def upgrade() -> None:
    op.create_table(
        "service_attempt_hours",
        sa.Column("service_id", BIG_ID, nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("stripe", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("total_ms", sa.BigInteger(), nullable=False),
        sa.Column("timed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("service_id", "hour", "outcome", "stripe", name="pk_service_attempt_hours"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    # Workers may be recording while the upgrade runs: SHARE mode waits for their open writes to commit and holds
    # new ones until this migration commits, so every attempt is counted once, by the backfill or the new function.
    op.execute("LOCK TABLE send_attempts IN SHARE MODE")
    op.execute(_function(with_hours=True))
    op.execute(_hour_upsert(_signed("send_attempts", 1), "0"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(with_hours=False))  # back to the 0007 function
    op.drop_table("service_attempt_hours")
