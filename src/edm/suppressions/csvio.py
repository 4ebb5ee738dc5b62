"""CSV import and export of a suppression list (docs/suppression.md#import-and-export-csv).

Import: a header row with an `email` or a `domain` column (or both: each row fills one), optional `note`
and `expires_at`; other columns are ignored, so an export imports back as it is. Good rows are kept, each
bad row is reported with its row number (the header is row 1), column and reason; an address already on the
list, or repeated in the file, counts as existing. Export: RFC 4180, cells that a spreadsheet would run as
a formula are prefixed with `'`, and the import takes that `'` off again.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import csvfmt
from edm.csvfmt import RowError
from edm.errors import BadInput
from edm.models.suppressions import Suppression
from edm.suppressions.service import (
    EntryFilter,
    NewEntry,
    SuppressionList,
    entry_conditions,
    insert_entries,
    new_entry,
)
from edm.system.service import Actor, audit

MAX_STORED_ERRORS = 10_000
BATCH = 500  # rows per INSERT: 13 columns each stays far below SQLite's bound-parameter limit
EXPORT_CHUNK = 1000
EXPORT_HEADER = ("email", "domain", "reason", "note", "expires_at", "created_at")
_COLUMNS = {
    "email": "email",
    "mail": "email",
    "emailaddress": "email",
    "address": "email",
    "domain": "domain",
    "note": "note",
    "notes": "note",
    "comment": "note",
    "expiresat": "expires_at",
    "expires": "expires_at",
    "expiry": "expires_at",
}


@dataclass
class ImportReport:
    """What happened to every data row: total = added + existing + rows with errors."""

    total: int = 0
    added: int = 0
    existing: int = 0
    errors: list[RowError] = field(default_factory=list)  # the first MAX_STORED_ERRORS
    error_count: int = 0

    def add_error(self, row: int, column: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_STORED_ERRORS:
            self.errors.append(RowError(row, column, message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "added": self.added,
            "existing": self.existing,
            "error_count": self.error_count,
            "errors": [e._asdict() for e in self.errors],
        }


OnBatch = Callable[[ImportReport], Awaitable[None]]


# --------------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    rows: list[tuple[int, NewEntry]] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)  # 8-byte digests of (kind, value) already in the file


async def import_csv(
    session: AsyncSession,
    lst: SuppressionList,
    stream: BinaryIO,
    *,
    encoding: str | None,
    actor: Actor,
    now: dt.datetime,
    on_batch: OnBatch | None = None,
) -> ImportReport:
    """Read the file record by record and insert good rows in batches (reason `import`). The caller commits,
    possibly after each batch through `on_batch`. An import into the global list is audited (counts only)."""
    created_by = actor.user_id
    codec = csvfmt.codec(encoding)
    text = io.TextIOWrapper(stream, encoding=codec, newline="")
    header_row, header = csvfmt.header_line(text, codec)
    reader = csv.reader(text, delimiter=csvfmt.sniff_delimiter(header))
    columns = _plan(next(csv.reader([header], delimiter=csvfmt.sniff_delimiter(header))))
    report, batch = ImportReport(), _Batch()
    for number, cells in csvfmt.numbered_records(reader, header_row + 1, codec):
        if isinstance(cells, list) and not any(c.strip() for c in cells):
            continue  # blank lines are not rows
        report.total += 1
        _take(report, batch, number, cells, columns, now)
        if len(batch.rows) >= BATCH:
            await _flush(session, lst, batch, report, created_by, now, on_batch)
    await _flush(session, lst, batch, report, created_by, now, on_batch)
    if lst.scope == "global":
        await audit(
            session,
            actor,
            "suppression.import",
            target_type="suppression_list",
            target_id="global",
            details={
                "total": report.total,
                "added": report.added,
                "existing": report.existing,
                "errors": report.error_count,
            },
        )
    return report


def _take(
    report: ImportReport,
    batch: _Batch,
    number: int,
    cells: list[str] | csv.Error,
    columns: dict[str, int],
    now: dt.datetime,
) -> None:
    """Validate one record into the batch, or report why it is refused, or count it as a repeat."""
    if isinstance(cells, csv.Error):
        report.add_error(number, "", f"malformed CSV record: {cells}")
        return
    try:
        entry = _entry(cells, columns, now)
    except BadInput as exc:
        detail = exc.details[0] if exc.details else {"field": "", "message": exc.message}
        report.add_error(number, str(detail["field"]), str(detail["message"]))
        return
    digest = hashlib.blake2b(f"{entry.kind}:{entry.value}".encode(), digest_size=8).digest()
    if digest in batch.seen:
        report.existing += 1
        return
    batch.seen.add(digest)
    batch.rows.append((number, entry))


def _entry(cells: list[str], columns: dict[str, int], now: dt.datetime) -> NewEntry:
    def cell(name: str) -> str | None:
        index = columns.get(name)
        value = csvfmt.unguard(cells[index].strip()) if index is not None and index < len(cells) else ""
        return value or None

    expires = cell("expires_at")
    return new_entry(
        email=cell("email"),
        domain=cell("domain"),
        note=cell("note"),
        expires_at=parse_time(expires, field="expires_at") if expires else None,
        now=now,
    )


async def _flush(
    session: AsyncSession,
    lst: SuppressionList,
    batch: _Batch,
    report: ImportReport,
    created_by: int | None,
    now: dt.datetime,
    on_batch: OnBatch | None,
) -> None:
    if not batch.rows:
        return
    entries = [entry for _, entry in batch.rows]
    added = len(await insert_entries(session, lst, entries, reason="import", created_by=created_by, now=now))
    report.added += added
    report.existing += len(entries) - added
    batch.rows.clear()
    await session.flush()
    if on_batch is not None:
        await on_batch(report)


def parse_time(text: str, *, field: str) -> dt.datetime:
    """ISO 8601; a time without a zone, or a bare date, is UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput.field(field, f"{text[:40]!r} is not an ISO 8601 time (e.g. 2030-01-31T00:00:00Z)") from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _plan(headers: list[str]) -> dict[str, int]:
    """Target -> column index (the first header naming a target wins); a file without email or domain is
    refused, listing the headers it has."""
    columns: dict[str, int] = {}
    for index, header in enumerate(headers):
        target = _COLUMNS.get(csvfmt.canonical(header))
        if target is not None:
            columns.setdefault(target, index)
    if "email" not in columns and "domain" not in columns:
        found = [h.strip() for h in headers]
        raise BadInput(
            f"the file has no email or domain column; headers found: {', '.join(found) or '(none)'}",
            details=[{"field": "file", "message": "no email or domain column"}],
            headers=found,
        )
    return columns


