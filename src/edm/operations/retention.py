"""Retention (docs/operations.md#retention): the daily `retention` job and `edm retention run` trim every table that
grows without end.

Each target is one kind of row with its age: the admin setting that gives its period in days (0 keeps it for ever),
or a fixed period where the rows are mechanics rather than records (webhook replay tokens, login attempts, expired
sessions, orphaned blobs). Nothing younger than its period is touched: every DELETE repeats the age condition.

Deletes go in batches (`batch` rows, default 1000), each batch its own short transaction, so no lock is held for
long and the job can stop between any two batches. On PostgreSQL a batch runs only under a transaction advisory
lock: a second worker running the job at the same time finds it taken and leaves the work to the first.

The big append-only tables (events, send attempts, the status log, login attempts) are walked in primary-key
order, which is their age order, so a run reads the rows it deletes and one batch more, never the whole table. The
raw payloads of events are cleared in place; `retention_marks` remembers how far, so the next run starts there.

Events and send attempts feed a few of a task's reports. Before they go, their share is added to the task's
archived counters (edm.tasks.archive), in the same transaction, from the rows the DELETE returned: the statistics
of a task never change when retention runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, ColumnElement, delete, func, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.dialect import dialect_insert, is_postgresql
from edm.db.session import unit_of_work
from edm.models.contacts import Import, ImportChunk, ImportRowError, ImportStatus
from edm.models.conversations import ConversationMessage, MailBlob, UnroutedInbound
from edm.models.email_services import EmailServiceStatusLog
from edm.models.events import Event, WebhookNonce
from edm.models.system import AuditLog, IdempotencyRecord, Notification, RetentionMark, Worker
from edm.models.tasks import SendAttempt, Task
from edm.models.tracking import UnsubscribeTombstone
from edm.models.users import ConsoleSession, LoginAttempt
from edm.system import idempotency
from edm.system.runtime_settings import RuntimeSettings
from edm.tasks import archive, proof_sends
from edm.users.sessions import IDLE_TIMEOUT, KEEP_ATTEMPTS

BATCH = 1000
_LOCK = 0x45444D5245540001  # pg_try_advisory_xact_lock key of a retention batch ("EDMRET" + 1)
# Fixed periods: mechanics, not records.
NONCE_RETENTION = dt.timedelta(days=1)  # well past the longest signed-timestamp window (10 min)
DEAD_WORKER_RETENTION = dt.timedelta(days=7)  # a worker that stopped without unregistering (killed)
ORPHAN_BLOB_GRACE = dt.timedelta(days=1)  # a raw message that nothing refers to any more
CHUNKS_PER_BATCH = 20  # import file chunks (1 MB each) per transaction
RAW_MARK = "events.raw"
FINISHED_IMPORTS = (ImportStatus.COMPLETED, ImportStatus.FAILED, ImportStatus.CANCELLED)
Sessionmaker = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class Target:
    """One kind of row retention trims. `setting` names the admin setting of its period in days (0: kept for ever);
    otherwise `fixed` is the period. `trim(sessionmaker, cutoff, batch)` deletes and returns how many;
    `count(session, cutoff)` says how many a run would touch (`--dry-run`)."""

    name: str
    what: str
    trim: Callable[[Sessionmaker, dt.datetime, int], Awaitable[int]]
    count: Callable[[AsyncSession, dt.datetime], Awaitable[int]]
    setting: str | None = None
    fixed: dt.timedelta | None = None

    def period(self, runtime: RuntimeSettings) -> dt.timedelta | None:
        """How long the rows are kept; None when kept for ever."""
        if self.setting is None:
            return self.fixed
        days = int(getattr(runtime, self.setting.replace(".", "_", 1)))
        return dt.timedelta(days=days) if days > 0 else None

    def describe_period(self, runtime: RuntimeSettings) -> str:
        period = self.period(runtime)
        if period is None:
            return "kept for ever"
        if not period:  # gone as soon as they are over: expired, finished, their task deleted
            return "when over"
        if period < dt.timedelta(days=1):
            return f"{int(period.total_seconds() // 3600)} h"
        return f"{period.days} d"


@dataclass(frozen=True)
class Outcome:
    target: str
    what: str
    period: str  # "365 d", "24 h", "kept for ever"
    setting: str | None
    rows: int  # deleted (or, in a dry run, that would be)
    busy: bool = False  # another process held the retention lock: left to it

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "what": self.what,
            "period": self.period,
            "setting": self.setting,
            "rows": self.rows,
            "busy": self.busy,
        }


class _Busy(Exception):
    """Another process holds the retention lock."""


async def run(
    sessionmaker: Sessionmaker,
    *,
    now: dt.datetime,
    runtime: RuntimeSettings,
    dry_run: bool = False,
    batch: int = BATCH,
    only: Sequence[str] | None = None,
) -> list[Outcome]:
    """Trim every target (or the ones named in `only`) in order; with `dry_run` count instead, changing nothing."""
    outcomes = []
    for target in TARGETS:
        if only is not None and target.name not in only:
            continue
        period = target.period(runtime)
        rows, busy = 0, False
        if period is not None:
            cutoff = now - period
            if dry_run:
                async with sessionmaker() as session:
                    rows = await target.count(session, cutoff)
            else:
                try:
                    rows = await target.trim(sessionmaker, cutoff, batch)
                except _Busy as busy_now:
                    rows, busy = int(busy_now.args[0]), True
        outcomes.append(
            Outcome(target.name, target.what, target.describe_period(runtime), target.setting, rows, busy=busy)
        )
    return outcomes


# ---- batches ------------------------------------------------------------------------------------------------------


async def _take_turn(session: AsyncSession) -> bool:
    """On PostgreSQL, the retention lock for this transaction (False when another process has it). SQLite takes
    its one write lock at BEGIN anyway."""
    if not is_postgresql(session):
        return True
    return bool(await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _LOCK}))


async def _walk(
    sessionmaker: Sessionmaker,
    model: Any,
    age: Any,
    cutoff: dt.datetime,
    batch: int,
    *,
    returning: Sequence[Any] = (),
    archive_rows: Callable[[AsyncSession, Sequence[Any]], Awaitable[None]] | None = None,
) -> int:
    """Delete the rows of `model` whose `age` column is before `cutoff`, walking its id in order: a batch reads the
    next `batch` ids and deletes the old ones among them, and the walk stops at a batch without any. Ids grow with
    time in these tables, so it stops just past the last old row."""
    total, after = 0, 0
    while True:
        async with unit_of_work(sessionmaker) as session:
            if not await _take_turn(session):
                raise _Busy(total)
            rows = (
                await session.execute(select(model.id, age).where(model.id > after).order_by(model.id).limit(batch))
            ).all()
            old = [row_id for row_id, at in rows if at is not None and at < cutoff]
            if old:
                statement = delete(model.__table__).where(model.id.in_(old), age < cutoff)
                if archive_rows is not None:
                    deleted = (await session.execute(statement.returning(*returning))).all()
                    await archive_rows(session, deleted)
                    total += len(deleted)
                else:
                    total += _count(await session.execute(statement))
        if not old or len(rows) < batch:
            return total
        after = rows[-1][0]


async def _by_key(
    sessionmaker: Sessionmaker, keys: Sequence[Any], where: Sequence[ColumnElement[bool]], batch: int
) -> int:
    """Delete the rows matching `where`, `batch` at a time, by their key columns (for tables whose age does not follow
    their ids, or that have no id)."""
    table = keys[0].table
    total = 0
    while True:
        async with unit_of_work(sessionmaker) as session:
            if not await _take_turn(session):
                raise _Busy(total)
            found = (await session.execute(select(*keys).where(*where).limit(batch))).all()
            if found:
                match = (
                    keys[0].in_([row[0] for row in found])
                    if len(keys) == 1
                    else tuple_(*keys).in_([tuple(row) for row in found])
                )
                total += _count(await session.execute(delete(table).where(match, *where)))
        if len(found) < batch:
            return total


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def _how_many(session: AsyncSession, model: Any, *where: ColumnElement[bool]) -> int:
    return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# ---- the targets --------------------------------------------------------------------------------------------------


async def _trim_test_sends(sessionmaker: Sessionmaker, cutoff: dt.datetime, batch: int) -> int:
    total = 0
    per_batch = max(1, batch // proof_sends.MAX_ADDRESSES)  # a test send has at most 5 SubTasks
    while True:
        async with unit_of_work(sessionmaker) as session:
            if not await _take_turn(session):
                raise _Busy(total)
            done = await proof_sends.delete_expired(session, before=cutoff, limit=per_batch)
        total += done
        if done < per_batch:
            return total


async def _count_test_sends(session: AsyncSession, cutoff: dt.datetime) -> int:
    return await _how_many(session, Task, *proof_sends.expired(cutoff))


async def _clear_raw_payloads(sessionmaker: Sessionmaker, cutoff: dt.datetime, batch: int) -> int:
    """Replace the raw payload of events received before `cutoff` by JSON null, from the mark on, in id order; the
    mark moves to the last row cleared and stops before the first row still young."""
    total = 0
    while True:
        async with unit_of_work(sessionmaker) as session:
            if not await _take_turn(session):
                raise _Busy(total)
            after = await session.scalar(select(RetentionMark.position).where(RetentionMark.name == RAW_MARK)) or 0
            rows = (
                await session.execute(
                    select(Event.id, Event.received_at).where(Event.id > after).order_by(Event.id).limit(batch)
                )
            ).all()
            old: list[int] = []
            for row_id, received_at in rows:
                if received_at >= cutoff:
                    break
                old.append(row_id)
            if old:
                await session.execute(
                    update(Event)
                    .where(Event.id.in_(old), Event.received_at < cutoff)
                    .values(raw=JSON.NULL)
                    .execution_options(synchronize_session=False)
                )
                await _set_mark(session, RAW_MARK, old[-1])
                total += len(old)
        if len(old) < batch:
            return total


async def _set_mark(session: AsyncSession, name: str, position: int) -> None:
    statement = dialect_insert(session, RetentionMark).values(name=name, position=position, updated_at=func.now())
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[RetentionMark.name], set_={"position": position, "updated_at": func.now()}
        )
    )


async def _count_raw_payloads(session: AsyncSession, cutoff: dt.datetime) -> int:
    after = await session.scalar(select(RetentionMark.position).where(RetentionMark.name == RAW_MARK)) or 0
    return await _how_many(session, Event, Event.id > after, Event.received_at < cutoff)


def _import_errors(cutoff: dt.datetime) -> list[ColumnElement[bool]]:
    finished = select(Import.id).where(Import.finished_at < cutoff)
    return [ImportRowError.import_id.in_(finished)]


def _import_files(_cutoff: dt.datetime) -> list[ColumnElement[bool]]:
    return [ImportChunk.import_id.in_(select(Import.id).where(Import.status.in_(FINISHED_IMPORTS)))]


def _orphan_blobs(cutoff: dt.datetime) -> list[ColumnElement[bool]]:
    return [
        MailBlob.created_at < cutoff,
        ~select(ConversationMessage.id).where(ConversationMessage.blob_id == MailBlob.id).exists(),
        ~select(UnroutedInbound.id).where(UnroutedInbound.blob_id == MailBlob.id).exists(),
    ]


def _expired_sessions(now: dt.datetime) -> list[ColumnElement[bool]]:
    # The period of this target is 0: `now` is the cutoff.
    return [or_(ConsoleSession.expires_at <= now, ConsoleSession.last_seen_at <= now - IDLE_TIMEOUT)]


def _keyed(
    keys: Callable[[], Sequence[Any]],
    where: Callable[[dt.datetime], list[ColumnElement[bool]]],
    *,
    most: int | None = None,
) -> Any:
    """(trim, count) of a target deleted by key, at most `most` rows a batch when given."""

    async def trim(sessionmaker: Sessionmaker, cutoff: dt.datetime, batch: int) -> int:
        return await _by_key(sessionmaker, keys(), where(cutoff), min(batch, most or batch))

    async def count(session: AsyncSession, cutoff: dt.datetime) -> int:
        return await _how_many(session, keys()[0].table, *where(cutoff))

    return trim, count


def _walked(
    model: Any,
    age: Callable[[], Any],
    *,
    returning: Callable[[], Sequence[Any]] = tuple,
    archive_rows: Callable[[AsyncSession, Sequence[Any]], Awaitable[None]] | None = None,
) -> Any:
    """(trim, count) of a target walked in id order; `archive_rows` gets the deleted rows' `returning` columns."""

    async def trim(sessionmaker: Sessionmaker, cutoff: dt.datetime, batch: int) -> int:
        return await _walk(sessionmaker, model, age(), cutoff, batch, returning=returning(), archive_rows=archive_rows)

    async def count(session: AsyncSession, cutoff: dt.datetime) -> int:
        return await _how_many(session, model, age() < cutoff)

    return trim, count


