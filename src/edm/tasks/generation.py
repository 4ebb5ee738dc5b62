"""Exactly-once generation of a task's SubTasks with the credit reserve (docs/tasks.md#generation).

All-or-nothing in one transaction: SubTasks (set-based INSERT … SELECT from the selection function), the
one `reserve` ledger entry and the move to `queued`. The task row is taken with FOR UPDATE SKIP LOCKED, so
a second generator skips it, and unique (task_id, contact_id) makes a duplicate impossible anyway.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from math import gcd
from typing import Any

from sqlalchemy import Integer, case, func, insert, literal, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.db.availability import sqlstate
from edm.db.types import UTCDateTime
from edm.models.content import Template
from edm.models.tasks import SubTask, Task, TaskTemplate
from edm.models.users import LedgerKind
from edm.tasks.recipients import Rule, candidates_query, estimate
from edm.tasks.transitions import transition
from edm.users.credit import apply_credit, lock_user
from edm.vocabulary.tasks import DeliveryState, PauseReason, SendState, TaskAction, TaskStatus

# A generation this large refreshes the planner's statistics of `subtasks` before it commits. Without them the
# planner takes the new task for a few rows: the claim's "fresh rows in generation order" then reads every pending
# row of the task through ix_subtasks_task_id_send_state and sorts them, instead of the first k of ix_subtasks_fresh,
# until autovacuum's analyze comes round (227 ms instead of 2 ms per claim for 200,000 rows, seconds for 10,000,000:
# bench/RESULTS.md, "Past a million").
ANALYZE_AFTER = 100_000
# ANALYZE waits for a VACUUM of the table in progress (an autovacuum normally gives way after deadlock_timeout, one
# against wraparound does not); past this the generation commits without it and autovacuum's analyze follows.
ANALYZE_LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class GenerationResult:
    task_id: int
    status: TaskStatus
    sendable: int
    summary: dict[str, Any]


async def due_task_ids(session: AsyncSession, *, now: dt.datetime, limit: int = 10) -> list[int]:
    rows = await session.scalars(
        select(Task.id)
        .where(Task.status == TaskStatus.SCHEDULED, Task.schedule_at <= now)
        .order_by(Task.schedule_at, Task.id)
        .limit(limit)
    )
    return list(rows)


async def generate(session: AsyncSession, task_id: int, *, now: dt.datetime | None = None) -> GenerationResult | None:
    """Generate one due task. Returns None when another worker holds it or it is no longer due."""
    now = now or utc_now()
    task = await session.scalar(
        select(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.SCHEDULED, Task.schedule_at <= now)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    if task is None:
        return None
    rule = Rule.parse(task.recipient_rule)
    summary = await estimate(session, user_id=task.user_id, rule=rule, now=now)
    summary["computed_at"] = now.isoformat()
    sendable = summary["sendable"]
    if sendable == 0:
        await _insert_subtasks(session, task, rule, now, templates=[])
        status = await transition(
            session,
            task.id,
            TaskAction.GENERATED_EMPTY,
            expected=TaskStatus.SCHEDULED,
            reason="no_sendable_recipients",
            values={
                "generation_summary": summary,
                "generated_at": now,
                "completed_at": now,
                "completion_note": "no_sendable_recipients",
            },
        )
        return GenerationResult(task.id, status, 0, summary)
    user = await lock_user(session, task.user_id)
    if user.credit_balance < sendable:
        detail = f"credit balance {user.credit_balance} is below the {sendable} sendable recipients"
        status = await transition(
            session,
            task.id,
            TaskAction.CREDIT_SHORT,
            expected=TaskStatus.SCHEDULED,
            reason=PauseReason.USER_QUOTA,
            detail=detail,
            values={"pause_reason": PauseReason.USER_QUOTA, "pause_detail": detail},
        )
        return GenerationResult(task.id, status, sendable, summary)
    templates = await _snapshot_templates(session, task.id, now)
    await _insert_subtasks(session, task, rule, now, templates=templates)
    if sendable >= ANALYZE_AFTER:
        await refresh_statistics(session)
    await apply_credit(
        session,
        user_id=task.user_id,
        kind=LedgerKind.RESERVE,
        amount=-sendable,
        reason=f"task {task.id}: {task.name}"[:500],
        task_id=task.id,
    )
    status = await transition(
        session,
        task.id,
        TaskAction.GENERATED,
        expected=TaskStatus.SCHEDULED,
        values={"generation_summary": summary, "generated_at": now, "threshold_window_started_at": now},
    )
    return GenerationResult(task.id, status, sendable, summary)


async def _snapshot_templates(session: AsyncSession, task_id: int, now: dt.datetime) -> list[tuple[int, int]]:
    """Freeze each task template's content; returns [(task_template_id, weight)] in position order."""
    rows = (
        await session.execute(
            select(TaskTemplate, Template)
            .join(Template, Template.id == TaskTemplate.template_id)
            .where(TaskTemplate.task_id == task_id)
            .order_by(TaskTemplate.position, TaskTemplate.id)
        )
    ).all()
    for task_template, template in rows:
        task_template.name = template.name
        task_template.subject = template.subject
        task_template.preheader = template.preheader
        task_template.html = template.html
        task_template.text = template.text
        task_template.inline_css = template.inline_css
        task_template.snapshot_at = now
    await session.flush()
    return [(tt.id, tt.weight) for tt, _ in rows]