# --------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------


def csv_line(cells: list[Any]) -> str:
    """One RFC 4180 record, every cell formula-guarded."""
    return csvfmt.records([[csvfmt.guard(_text(c)) for c in cells]])


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return str(value)


async def export_lines(
    sessionmaker: async_sessionmaker[AsyncSession],
    lst: SuppressionList,
    *,
    filters: EntryFilter,
    now: dt.datetime,
    bom: bool = False,
) -> AsyncIterator[str]:
    """The header, then one line per entry by id, EXPORT_CHUNK rows per short read (never the whole list in
    memory, and no transaction held while the client reads: on SQLite every transaction takes the write lock)."""
    yield ("\ufeff" if bom else "") + csv_line(list(EXPORT_HEADER))
    after = 0
    while True:
        async with sessionmaker() as session:
            rows = list(
                await session.scalars(
                    select(Suppression)
                    .where(*entry_conditions(lst, filters, now), Suppression.id > after)
                    .order_by(Suppression.id)
                    .limit(EXPORT_CHUNK)
                )
            )
        for entry in rows:
            address = entry.kind == "address"
            yield csv_line(
                [
                    entry.value if address else "",
                    "" if address else entry.value,
                    entry.reason,
                    entry.note,
                    entry.expires_at,
                    entry.created_at,
                ]
            )
        if len(rows) < EXPORT_CHUNK:
            return
        after = rows[-1].id
