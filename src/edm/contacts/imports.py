"""Background contact imports (docs/import.md): create, list, cancel, and the worker side (claim, run).

An import is created with its file stored in `import_chunks` (~1 MB each, streamed in), so any worker on any
host can process it. The `imports` job fails imports whose heartbeat stopped, claims a queued one with a
compare-and-set on its status (SKIP LOCKED on PostgreSQL), copies the chunks to a local temporary file and
runs the importer with one transaction per batch: each batch commits its contacts, its row errors (at most
MAX_STORED_ERRORS kept; the count continues) and the progress counters together, so a crash loses nothing
that was counted. A batch only commits while the import is still `running` (a compare-and-set in the same
transaction), which is how a cancel takes effect between batches. The import's heartbeat is refreshed by
every batch and, in between, every HEARTBEAT_EVERY seconds while its worker is alive; the file is read in a
thread (see `importer`), so neither this nor the worker's other jobs wait for a long read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import csvfmt, telemetry
from edm.clock import utc_now
from edm.contacts.common import require_own
from edm.contacts.importer import ImportOptions, ImportReport, Preview, import_file, preview_table, read_columns
from edm.contacts.schemas import ImportOut
from edm.contacts.sheets import detect_format
from edm.db.dialect import dialect_name
from edm.db.session import after_commit, end_transaction, unit_of_work
from edm.errors import EdmError, InvalidTransition, NotFound
from edm.models.contacts import Import, ImportChunk, ImportRowError, ImportStatus, Tag
from edm.models.system import Notification
from edm.paging import Page, PageOut, page_of

log = logging.getLogger("edm.imports")

CHUNK_BYTES = 1024 * 1024
BATCH_SIZE = 5000  # rows per transaction (docs/import.md#what-happens-in-the-background)
# PostgreSQL: statistics of `contacts` are refreshed when an import has written this many rows, then 5× more
# each time. Without it a fresh account's big import ran its per-batch "which of these exist" lookup with the
# stats of an empty table: a generic plan scanning every row of the user with a 5,000-element un-hashed IN
# filter, 160 s per batch at 385,000 rows (the bench's 1,000,000-row import stalled). After ANALYZE the
# lookup uses the (user_id, email_normalized) unique index.
ANALYZE_FIRST = 20_000
STALE_AFTER = dt.timedelta(minutes=2)  # a running import without a heartbeat this long is taken as crashed
# While an import runs its heartbeat is refreshed this often (seconds), besides every batch: reading a long
# stretch of a workbook without rows, or a slow batch, must not get a live import taken for a crashed one.
HEARTBEAT_EVERY = 30.0
FINISHED = (ImportStatus.COMPLETED, ImportStatus.FAILED, ImportStatus.CANCELLED)
OnProgress = Callable[[Import], Awaitable[None]]


class TooLarge(EdmError):
    status, code = 413, "too_large"


# --------------------------------------------------------------------------------------------------------
# Create, read, cancel
# --------------------------------------------------------------------------------------------------------


async def create_import(
    session: AsyncSession,
    *,
    user_id: int,
    filename: str,
    stream: BinaryIO,
    options: ImportOptions,
    max_bytes: int,
) -> Import:
    """Check the options and the header row (BadInput at once, nothing stored), then store the file in chunks
    and queue the import. The stream must be seekable (an upload's spooled file, an open local file)."""
    start = stream.tell()
    file_format = detect_format(filename, stream.read(8))
    stream.seek(start)
    await require_own(session, Tag, user_id=user_id, ids=options.tag_ids, field="tag_ids")
    # reading up to the header row unzips and parses a workbook: CPU work kept off the event loop
    await asyncio.to_thread(read_columns, stream, format=file_format, options=options)
    stream.seek(start)
    row = Import(
        user_id=user_id,
        kind="contacts",
        filename=(filename or "upload")[-255:],
        format=file_format,
        options=options.to_dict(),
        status=ImportStatus.QUEUED,
    )
    session.add(row)
    await session.flush()
    row.size_bytes = await _store_chunks(session, row.id, stream, max_bytes)
    await session.flush()
    return row


async def preview_import(filename: str, stream: BinaryIO, *, options: ImportOptions, rows: int = 20) -> Preview:
    """The first `rows` rows of an upload and the column plan an import with `options` would use (nothing
    stored); BadInput for an unreadable file. Parsing a workbook is CPU work: it runs off the event loop."""
    return await asyncio.to_thread(preview_table, stream, filename=filename, options=options, rows=rows)


async def _store_chunks(session: AsyncSession, import_id: int, stream: BinaryIO, max_bytes: int) -> int:
    size, seq = 0, 0
    while data := stream.read(CHUNK_BYTES):
        size += len(data)
        if size > max_bytes:
            raise TooLarge(f"the file is larger than {max_bytes} bytes")
        # a Core insert, not an ORM object: the session keeps no reference, so one chunk is in memory at a time
        await session.execute(insert(ImportChunk).values(import_id=import_id, seq=seq, data=data))
        seq += 1
    return size


async def get_import(session: AsyncSession, *, user_id: int, import_id: int) -> Import:
    row = await session.get(Import, import_id, populate_existing=True)
    if row is None or row.user_id != user_id or row.kind != "contacts":
        raise NotFound(f"import {import_id} not found")
    return row


async def list_imports(session: AsyncSession, *, user_id: int, page: Page) -> list[Import]:
    """Newest first would need a descending cursor; like every list here, ids ascend (limit + 1 fetched)."""
    query = (
        select(Import)
        .where(Import.user_id == user_id, Import.kind == "contacts", Import.id > (page.after_id or 0))
        .order_by(Import.id)
        .limit(page.limit + 1)
    )
    return list(await session.scalars(query))


async def import_page(session: AsyncSession, *, user_id: int, page: Page) -> PageOut[ImportOut]:
    return PageOut[ImportOut].model_validate(
        page_of(await list_imports(session, user_id=user_id, page=page), page), from_attributes=True
    )


async def cancel_import(session: AsyncSession, *, user_id: int, import_id: int) -> Import:
    """queued or running -> cancelled. Rows already committed stay; a running batch is rolled back by its
    worker, which sees the status change before it commits."""
    row = await get_import(session, user_id=user_id, import_id=import_id)
    now = utc_now()
    changed = await _set_status(
        session,
        import_id,
        (ImportStatus.QUEUED, ImportStatus.RUNNING),
        status=ImportStatus.CANCELLED,
        finished_at=now,
        message="cancelled by the user",
    )
    if not changed:
        await session.refresh(row)
        raise InvalidTransition(
            f"cannot cancel an import that is {row.status}", current_status=row.status, allowed_actions=[]
        )
    await session.refresh(row)
    await _finished(session, row)
    return row


async def error_rows(session: AsyncSession, *, import_id: int, batch: int = 1000) -> AsyncIterator[ImportRowError]:
    """The stored row errors by row number, fetched a page at a time."""
    after = (-1, 0)
    while True:
        rows = list(
            await session.scalars(
                select(ImportRowError)
                .where(
                    ImportRowError.import_id == import_id,
                    (ImportRowError.row_number > after[0])
                    | ((ImportRowError.row_number == after[0]) & (ImportRowError.id > after[1])),
                )
                .order_by(ImportRowError.row_number, ImportRowError.id)
                .limit(batch)
            )
        )
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        after = (rows[-1].row_number, rows[-1].id)


async def errors_csv(session: AsyncSession, *, user_id: int, import_id: int) -> str:
    """The import's rejected rows as CSV (row, column, value, message), every cell guarded against formulas."""
    row = await get_import(session, user_id=user_id, import_id=import_id)
    lines = [["row", "column", "value", "message"]]
    async for error in error_rows(session, import_id=row.id):
        lines.append(
            [
                str(error.row_number),
                csvfmt.guard(error.column or ""),
                csvfmt.guard(error.value or ""),
                csvfmt.guard(error.message),
            ]
        )
    return csvfmt.records(lines)


# --------------------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------------------


async def fail_stale(session: AsyncSession, *, now: dt.datetime) -> list[int]:
    """Running imports whose heartbeat stopped (their worker crashed) become `failed`, keeping their counts."""
    ids = list(
        await session.scalars(
            select(Import.id).where(
                Import.status == ImportStatus.RUNNING,
                Import.kind == "contacts",
                Import.heartbeat_at < now - STALE_AFTER,
            )
        )
    )
    failed = []
    for import_id in ids:
        message = "the import stopped (its worker stopped responding); re-run the file with skip_existing"
        if await _set_status(
            session,
            import_id,
            (ImportStatus.RUNNING,),
            status=ImportStatus.FAILED,
            finished_at=now,
            message=message,
            extra=(Import.heartbeat_at < now - STALE_AFTER,),
        ):
            row = await session.get(Import, import_id, populate_existing=True)
            assert row is not None
            await _finished(session, row)
            failed.append(import_id)
    return failed


async def claim_next(session: AsyncSession, *, worker_id: str, now: dt.datetime) -> int | None:
    """Take the oldest queued import: SKIP LOCKED on PostgreSQL so concurrent workers look at different rows,
    and a compare-and-set on the status everywhere, so two workers never take the same one."""
    query = (
        select(Import.id)
        .where(Import.status == ImportStatus.QUEUED, Import.kind == "contacts")
        .order_by(Import.id)
        .limit(1)
    )
    if dialect_name(session) == "postgresql":
        query = query.with_for_update(skip_locked=True)
    import_id = await session.scalar(query)
    if import_id is None:
        return None
    taken = await _set_status(
        session,
        import_id,
        (ImportStatus.QUEUED,),
        status=ImportStatus.RUNNING,
        worker_id=worker_id[:64],
        started_at=now,
        heartbeat_at=now,
    )
    return import_id if taken else None


async def claim(session: AsyncSession, import_id: int, *, worker_id: str, now: dt.datetime) -> bool:
    """Take one given queued import (the CLI processing the file it just queued)."""
    return await _set_status(
        session,
        import_id,
        (ImportStatus.QUEUED,),
        status=ImportStatus.RUNNING,
        worker_id=worker_id[:64],
        started_at=now,
        heartbeat_at=now,
    )


async def run_imports(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    worker_id: str,
    batch_size: int = BATCH_SIZE,
    heartbeat_every: float = HEARTBEAT_EVERY,
) -> int:
    """The `imports` job: fail stale imports, then claim and run queued ones until none is left."""
    async with unit_of_work(sessionmaker) as session:
        await fail_stale(session, now=utc_now())
    done = 0
    while True:
        async with unit_of_work(sessionmaker) as session:
            import_id = await claim_next(session, worker_id=worker_id, now=utc_now())
        if import_id is None:
            return done
        await run_import(sessionmaker, import_id, batch_size=batch_size, heartbeat_every=heartbeat_every)
        done += 1


@dataclass
class _Run:
    """One claimed import being processed: commits each batch while the import is still `running`."""

    session: AsyncSession
    row: Import
    on_progress: OnProgress | None
    stored_errors: int = 0
    analyze_at: int = ANALYZE_FIRST

    async def started(self, total: int | None) -> None:
        if not await self._save(total_rows=total):
            raise _Stopped
        await end_transaction(self.session)

    async def batch(self, report: ImportReport) -> None:
        self._add_errors(report)
        if not await self._save(**_counts(report)):
            raise _Stopped  # cancelled (or given up as stale): this batch is rolled back, earlier ones stay
        await end_transaction(self.session)
        await self._analyze(report.total)
        if self.on_progress is not None:
            await self.on_progress(self.row)

    async def _analyze(self, rows: int) -> None:
        if rows >= self.analyze_at and dialect_name(self.session) == "postgresql":
            self.analyze_at = rows * 5
            await self.session.execute(text("ANALYZE contacts"))
            await end_transaction(self.session)

    def _add_errors(self, report: ImportReport) -> None:
        new = report.errors[self.stored_errors :]
        self.session.add_all(
            [
                ImportRowError(
                    import_id=self.row.id,
                    row_number=e.row,
                    column=e.column[:100] or None,
                    value=e.value[:200] or None,
                    message=e.message[:500],
                )
                for e in new
            ]
        )
        self.stored_errors += len(new)

    async def _save(self, **values: Any) -> bool:
        values["heartbeat_at"] = utc_now()
        if not await _set_status(self.session, self.row.id, (ImportStatus.RUNNING,), **values):
            await self.session.rollback()
            return False
        if all(column in values for column in _ROW_RESULTS):  # a batch or the end: rows counted since the last save
            rows = {result: values[c] - (getattr(self.row, c) or 0) for c, result in _ROW_RESULTS.items()}
            kind = self.row.kind
            after_commit(self.session, lambda: telemetry.count_import_rows(kind, rows))
        for key, value in values.items():
            setattr(self.row, key, value)
        return True


# The import's row counts (columns of `imports`) and their result label in the process's metrics (`edm.telemetry`).
_ROW_RESULTS = {"created": "created", "updated": "updated", "skipped": "skipped", "errors": "error"}


class _Stopped(Exception):  # noqa: N818 - a control-flow signal
    pass


async def run_import(
    sessionmaker: async_sessionmaker[AsyncSession],
    import_id: int,
    *,
    batch_size: int = BATCH_SIZE,
    on_progress: OnProgress | None = None,
    heartbeat_every: float = HEARTBEAT_EVERY,
) -> str:
    """Process one claimed (`running`) import to its end; returns its final status."""
    finished = asyncio.Event()
    beating = asyncio.create_task(_keep_alive(sessionmaker, import_id, heartbeat_every, finished))
    try:
        return await _run_claimed(sessionmaker, import_id, batch_size=batch_size, on_progress=on_progress)
    finally:
        finished.set()  # the beat ends after its current statement, never half-way through a transaction
        await beating


async def _keep_alive(
    sessionmaker: async_sessionmaker[AsyncSession], import_id: int, every: float, finished: asyncio.Event
) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), timeout=every)
            return
        try:
            async with unit_of_work(sessionmaker) as session:
                await _set_status(session, import_id, (ImportStatus.RUNNING,), heartbeat_at=utc_now())
        except Exception:  # a database hiccup: the next beat (or batch) tries again
            log.warning("import.heartbeat_failed", extra={"import_id": import_id}, exc_info=True)