async def _trim_archive(sessionmaker: Sessionmaker, _cutoff: dt.datetime, batch: int) -> int:
    total = 0
    while True:
        async with unit_of_work(sessionmaker) as session:
            if not await _take_turn(session):
                raise _Busy(total)
            done = await archive.forget_deleted_tasks(session, limit=batch)
        total += done
        if not done:
            return total


async def _count_archive(session: AsyncSession, _cutoff: dt.datetime) -> int:
    return await archive.count_deleted_tasks(session)


def _target(
    name: str, what: str, pair: Any, *, setting: str | None = None, fixed: dt.timedelta | None = None
) -> Target:
    trim, count = pair
    return Target(name, what, trim, count, setting=setting, fixed=fixed)


# In order: test sends first (their events and attempts go with them, nothing to archive), raw payloads before the
# events that carry them, unrouted mail before the sweep of the blobs it leaves.
TARGETS: tuple[Target, ...] = (
    Target(
        "test_sends",
        "finished template test sends, with their SubTasks, attempts and events",
        _trim_test_sends,
        _count_test_sends,
        setting="retention.test_sends_days",
    ),
    Target(
        "raw_payloads",
        "raw payloads of events (the normalized event stays)",
        _clear_raw_payloads,
        _count_raw_payloads,
        setting="retention.raw_payload_days",
    ),
    _target(
        "events",
        "events: provider events, tracking hits, reports (task figures archived first)",
        _walked(
            Event,
            lambda: Event.received_at,
            returning=lambda: archive.EVENT_COLUMNS,
            archive_rows=archive.archive_events,
        ),
        setting="retention.events_days",
    ),
    _target(
        "send_attempts",
        "send attempts (task figures archived first)",
        _walked(
            SendAttempt,
            lambda: SendAttempt.finished_at,
            returning=lambda: (
                SendAttempt.subtask_id,
                SendAttempt.service_id,
                SendAttempt.outcome,
                SendAttempt.duration_ms,
            ),
            archive_rows=archive.archive_attempts,
        ),
        setting="retention.send_attempts_days",
    ),
    _target(
        "import_errors",
        "row errors of finished imports",
        _keyed(lambda: [ImportRowError.id], _import_errors),
        setting="retention.import_errors_days",
    ),
    _target(
        "import_files",
        "uploaded files of finished imports",
        _keyed(lambda: [ImportChunk.import_id, ImportChunk.seq], _import_files, most=CHUNKS_PER_BATCH),
        fixed=dt.timedelta(0),
    ),
    _target(
        "audit_log",
        "audit log entries",
        _keyed(lambda: [AuditLog.id], lambda cutoff: [AuditLog.at < cutoff]),
        setting="retention.audit_log_days",
    ),
    _target(
        "notifications",
        "admins' notifications (alerts), read or not",
        _walked(Notification, lambda: Notification.created_at),
        setting="retention.notifications_days",
    ),
    _target(
        "status_log",
        "services' status log",
        _walked(EmailServiceStatusLog, lambda: EmailServiceStatusLog.at),
        setting="retention.status_log_days",
    ),
    _target(
        "unrouted_inbound",
        "unrouted mail after it was assigned or discarded",
        _keyed(lambda: [UnroutedInbound.id], lambda cutoff: [UnroutedInbound.resolved_at < cutoff]),
        setting="retention.unrouted_days",
    ),
    _target(
        "mail_blobs",
        "raw inbound messages nothing refers to any more (their conversation or user deleted)",
        _keyed(lambda: [MailBlob.id], _orphan_blobs),
        fixed=ORPHAN_BLOB_GRACE,
    ),
    _target(
        "sessions",
        "console sessions past their expiry",
        _keyed(lambda: [ConsoleSession.id], _expired_sessions),
        fixed=dt.timedelta(0),
    ),
    _target(
        "login_attempts",
        "login attempts (the login throttle looks back a day)",
        _walked(LoginAttempt, lambda: LoginAttempt.at),
        fixed=KEEP_ATTEMPTS,
    ),
    _target(
        "webhook_nonces",
        "webhook replay tokens",
        _keyed(lambda: [WebhookNonce.source, WebhookNonce.nonce], lambda cutoff: [WebhookNonce.seen_at < cutoff]),
        fixed=NONCE_RETENTION,
    ),
    _target(
        "idempotency_keys",
        "Idempotency-Key answers (never replayed after 24 h)",
        _keyed(lambda: [IdempotencyRecord.id], lambda cutoff: [IdempotencyRecord.created_at < cutoff]),
        fixed=idempotency.RETENTION,
    ),
    _target(
        "unsubscribe_tombstones",
        "unsubscribe links of deleted tasks past their 365 days",
        _keyed(
            lambda: [UnsubscribeTombstone.subtask_public_id],
            lambda now: [UnsubscribeTombstone.expires_at <= now],
        ),
        fixed=dt.timedelta(0),
    ),
    _target(
        "workers",
        "workers that stopped without signing off",
        _keyed(lambda: [Worker.id], lambda cutoff: [Worker.last_heartbeat_at < cutoff]),
        fixed=DEAD_WORKER_RETENTION,
    ),
    Target(
        "archived_figures",
        "archived task figures of deleted tasks",
        _trim_archive,
        _count_archive,
        fixed=dt.timedelta(0),
    ),
)
TARGET_NAMES = tuple(t.name for t in TARGETS)