def smooth_weighted_sequence(weights: list[int]) -> list[int]:
    """One period of smooth weighted round-robin over indexes: each index i appears weights[i]/g times."""
    g = 0
    for w in weights:
        g = gcd(g, w)
    reduced = [w // g for w in weights]
    current = [0] * len(reduced)
    total = sum(reduced)
    sequence = []
    for _ in range(total):
        for i, w in enumerate(reduced):
            current[i] += w
        best = max(range(len(reduced)), key=lambda i: (current[i], -i))
        current[best] -= total
        sequence.append(best)
    return sequence


def _template_expr(position: Any, templates: list[tuple[int, int]]) -> Any:
    if not templates:
        return literal(None, type_=Integer)
    if len(templates) == 1:
        return literal(templates[0][0])
    sequence = smooth_weighted_sequence([w for _, w in templates])
    slot = (position - 1) % len(sequence)
    return case(*[(slot == i, literal(templates[idx][0])) for i, idx in enumerate(sequence)])


def _public_id_expr(dialect: str) -> Any:
    if dialect == "postgresql":
        return func.gen_random_uuid()
    # SQLite: a random version-4 UUID as the 32 hex digits SQLAlchemy's Uuid type stores there.
    return text(
        "lower(hex(randomblob(4)) || hex(randomblob(2)) || '4' || substr(hex(randomblob(2)), 2) || "
        "substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || hex(randomblob(6)))"
    )


async def _insert_subtasks(
    session: AsyncSession, task: Task, rule: Rule, now: dt.datetime, *, templates: list[tuple[int, int]]
) -> None:
    candidates = (await candidates_query(session, user_id=task.user_id, rule=rule, now=now)).subquery()
    # A keyed hash of (task, contact) orders recipients, so template assignment and send order do not
    # follow contact creation order, yet are the same on every run for the same task.
    seed = (task.id * 7919) % 1_000_003
    keyed_hash = ((candidates.c.contact_id + seed) * 2654435761) % 4294967296
    sendable = candidates.c.reason.is_(None)
    position = func.row_number().over(order_by=(case((sendable, 0), else_=1), keyed_hash, candidates.c.contact_id))
    ordered = select(candidates.c.contact_id, candidates.c.email, candidates.c.reason, position.label("seq")).subquery()
    is_sendable = ordered.c.reason.is_(None)
    dialect = session.bind.dialect.name  # type: ignore[union-attr]
    if dialect == "postgresql":
        # The ordering sort of 1,000,000 rows is ~100 MB: in memory instead of spilling to disk (4 MB default).
        await session.execute(text("SET LOCAL work_mem = '256MB'"))
    source = select(
        _public_id_expr(dialect),
        literal(task.id),
        literal(task.user_id),
        ordered.c.contact_id,
        ordered.c.email,
        case((is_sendable, _template_expr(ordered.c.seq, templates)), else_=literal(None, type_=Integer)),
        ordered.c.seq,
        case((is_sendable, literal(SendState.PENDING.value)), else_=literal(SendState.SUPPRESSED.value)),
        ordered.c.reason,
        is_sendable,
        literal(0),
        literal(0),
        literal(DeliveryState.NONE.value),
        literal(0),
        literal(0),
        literal(0),
        literal(0),
        literal(now, type_=UTCDateTime()),
    )
    columns = [
        "public_id",
        "task_id",
        "user_id",
        "contact_id",
        "recipient_email",
        "task_template_id",
        "seq",
        "send_state",
        "suppressed_reason",
        "charged",
        "attempts",
        "retryable_failures",
        "delivery_state",
        "open_count",
        "machine_open_count",
        "click_count",
        "machine_click_count",
        "next_attempt_at",
    ]
    await session.execute(insert(SubTask).from_select(columns, source))


async def refresh_statistics(session: AsyncSession) -> bool:
    """`ANALYZE subtasks` inside the generation's transaction (it samples the rows just inserted, uncommitted, and its
    statistics become visible with the commit). PostgreSQL only. Returns False when the table's lock was not had
    within ANALYZE_LOCK_TIMEOUT (the transaction goes on without it)."""
    if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
        return False
    previous = await session.scalar(text("SELECT current_setting('lock_timeout')"))
    try:
        async with session.begin_nested():
            await session.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": ANALYZE_LOCK_TIMEOUT})
            await session.execute(text("ANALYZE subtasks"))
        analyzed = True
    except DBAPIError as exc:
        if sqlstate(exc) != "55P03":  # lock_not_available
            raise
        analyzed = False
    await session.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": previous})
    return analyzed


async def mark_pending_cancelled(session: AsyncSession, task_id: int) -> int:
    result = await session.execute(
        update(SubTask)
        .where(SubTask.task_id == task_id, SubTask.send_state == SendState.PENDING)
        .values(send_state=SendState.CANCELLED)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
