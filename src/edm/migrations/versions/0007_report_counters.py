"""report counters: per-template and per-service task statistics, per-quarter-hour facts, attempts per service

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

The task page and the dashboard read breakdowns that used to be aggregated from every SubTask of a task on each
load (a Parallel Seq Scan per breakdown: seconds at 1,000,000 recipients). On PostgreSQL they are now kept the
way migration 0002 keeps the task statistics: statement-level triggers add (new rows − old rows) under the
writing backend's stripe, in the same transaction, and the `stats` job folds the stripes.

- `task_stat_counters` gains two group keys, `task_template_id` and `service_id` (0 for none), so the per-template
  (A/B) and per-service figures are sums of a few counter rows. The trigger function is replaced and the counters
  recounted from the rows.
- `task_quarter_counters`: per task, fact and UTC quarter hour (epoch seconds ÷ 900) the number of SubTasks whose
  fact happened in that quarter (sent, delivered, first human open, first human click, hard bounce, complaint,
  unsubscribe, reply, refused at send time), and from `events` every human open and click hit.
- `task_attempt_counters`: per task, service and outcome, the send attempts and their summed duration.

SQLite has no statement-level triggers: there the same numbers are aggregated from the rows when read. The
tables exist on both databases so that one schema serves both.

This file is self-contained on purpose (a migration must not change when application code does).
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# ---- task_stat_counters: the 0002 definitions with two more group keys ----------------------------------------

STAT_KEYS = (
    "task_id, stripe, task_template_id, service_id, send_state, tried, charged, suppressed_reason, "
    "last_error_class, delivery_state"
)
STAT_SUMS = (
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
STAT_CONTRIBUTIONS = (
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
SUBTASK_COLUMNS = (
    "task_id, task_template_id, service_id, send_state, attempts, charged, suppressed_reason, last_error_class, "
    "delivery_state, open_count, click_count, machine_open_count, machine_click_count, sent_at, delivered_at, "
    "first_opened_at, first_clicked_at, bounced_at, complained_at, unsubscribed_at, replied_at, failed_at"
)


def _stat_upsert(rows_sql: str, stripe_sql: str, *, by_template_and_service: bool = True) -> str:
    keys, extra = STAT_KEYS, "coalesce(task_template_id, 0), coalesce(service_id, 0), "
    if not by_template_and_service:  # the 0002 shape, for the downgrade
        keys, extra = keys.replace("task_template_id, service_id, ", ""), ""
    groups = ", ".join(str(i) for i in range(1, len(keys.split(",")) + 1))
    sums = ",\n           ".join(f"sum(sign * {c})" for c in STAT_CONTRIBUTIONS)
    nonzero = " OR ".join(f"sum(sign * {c}) <> 0" for c in STAT_CONTRIBUTIONS)
    updates = ", ".join(f"{s} = c.{s} + excluded.{s}" for s in STAT_SUMS)
    return f"""
    INSERT INTO task_stat_counters AS c ({keys}, {", ".join(STAT_SUMS)})
    SELECT task_id, {stripe_sql}, {extra}send_state, attempts > 0,
           charged, coalesce(suppressed_reason, ''), coalesce(last_error_class, ''), delivery_state,
           {sums}
    FROM ({rows_sql}) d
    GROUP BY {groups}
    HAVING {nonzero}
    ORDER BY {groups}
    ON CONFLICT ({keys}) DO UPDATE SET {updates}"""


# ---- task_quarter_counters -------------------------------------------------------------------------------------


def _quarter(column: str) -> str:
    return f"floor(date_part('epoch', {column}) / 900)::bigint"


# (fact, the time it happened or NULL): the definitions of docs/statistics.md#breakdowns-and-timelines.
SUBTASK_FACTS = (
    ("sent", "sent_at"),
    ("delivered", "delivered_at"),
    (
        "opened",
        "CASE WHEN first_opened_at IS NULL THEN first_clicked_at WHEN first_clicked_at IS NULL THEN first_opened_at "
        "WHEN first_clicked_at < first_opened_at THEN first_clicked_at ELSE first_opened_at END",
    ),
    ("clicked", "first_clicked_at"),
    ("hard_bounced", "bounced_at"),
    ("complained", "complained_at"),
    ("unsubscribed", "unsubscribed_at"),
    ("replied", "replied_at"),
    (
        "refused",
        "CASE WHEN send_state = 'failed' AND delivery_state IN ('soft_bounced', 'hard_bounced', 'rejected') "
        "THEN failed_at END",
    ),
)
# A row with none of these times set contributes nothing: skipped before it is unpivoted (most inserts).
ANY_FACT_TIME = (
    "coalesce(sent_at, delivered_at, first_opened_at, first_clicked_at, bounced_at, complained_at, "
    "unsubscribed_at, replied_at, failed_at) IS NOT NULL"
)


def _quarter_upsert(select_sql: str) -> str:
    """`select_sql` yields (task_id, fact, quarter, stripe, n) grouped; adds it to the counters."""
    return f"""
    INSERT INTO task_quarter_counters AS c (task_id, fact, quarter, stripe, n)
    {select_sql}
    ON CONFLICT (task_id, fact, quarter, stripe) DO UPDATE SET n = c.n + excluded.n"""


def _subtask_quarters(rows_sql: str, stripe_sql: str) -> str:
    values = ", ".join(f"('{fact}', {_quarter(f'({expression})')})" for fact, expression in SUBTASK_FACTS)
    return _quarter_upsert(f"""
    SELECT d.task_id, f.fact, f.quarter, {stripe_sql}, sum(d.sign)
    FROM ({rows_sql}) d CROSS JOIN LATERAL (VALUES {values}) AS f(fact, quarter)
    WHERE f.quarter IS NOT NULL
    GROUP BY 1, 2, 3
    HAVING sum(d.sign) <> 0
    ORDER BY 1, 2, 3""")


# A matched human open or click (an event without the `machine` flag is a person's).
HUMAN_HIT = (
    "task_id IS NOT NULL AND match_status = 'matched' AND event_type IN ('opened', 'clicked') "
    "AND coalesce(details ->> 'machine', '') <> 'true'"
)


def _event_quarters(rows_sql: str, stripe_sql: str) -> str:
    return _quarter_upsert(f"""
    SELECT task_id, CASE event_type WHEN 'opened' THEN 'open_hits' ELSE 'click_hits' END, {_quarter("occurred_at")},
           {stripe_sql}, sum(sign)
    FROM ({rows_sql}) d
    GROUP BY 1, 2, 3
    HAVING sum(sign) <> 0
    ORDER BY 1, 2, 3""")


# ---- task_attempt_counters -------------------------------------------------------------------------------------

ATTEMPT_KEYS = "task_id, service_id, outcome, stripe"


def _attempt_upsert(rows_sql: str, stripe_sql: str) -> str:
    """The attempt's task is its SubTask's. (An attempt deleted by a task's deletion no longer finds its SubTask:
    the counters of a deleted task are dropped by the `stats` job instead.)"""
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


# ---- trigger functions -----------------------------------------------------------------------------------------


def _signed(table: str, sign: int, columns: str, where: str = "") -> str:
    return f"SELECT {sign} AS sign, {columns} FROM {table}" + (f" WHERE {where}" if where else "")


def _function(name: str, statements: Callable[..., str]) -> str:
    """A statement-level trigger function running `statements(table, sign, minus)` over the transition tables."""
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
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


def _rows(columns: str, where: str, table: str, sign: int, minus: str | None = None) -> str:
    rows = _signed(table, sign, columns, where)
    return rows if minus is None else rows + " UNION ALL " + _signed(minus, -1, columns, where)


def _subtask_statements(table: str, sign: int, minus: str | None = None) -> str:
    stripe = "pg_backend_pid()"
    return (
        _stat_upsert(_rows(SUBTASK_COLUMNS, "", table, sign, minus), stripe)
        + ";\n    "
        + _subtask_quarters(_rows(SUBTASK_COLUMNS, ANY_FACT_TIME, table, sign, minus), stripe)
        + ";"
    )


def _event_statements(table: str, sign: int, minus: str | None = None) -> str:
    columns = "task_id, event_type, occurred_at"
    return _event_quarters(_rows(columns, HUMAN_HIT, table, sign, minus), "pg_backend_pid()") + ";"


def _attempt_statements(table: str, sign: int, minus: str | None = None) -> str:
    columns = "subtask_id, service_id, outcome, duration_ms"
    return _attempt_upsert(_rows(columns, "", table, sign, minus), "pg_backend_pid()") + ";"


def _triggers(table: str, function: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_{function}_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_{function}_update AFTER UPDATE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_{function}_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


def _create_tables() -> None:
    op.create_table(
        "task_quarter_counters",
        sa.Column("task_id", BIG_ID, nullable=False),
        sa.Column("fact", sa.String(length=16), nullable=False),
        sa.Column("quarter", sa.BigInteger(), nullable=False),
        sa.Column("stripe", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "fact", "quarter", "stripe", name="pk_task_quarter_counters"),
    )
    op.create_table(
        "task_attempt_counters",
        sa.Column("task_id", BIG_ID, nullable=False),
        sa.Column("service_id", BIG_ID, nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("stripe", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("total_ms", sa.BigInteger(), nullable=False),
        sa.Column("timed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "service_id", "outcome", "stripe", name="pk_task_attempt_counters"),
    )
    with op.batch_alter_table("task_stat_counters") as batch:
        batch.drop_constraint("pk_task_stat_counters", type_="primary")
        batch.add_column(sa.Column("task_template_id", BIG_ID, nullable=False, server_default="0"))
        batch.add_column(sa.Column("service_id", BIG_ID, nullable=False, server_default="0"))
        batch.create_primary_key("pk_task_stat_counters", [k.strip() for k in STAT_KEYS.split(",")])


def upgrade() -> None:
    _create_tables()
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_function("edm_task_stat_delta", _subtask_statements))
    op.execute(_function("edm_event_hit_delta", _event_statements))
    op.execute(_function("edm_attempt_delta", _attempt_statements))
    for statement in _triggers("events", "edm_event_hit_delta") + _triggers("send_attempts", "edm_attempt_delta"):
        op.execute(statement)
    # Rows that exist before the triggers (an upgrade of a live database) are counted once, in stripe 0.
    op.execute("DELETE FROM task_stat_counters")
    op.execute(_stat_upsert(_signed("subtasks", 1, SUBTASK_COLUMNS), "0"))
    op.execute(_subtask_quarters(_signed("subtasks", 1, SUBTASK_COLUMNS, ANY_FACT_TIME), "0"))
    op.execute(_event_quarters(_signed("events", 1, "task_id, event_type, occurred_at", HUMAN_HIT), "0"))
    op.execute(_attempt_upsert(_signed("send_attempts", 1, "subtask_id, service_id, outcome, duration_ms"), "0"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, function in (("events", "edm_event_hit_delta"), ("send_attempts", "edm_attempt_delta")):
            for op_name in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_{function}_{op_name} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_table("task_attempt_counters")
    op.drop_table("task_quarter_counters")
    op.execute("DELETE FROM task_stat_counters")
    with op.batch_alter_table("task_stat_counters") as batch:
        batch.drop_constraint("pk_task_stat_counters", type_="primary")
        batch.drop_column("service_id")
        batch.drop_column("task_template_id")
        batch.create_primary_key(
            "pk_task_stat_counters",
            ["task_id", "stripe", "send_state", "tried", "charged", "suppressed_reason", "last_error_class"]
            + ["delivery_state"],
        )
    if op.get_bind().dialect.name == "postgresql":  # back to the 0002 function, and recount
        op.execute(
            _function(
                "edm_task_stat_delta",
                lambda table, sign, minus=None: (
                    _stat_upsert(
                        _rows(SUBTASK_COLUMNS, "", table, sign, minus),
                        "pg_backend_pid()",
                        by_template_and_service=False,
                    )
                    + ";"
                ),
            )
        )
        op.execute(_stat_upsert(_signed("subtasks", 1, SUBTASK_COLUMNS), "0", by_template_and_service=False))