async def _run_claimed(
    sessionmaker: async_sessionmaker[AsyncSession], import_id: int, *, batch_size: int, on_progress: OnProgress | None
) -> str:
    with tempfile.TemporaryFile() as spool:
        async with sessionmaker() as session:
            row = await session.get(Import, import_id)
            if row is None or row.status != ImportStatus.RUNNING:
                return str(row.status) if row is not None else "missing"
            lines = await _spool(session, import_id, spool)
            run = _Run(session, row, on_progress)
            options = ImportOptions.from_dict(row.options)
            try:
                report = await import_file(
                    session,
                    user_id=row.user_id,
                    stream=spool,
                    format=row.format,
                    options=options,
                    batch_size=batch_size,
                    on_batch=run.batch,
                    import_id=import_id,
                    on_start=lambda hint: run.started(lines if row.format == "csv" else hint),
                )
                await _complete(run, report)
            except _Stopped:
                pass
            except EdmError as exc:
                await session.rollback()
                await _fail(session, import_id, exc.message)
            except Exception:
                log.exception("import.failed", extra={"import_id": import_id})
                await session.rollback()
                await _fail(session, import_id, "internal error while importing; see the worker log")
        async with sessionmaker() as session:
            final = await session.get(Import, import_id)
            return str(final.status) if final is not None else "missing"


