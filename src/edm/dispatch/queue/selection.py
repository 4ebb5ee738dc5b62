"""Which SubTasks a claim takes: the candidate tasks of a service, fairness among them, the rows locked in
order, and the claim-time check that turns recipients who became unsendable since generation `suppressed`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import SQLColumnExpression, and_, exists, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import is_postgresql
from edm.dispatch.allocation import CandidateTask, plan_claim
from edm.dispatch.queue import bulk
from edm.models.contacts import Contact
from edm.models.email_services import UserServiceMapping
from edm.models.tasks import SubTask, Task
from edm.models.users import User
from edm.tasks.exclusions import Recipient, SuppressionLookup, exclusion_reason
from edm.vocabulary.tasks import SendState, TaskKind, TaskStatus

RUNNING = (TaskStatus.QUEUED, TaskStatus.SENDING)
# Claimed before bulk work and without the claim-time exclusion check: template test sends (the marketer's own
# inboxes) and conversation answers (to someone who wrote to us, or a contact checked when the answer was queued).
CLAIMED_FIRST = (TaskKind.TEST, TaskKind.REPLY)

# The claim's row conditions, written as literals rather than bound parameters: they are the predicates of the
# partial indexes `ix_subtasks_fresh` and `ix_subtasks_retry`, and the planner can use a partial index only when
# it can prove the predicate from the query. With parameters it cannot in a prepared statement's generic plan
# (asyncpg prepares every statement), and the retry probe of `candidate_tasks` became a sequential scan of the
# whole table: a claim took 143 ms at 1,000,000 SubTasks and grew with the table (bench/RESULTS.md, scale).
PENDING = SubTask.send_state == literal_column(f"'{SendState.PENDING.value}'")
FRESH = and_(PENDING, SubTask.attempts == literal_column("0"))
RETRY = and_(PENDING, SubTask.attempts > literal_column("0"))


async def candidate_tasks(session: AsyncSession, *, service_id: int, now: dt.datetime) -> list[CandidateTask]:
    """Running tasks of active owners mapped to this service that have claimable SubTasks now."""
    # Two probes, one per partial index, each stopping at its first entry.
    fresh = exists().where(SubTask.task_id == Task.id, FRESH)
    retries_due = exists().where(SubTask.task_id == Task.id, RETRY, SubTask.next_attempt_at <= now)
    rows = (
        await session.execute(
            select(
                Task.id,
                Task.user_id,
                Task.priority,
                Task.schedule_at,
                Task.last_claimed_at,
                Task.allowed_service_ids,
                Task.kind,
                retries_due.label("retries_due"),
            )
            .join(User, User.id == Task.user_id)
            .join(
                UserServiceMapping,
                and_(
                    UserServiceMapping.user_id == Task.user_id,
                    UserServiceMapping.service_id == service_id,
                    UserServiceMapping.is_active.is_(True),
                ),
            )
            .where(Task.status.in_(RUNNING), User.is_active.is_(True), or_(fresh, retries_due))
        )
    ).all()
    return [
        CandidateTask(
            r.id,
            r.user_id,
            r.priority,
            r.schedule_at,
            r.last_claimed_at,
            claimed_first=r.kind in CLAIMED_FIRST,
            retries_due=bool(r.retries_due),
        )
        for r in rows
        if not r.allowed_service_ids or service_id in r.allowed_service_ids
    ]


async def select_claimable(
    session: AsyncSession,
    *,
    service_id: int,
    user_cursor: int | None,
    now: dt.datetime,
    size: int,
) -> tuple[list[Any], int, int | None, set[int]]:
    """Pick up to `size` SubTasks in fairness order, locking them; suppress the unsendable ones found.
    Returns (rows, suppressed count, the users' new round-robin cursor, the ids of the tasks still queued).

    Test sends and conversation answers go first (claimed before bulk SubTasks of the same service), shared
    fairly among their users, and leave the users' round-robin cursor of the bulk work as it was; bulk tasks
    share what is left of the claim."""
    tasks, queued = await _lock_running(session, await candidate_tasks(session, service_id=service_id, now=now))
    first = [t for t in tasks if t.claimed_first]
    chosen, _, _ = await _fill(session, first, size=size, cursor=None, now=now, check=False)
    bulk_rows, suppressed, cursor = await _fill(
        session,
        [t for t in tasks if not t.claimed_first],
        size=size - len(chosen),
        cursor=user_cursor,
        now=now,
        check=True,
    )
    chosen.extend(bulk_rows)
    if chosen:
        await session.execute(
            update(Task)
            .where(bulk.any_of(session, Task.id, {r.task_id for r in chosen}))
            .values(last_claimed_at=now)
            .execution_options(synchronize_session=False)
        )
    return chosen, suppressed, cursor, queued


async def _fill(
    session: AsyncSession,
    tasks: list[CandidateTask],
    *,
    size: int,
    cursor: int | None,
    now: dt.datetime,
    check: bool,
) -> tuple[list[Any], int, int | None]:
    """Lock up to `size` rows of `tasks` in fairness order: (rows, suppressed count, new cursor).
    With `check`, rows the claim-time check blocks become `suppressed` instead. Test sends skip the
    check: their addresses are the marketer's own inboxes and they have no contact to check; so do
    conversation answers (docs/conversations-answers.md#what-an-answer-is)."""
    chosen: list[Any] = []
    suppressed = 0
    exhausted: set[int] = set()
    retries = {t.task_id: t.retries_due for t in tasks}
    while len(chosen) < size and len(exhausted) < len(tasks):
        plan, cursor = plan_claim(tasks, size=size - len(chosen), user_cursor=cursor, exhausted=frozenset(exhausted))
        if not plan:
            break
        for task_id, wanted in plan:
            rows = await _lock_rows(session, task_id, wanted, now, retries=retries.get(task_id, True))
            sendable, blocked = await _suppress_unsendable(session, rows, now) if check else (rows, 0)
            suppressed += blocked
            chosen.extend(sendable)
            if len(rows) < wanted:
                exhausted.add(task_id)
            # else: when rows were suppressed, the next round asks this task again
    return chosen, suppressed, cursor


async def _lock_running(session: AsyncSession, tasks: list[CandidateTask]) -> tuple[list[CandidateTask], set[int]]:
    """Lock the candidate tasks (in id order) and keep those still running; also returns the ids of those
    still queued (under the lock). A pause or cancel either committed before this lock — then the task is no
    longer running and gets nothing — or waits for this claim to commit, so no SubTask is ever allocated
    after a pause commits."""
    if not tasks:
        return tasks, set()
    rows = (
        await session.execute(
            select(Task.id, Task.status)
            .where(bulk.any_of(session, Task.id, [t.task_id for t in tasks]), Task.status.in_(RUNNING))
            .order_by(Task.id)
            .with_for_update()
        )
    ).all()
    running = {task_id for task_id, _ in rows}
    queued = {task_id for task_id, status in rows if status == TaskStatus.QUEUED}
    return [t for t in tasks if t.task_id in running], queued


async def _lock_rows(
    session: AsyncSession, task_id: int, wanted: int, now: dt.datetime, *, retries: bool = True
) -> list[Any]:
    """Due retries first (earliest next_attempt_at), then fresh rows in generation order. Without `retries`
    (the task had none due when the candidates were read) only fresh rows are read: a retry falling due in
    between waits for the next claim."""
    columns = (
        SubTask.id,
        SubTask.public_id,
        SubTask.task_id,
        SubTask.user_id,
        SubTask.contact_id,
        SubTask.recipient_email,
        SubTask.task_template_id,
        SubTask.attempts,
    )
    if not retries:
        wanted_fresh, retried = wanted, []
    else:
        retried = await _due_retries(session, columns, task_id, wanted, now)
        if len(retried) >= wanted:
            return retried
        wanted_fresh = wanted - len(retried)
    fresh = (
        await session.execute(
            select(*columns)
            .where(SubTask.task_id == task_id, FRESH)
            .order_by(SubTask.seq)
            .limit(wanted_fresh)
            .with_for_update(skip_locked=True)
        )
    ).all()
    return retried + list(fresh)


async def _due_retries(session: AsyncSession, columns: Any, task_id: int, wanted: int, now: dt.datetime) -> list[Any]:
    retries = (
        await session.execute(
            select(*columns)
            .where(
                SubTask.task_id == task_id,
                RETRY,
                SubTask.next_attempt_at <= now,
            )
            .order_by(SubTask.next_attempt_at, SubTask.id)
            .limit(wanted)
            .with_for_update(skip_locked=True)
        )
    ).all()
    return list(retries)


async def _suppress_unsendable(session: AsyncSession, rows: list[Any], now: dt.datetime) -> tuple[list[Any], int]:
    """The exclusion rule again, at claim time: a suppression, unsubscribe, bounce or complaint that came
    after generation, or a contact deactivated or deleted since, turns a pending row `suppressed` (with
    its reason) instead of sending it. Returns (the sendable rows, how many were suppressed)."""
    if not rows:
        return [], 0
    reasons = await unsendable_reasons(session, [r.id for r in rows], now=now)
    if not reasons:
        return rows, 0
    for reason in set(reasons.values()):
        ids = [i for i, r in reasons.items() if r == reason]
        await session.execute(
            update(SubTask)
            .where(SubTask.id.in_(ids), SubTask.send_state == SendState.PENDING)
            .values(send_state=SendState.SUPPRESSED, suppressed_reason=reason)
            .execution_options(synchronize_session=False)
        )
    return [r for r in rows if r.id not in reasons], len(reasons)


async def unsendable_reasons(session: AsyncSession, subtask_ids: list[int], *, now: dt.datetime) -> dict[int, str]:
    """The exclusion reason of each of these SubTasks that may not be mailed now (the others are left out).
    The address is the one the SubTask mails and its contact row may be gone. A claim checks a few hundred
    rows at most, so each row probes the suppression index (PER_ROW) instead of the lists being hashed."""
    address = SubTask.recipient_email
    recipient = Recipient(address=address, domain=_domain_of(session, address), user_id=SubTask.user_id)
    reason = exclusion_reason(recipient, now=now, lookup=SuppressionLookup.PER_ROW)
    rows = await session.execute(
        select(SubTask.id, reason)
        .outerjoin(Contact, Contact.id == SubTask.contact_id)
        .where(bulk.any_of(session, SubTask.id, subtask_ids))
    )
    return {sid: r for sid, r in rows.all() if r is not None}


def _domain_of(session: AsyncSession, address: SQLColumnExpression[str]) -> SQLColumnExpression[str]:
    """The part after the `@`, computed in SQL (SubTasks store the address only)."""
    if is_postgresql(session):
        return func.split_part(address, "@", 2)
    return func.substr(address, func.instr(address, "@") + 1)
