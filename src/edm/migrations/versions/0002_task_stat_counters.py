"""task statistics counters kept by a statement-level trigger on subtasks (PostgreSQL only)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Every INSERT, UPDATE and DELETE on `subtasks` adds (new rows − old rows), grouped the way `tasks.stats`
groups them, into `task_stat_counters` under the stripe of the writing backend (`pg_backend_pid()`), in
the same transaction. Two transactions never run on one backend at once, so they never wait on the same
counter row; the worker's `stats` job folds the stripes into stripe 0. SQLite has no statement-level
triggers or transition tables: there the statistics are aggregated from the rows when read.

This file is self-contained on purpose (a migration must not change when application code does).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = "task_id, stripe, send_state, tried, charged, suppressed_reason, last_error_class, delivery_state"
SUMS = (
    "n",
    "opened_human",
    "opened_total",
    "clicked_human",
    "clicked_total",
    "opens",
    "machine_opens",
    "clicks",
    "machine_clicks",
    "unsubscribed",
    "replied",
)
# The value each SubTask row contributes to each sum (the definitions of docs/statistics.md#the-numbers).
CONTRIBUTIONS = (
    "1",
    "(open_count > 0 OR click_count > 0)::int",
    "(open_count > 0 OR click_count > 0 OR machine_open_count > 0 OR machine_click_count > 0)::int",
    "(click_count > 0)::int",
    "(click_count > 0 OR machine_click_count > 0)::int",
    "open_count",
    "machine_open_count",
    "click_count",
    "machine_click_count",
    "(unsubscribed_at IS NOT NULL)::int",
    "(replied_at IS NOT NULL)::int",
)
ROW_COLUMNS = (
    "task_id, send_state, attempts, charged, suppressed_reason, last_error_class, delivery_state, "
    "open_count, click_count, machine_open_count, machine_click_count, unsubscribed_at, replied_at"
)


def _upsert(rows_sql: str, stripe_sql: str) -> str:
    """Add the grouped, signed contributions of `rows_sql` (columns ROW_COLUMNS plus `sign`) to the counters."""
    sums = ",\n           ".join(f"sum(sign * {c})" for c in CONTRIBUTIONS)
    nonzero = " OR ".join(f"sum(sign * {c}) <> 0" for c in CONTRIBUTIONS)
    updates = ", ".join(f"{s} = c.{s} + excluded.{s}" for s in SUMS)
    return f"""
    INSERT INTO task_stat_counters AS c ({KEYS}, {", ".join(SUMS)})
    SELECT task_id, {stripe_sql}, send_state, attempts > 0, charged, coalesce(suppressed_reason, ''),
           coalesce(last_error_class, ''), delivery_state,
           {sums}
    FROM ({rows_sql}) d
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    HAVING {nonzero}
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ({KEYS}) DO UPDATE SET {updates}"""


def _rows(table: str, sign: int) -> str:
    return f"SELECT {sign} AS sign, {ROW_COLUMNS} FROM {table}"


FUNCTION = f"""
CREATE FUNCTION edm_task_stat_delta() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_upsert(_rows("new_rows", 1), "pg_backend_pid()")};
  ELSIF TG_OP = 'UPDATE' THEN
    {_upsert(_rows("new_rows", 1) + " UNION ALL " + _rows("old_rows", -1), "pg_backend_pid()")};
  ELSE
    {_upsert(_rows("old_rows", -1), "pg_backend_pid()")};
  END IF;
  RETURN NULL;
END
$fn$
"""

TRIGGERS = (
    "CREATE TRIGGER subtasks_stats_insert AFTER INSERT ON subtasks REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION edm_task_stat_delta()",
    "CREATE TRIGGER subtasks_stats_update AFTER UPDATE ON subtasks "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION edm_task_stat_delta()",
    "CREATE TRIGGER subtasks_stats_delete AFTER DELETE ON subtasks REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION edm_task_stat_delta()",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for statement in TRIGGERS:
        op.execute(statement)
    # Rows that exist before the triggers (an upgrade of a live database) are counted once, in stripe 0.
    op.execute("DELETE FROM task_stat_counters")
    op.execute(_upsert(_rows("subtasks", 1), "0"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in ("subtasks_stats_insert", "subtasks_stats_update", "subtasks_stats_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON subtasks")
    op.execute("DROP FUNCTION IF EXISTS edm_task_stat_delta()")