async def _spool(session: AsyncSession, import_id: int, spool: IO[bytes]) -> int:
    """Copy the stored chunks to a local file one at a time; returns the number of data lines (an estimate
    of the rows for CSV: a quoted cell over several lines counts more than once)."""
    seqs = list(
        await session.scalars(
            select(ImportChunk.seq).where(ImportChunk.import_id == import_id).order_by(ImportChunk.seq)
        )
    )
    newlines, last = 0, b""
    for seq in seqs:
        data = await session.scalar(
            select(ImportChunk.data).where(ImportChunk.import_id == import_id, ImportChunk.seq == seq)
        )
        data = data or b""
        spool.write(data)
        newlines += data.count(b"\n")
        last = data[-1:] or last
    await end_transaction(session)  # end the read transaction before the long run
    spool.seek(0)
    return max(0, newlines + (1 if last not in (b"\n", b"") else 0) - 1)


async def _complete(run: _Run, report: ImportReport) -> None:
    run._add_errors(report)
    values = {
        **_counts(report),
        "total_rows": report.total,
        "status": ImportStatus.COMPLETED,
        "finished_at": utc_now(),
        "message": None,
    }
    if not await run._save(**values):
        return
    await _finished(run.session, run.row)
    await end_transaction(run.session)


async def _fail(session: AsyncSession, import_id: int, message: str) -> None:
    if await _set_status(
        session,
        import_id,
        (ImportStatus.RUNNING,),
        status=ImportStatus.FAILED,
        finished_at=utc_now(),
        message=message[:1000],
    ):
        row = await session.get(Import, import_id, populate_existing=True)
        assert row is not None
        await _finished(session, row)
    await end_transaction(session)


def _counts(report: ImportReport) -> dict[str, int]:
    return {
        "processed": report.total,
        "created": report.created,
        "updated": report.updated,
        "skipped": report.skipped,
        "errors": report.error_count,
    }


async def _set_status(
    session: AsyncSession, import_id: int, allowed: tuple[str, ...], *, extra: tuple[Any, ...] = (), **values: Any
) -> bool:
    """Compare-and-set: write `values` only while the import's status is one of `allowed`."""
    result = await session.execute(
        update(Import)
        .where(Import.id == import_id, Import.status.in_(allowed), *extra)
        .values(**values, updated_at=utc_now())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def _finished(session: AsyncSession, row: Import) -> None:
    """A finished import drops its stored file (docs/operations.md#retention) and tells its owner."""
    await session.execute(delete(ImportChunk).where(ImportChunk.import_id == row.id))
    title = f"Import {row.status}: {row.filename}"[:200]
    body = (
        f"{row.processed} rows: {row.created} created, {row.updated} updated, {row.skipped} skipped, "
        f"{row.errors} errors" + (f". {row.message}" if row.message else "")
    )
    session.add(
        Notification(
            user_id=row.user_id,
            kind="import_finished",
            title=title,
            body=body[:2000],
            link=f"/api/v1/contacts/imports/{row.id}",
        )
    )
    await session.flush()
    log.info("import.finished", extra={"import_id": row.id, "status": str(row.status), "processed": row.processed})
