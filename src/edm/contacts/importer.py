"""Import of contacts from CSV or XLSX (docs/import.md): streamed, batched, and every rejected row accounted for.

The file is read from a binary stream one record at a time (`sheets.open_table`), so memory holds one batch
plus a small digest per distinct address (for in-file duplicate detection), never the file.
Each batch is one set-based upsert (`service.bulk_insert_contacts`) followed by a flush; the caller owns the
transaction and may commit after every batch through `on_batch` (the CLI does, to show progress and keep
transactions short). Row numbers are spreadsheet row numbers: the header is row 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import itertools
import re
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from edm import csvfmt
from edm.contacts.common import require_own
from edm.contacts.fields import check_attributes, clean_contact_values
from edm.contacts.filters import ATTR_KEY
from edm.contacts.sheets import RowProblem, Table, detect_format, open_table
from edm.contacts.tags import check_tag_name, create_tag, tag_ids_by_name
from edm.contacts.upsert import IMPORT_MODES
from edm.contacts.upsert import bulk_insert_contacts as write_rows
from edm.errors import BadInput
from edm.models.contacts import Tag

MAX_STORED_ERRORS = 10_000
MAX_BATCH_SIZE = 10_000
YIELD_EVERY = 500
TAG_SEPARATORS = re.compile(r"[,;|]")

# Header names are compared lower-cased with everything but letters and digits removed, so "E-Mail",
# "e_mail" and "Email Address" all find their field.
FIELD_ALIASES: dict[str, str] = {
    "email": "email", "mail": "email", "emailaddress": "email",
    "name": "name", "fullname": "name",
    "firstname": "first_name", "lastname": "last_name",
    "username": "username",
    "phone": "phone", "mobile": "phone", "phonenumber": "phone",
    "company": "company",
    "position": "position", "title": "position",
    "tiktokuniqueid": "tiktok_unique_id", "tiktokid": "tiktok_unique_id",
    "instagramid": "instagram_id", "insid": "instagram_id",
    "youtubeid": "youtube_id",
    "source": "source", "status": "status", "timezone": "timezone",
    "tags": "tags",
}  # fmt: skip
FIELDS = frozenset(FIELD_ALIASES.values())
IGNORE = "ignore"  # a mapping target that drops the column


class RowError(NamedTuple):
    """One refused row: its number in the file, the column at fault (its header), why, and the cell's text."""

    row: int
    column: str
    message: str
    value: str = ""


@dataclass
class ImportReport:
    """What happened to every data row: total = created + updated + skipped."""

    total: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    errors: list[RowError] = field(default_factory=list)  # the first MAX_STORED_ERRORS
    error_count: int = 0
    # (header, target) per column in file order; target is a field, "attributes.<key>" or "tags"
    columns: list[tuple[str, str]] = field(default_factory=list)

    def add_error(self, row: int, column: str, message: str, value: str = "") -> None:
        self.error_count += 1
        if len(self.errors) < MAX_STORED_ERRORS:
            self.errors.append(RowError(row, column, message, value[:200]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "created": self.created,
            "updated": self.updated,
            "skipped": self.skipped,
            "error_count": self.error_count,
            "errors": [e._asdict() for e in self.errors],
            "columns": [{"header": h, "target": t} for h, t in self.columns],
        }


OnBatch = Callable[[ImportReport], Awaitable[None]]
Record = tuple[int, list[str] | csv.Error | RowProblem]


# --------------------------------------------------------------------------------------------------------
# Header mapping
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    index: int
    header: str
    kind: str  # "field" | "attribute" | "tags" | "ignore"
    target: str  # field name, attribute key, "tags" or "ignore"


def plan_columns(
    headers: Sequence[str], *, mapping: Mapping[str, str | None] | None = None, ignore_unknown: bool = False
) -> list[Column]:
    """Known headers map to fields (first one wins); every other column becomes a custom attribute, or is
    ignored with `ignore_unknown`. An explicit `mapping` {header: field | "tags" | "attributes.<key>" |
    "ignore"} wins over the aliases. BadInput naming the headers found when no column holds the email."""
    given = check_mapping(headers, mapping or {})
    columns: list[Column] = []
    taken: set[str] = {t for t in given.values() if t != IGNORE}
    for index, raw in enumerate(headers):
        header = raw.strip()
        column = _mapped(index, header, given[header]) if header in given else None
        if column is None:
            column = _automatic(index, header, taken, ignore_unknown)
        taken.add(column.target)
        columns.append(column)
    if "email" not in taken:
        found = [h.strip() for h in headers]
        raise BadInput(
            f"the file has no email column; headers found: {', '.join(found) or '(none)'}",
            details=[{"field": "file", "message": "no email column"}],
            headers=found,
        )
    return columns


def check_mapping(headers: Sequence[str], mapping: Mapping[str, str | None]) -> dict[str, str]:
    """{header: target} with every header present in the file and every target known (field names as in
    the API; `attributes.<key>` for a custom attribute; None or "ignore" to drop the column)."""
    found = {h.strip() for h in headers}
    given: dict[str, str] = {}
    for header, target in mapping.items():
        if header.strip() not in found:
            raise BadInput.field(f"mapping.{header[:50]}", f"no such column; headers found: {', '.join(found)[:300]}")
        target = (target or IGNORE).strip()
        key = target.removeprefix("attributes.")
        if target not in FIELDS and target != IGNORE and (key == target or not ATTR_KEY.fullmatch(key)):
            raise BadInput.field(f"mapping.{header[:50]}", "must be a contact field, tags, attributes.<key> or ignore")
        if target != IGNORE and target in given.values():
            raise BadInput.field(f"mapping.{header[:50]}", f"{target} is mapped twice")
        given[header.strip()] = target
    return given


def _mapped(index: int, header: str, target: str) -> Column:
    if target == IGNORE:
        return Column(index, header, "ignore", IGNORE)
    if target.startswith("attributes."):
        return Column(index, header, "attribute", target.removeprefix("attributes."))
    return Column(index, header, "tags" if target == "tags" else "field", target)


def _automatic(index: int, header: str, taken: set[str], ignore_unknown: bool) -> Column:
    target = FIELD_ALIASES.get(csvfmt.canonical(header))
    if target is not None and target not in taken:
        return Column(index, header, "tags" if target == "tags" else "field", target)
    if ignore_unknown:
        return Column(index, header, "ignore", IGNORE)
    return Column(index, header, "attribute", _attribute_key(header, index, taken))


def _attribute_key(header: str, index: int, taken: set[str]) -> str:
    """A valid, unique custom attribute key for a header (`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)."""
    ascii_header = unicodedata.normalize("NFKD", header.strip()).encode("ascii", "ignore").decode()  # été -> ete
    key = re.sub(r"[^A-Za-z0-9_]", "_", ascii_header).strip("_") or f"column_{index + 1}"
    if not re.match(r"[A-Za-z_]", key):
        key = "_" + key
    key, base, n = key[:64], key[:60], 2
    while key in taken or not ATTR_KEY.fullmatch(key):
        key, n = f"{base}_{n}", n + 1
    return key


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Row:
    number: int
    values: dict[str, Any]
    tags: list[tuple[str | None, str]]


class _Skip(Exception):  # noqa: N818 - a control-flow signal, not an error of the API
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column, self.message = column, message


def parse_tag_names(cell: str) -> list[tuple[str | None, str]]:
    """`a, b; Parent/Child | c` -> [(None, "a"), (None, "b"), ("Parent", "Child"), (None, "c")]."""
    names: list[tuple[str | None, str]] = []
    for part in TAG_SEPARATORS.split(cell):
        if not part.strip():
            continue
        pieces = [p.strip() for p in part.split("/")]
        if len(pieces) > 2:
            raise BadInput.field("tags", f"{part.strip()!r}: tags nest one level deep (Parent/Child)")
        checked = [check_tag_name(p) for p in pieces]
        name = (checked[0], checked[1]) if len(checked) == 2 else (None, checked[0])
        if name not in names:
            names.append(name)
    return names


def parse_row(cells: list[str], columns: list[Column], number: int) -> _Row:
    """Validate one record into contact values; raises _Skip(column, reason) for a bad row."""
    extra = [c for c in cells[len(columns) :] if c.strip()]
    if extra:
        raise _Skip("", f"the row has {len(cells)} cells but the header has {len(columns)}")
    raw: dict[str, Any] = {"email": ""}
    attributes: dict[str, Any] = {}
    tags: list[tuple[str | None, str]] = []
    for column in columns:
        cell = cells[column.index].strip() if column.index < len(cells) else ""
        if (not cell and column.target != "email") or column.kind == "ignore":
            continue
        if column.kind == "field":
            raw[column.target] = cell.lower() if column.target == "status" else cell
        elif column.kind == "attribute":
            attributes[column.target] = cell
        else:
            tags = _tag_cell(column, cell)
    if not raw["email"]:
        raise _Skip(_header_of(columns, "email"), "missing email")
    values = _guarded(columns, lambda: clean_contact_values(raw))
    if attributes:
        values["custom_attributes"] = _guarded(columns, lambda: check_attributes(attributes))
    return _Row(number, values, tags)


def _tag_cell(column: Column, cell: str) -> list[tuple[str | None, str]]:
    try:
        return parse_tag_names(cell)
    except BadInput as exc:
        message = exc.details[0]["message"] if exc.details else exc.message
        raise _Skip(column.header, f"tag {message}" if not message.startswith("'") else message) from None


def _guarded(columns: list[Column], check: Callable[[], Any]) -> Any:
    """Run a validator and name the offending CSV column (by its header) in the row error."""
    try:
        return check()
    except BadInput as exc:
        detail = exc.details[0] if exc.details else {"field": "", "message": exc.message}
        raise _Skip(_header_of(columns, str(detail.get("field", ""))), str(detail.get("message"))) from None


def _header_of(columns: list[Column], field_name: str) -> str:
    target = field_name.removeprefix("custom_attributes.")
    for column in columns:
        if column.target == target:
            return column.header
    return field_name


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


class _Tags:
    """Tag names -> ids, creating unknown tags once (roots first, then `Parent/Child` children)."""

    def __init__(self, session: AsyncSession, user_id: int, known: dict[tuple[str | None, str], int]) -> None:
        self.session, self.user_id, self.known = session, user_id, known

    async def ids(self, names: list[tuple[str | None, str]]) -> list[int]:
        out = []
        for parent, name in names:
            parent_id = await self._id(None, parent, None) if parent is not None else None
            out.append(await self._id(parent, name, parent_id))
        return out

    async def _id(self, parent: str | None, name: str, parent_id: int | None) -> int:
        key = (parent, name)
        if key not in self.known:
            tag = await create_tag(self.session, user_id=self.user_id, name=name, parent_id=parent_id)
            self.known[key] = tag.id
        return self.known[key]


@dataclass
class _Import:
    session: AsyncSession
    user_id: int
    mode: str
    extra_tags: list[int]
    tags: _Tags
    report: ImportReport
    on_batch: OnBatch | None
    import_id: int | None = None  # the background import being run: marks the contacts it writes
    seen: dict[int, int] = field(default_factory=dict)  # 64-bit digest of address -> first row number

    def first_row_of(self, email_normalized: str, number: int) -> int | None:
        """The earlier row with this address, or None (and remember this one) when it is new."""
        digest = int.from_bytes(hashlib.blake2b(email_normalized.encode(), digest_size=8).digest(), "big")
        first = self.seen.get(digest)
        if first is None:
            self.seen[digest] = number
        return first

    async def write(self, batch: list[_Row]) -> None:
        row_tags = [await self.tags.ids(row.tags) for row in batch]
        counts = await write_rows(
            self.session,
            user_id=self.user_id,
            rows=[r.values for r in batch],
            mode=self.mode,
            tag_ids=self.extra_tags,
            row_tag_ids=row_tags,
            import_id=self.import_id,
        )
        self.report.created += counts.created
        self.report.updated += counts.updated
        self.report.skipped += counts.skipped
        await self.session.flush()
        if self.on_batch is not None:
            await self.on_batch(self.report)


@dataclass(frozen=True)
class ImportOptions:
    """What a user may choose for one import; stored with it (`Import.options`) as `to_dict()`."""

    mode: str = "skip_existing"
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None
    mapping: dict[str, str | None] = field(default_factory=dict)
    tag_ids: tuple[int, ...] = ()
    ignore_unknown_columns: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "sheet": self.sheet,
            "mapping": dict(self.mapping),
            "tag_ids": list(self.tag_ids),
            "ignore_unknown_columns": self.ignore_unknown_columns,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImportOptions:
        return cls(
            mode=data.get("mode") or "skip_existing",
            encoding=data.get("encoding"),
            delimiter=data.get("delimiter"),
            sheet=data.get("sheet"),
            mapping=dict(data.get("mapping") or {}),
            tag_ids=tuple(data.get("tag_ids") or ()),
            ignore_unknown_columns=bool(data.get("ignore_unknown_columns")),
        )

    def check(self, batch_size: int = 1000) -> None:
        if self.mode not in IMPORT_MODES:
            raise BadInput.field("mode", f"must be one of {', '.join(IMPORT_MODES)}")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise BadInput.field("batch_size", f"must be 1 to {MAX_BATCH_SIZE}")
        if self.delimiter is not None and self.delimiter not in csvfmt.DELIMITERS:
            raise BadInput.field("delimiter", "must be ',', ';' or a tab")
        csvfmt.codec(self.encoding)


def read_columns(stream: BinaryIO, *, format: str, options: ImportOptions) -> list[Column]:
    """The column plan of a file from its header row alone: BadInput at once for an unreadable file or one
    without an email column (naming the headers found). Reads the stream from its current position."""
    options.check()
    with open_table(
        stream, format=format, encoding=options.encoding, delimiter=options.delimiter, sheet=options.sheet
    ) as table:
        return plan_columns(table.header, mapping=options.mapping, ignore_unknown=options.ignore_unknown_columns)


@dataclass(frozen=True)
class Preview:
    """The first rows of a file as the importer would read them, for a person to check the column mapping."""

    format: str
    columns: list[Column]  # the plan the import would use (an explicit mapping first, then the aliases)
    rows: list[tuple[int, list[str] | None]]  # (row number, cells) or None for a row that cannot be read
    has_email: bool


def preview_table(stream: BinaryIO, *, filename: str, options: ImportOptions, rows: int = 20) -> Preview:
    """Header, planned columns and the first `rows` data rows of a CSV or XLSX stream. Unlike `read_columns`
    a file without an email column is not refused: the preview is where the user maps one."""
    options.check()
    start = stream.tell()
    file_format = detect_format(filename, stream.read(8))
    stream.seek(start)
    with open_table(
        stream, format=file_format, encoding=options.encoding, delimiter=options.delimiter, sheet=options.sheet
    ) as table:
        given = check_mapping(table.header, options.mapping)
        columns: list[Column] = []
        taken: set[str] = {t for t in given.values() if t != IGNORE}
        for index, raw in enumerate(table.header):
            header = raw.strip()
            if header in given:
                column = _mapped(index, header, given[header])
            else:
                column = _automatic(index, header, taken, options.ignore_unknown_columns)
            taken.add(column.target)
            columns.append(column)
        first = [
            (number, cells if isinstance(cells, list) else None)
            for number, cells in itertools.islice(table.records, rows)
        ]
    return Preview(file_format, columns, first, "email" in taken)


async def import_file(
    session: AsyncSession,
    *,
    user_id: int,
    stream: BinaryIO,
    format: str = "csv",
    options: ImportOptions = ImportOptions(),
    batch_size: int = 1000,
    on_batch: OnBatch | None = None,
    on_start: Callable[[int | None], Awaitable[None]] | None = None,
    import_id: int | None = None,
) -> ImportReport:
    """Import contacts from a CSV or XLSX byte stream. Bad rows are reported and skipped; good rows are kept.

    Raises BadInput (422) at once for a bad option, an empty file, a file without an email column (listing
    the headers found) or text that cannot be decoded. Awaits `on_start(total rows when the format tells)`
    once the header is read, then flushes after every batch and awaits `on_batch(report)`; it never commits.
    """
    options.check(batch_size)
    extra = await require_own(session, Tag, user_id=user_id, ids=options.tag_ids, field="tag_ids")
    known = await tag_ids_by_name(session, user_id=user_id)
    job = _Import(
        session, user_id, options.mode, extra, _Tags(session, user_id, known), ImportReport(), on_batch, import_id
    )
    with contextlib.ExitStack() as stack:
        # opening reads up to the header row: for a workbook that is unzipping and parsing, off the loop
        table = await asyncio.to_thread(
            stack.enter_context,
            open_table(
                stream, format=format, encoding=options.encoding, delimiter=options.delimiter, sheet=options.sheet
            ),
        )
        columns = plan_columns(table.header, mapping=options.mapping, ignore_unknown=options.ignore_unknown_columns)
        if on_start is not None:
            await on_start(table.total_hint)
        return await _run(table, columns, job=job, batch_size=batch_size)


async def import_csv(
    session: AsyncSession,
    *,
    user_id: int,
    stream: BinaryIO,
    mode: str = "skip_existing",
    encoding: str | None = None,
    tag_ids: Sequence[int] = (),
    batch_size: int = 1000,
    delimiter: str | None = None,
    on_batch: OnBatch | None = None,
) -> ImportReport:
    """`import_file` for a CSV stream with the common options."""
    options = ImportOptions(mode=mode, encoding=encoding, delimiter=delimiter, tag_ids=tuple(tag_ids))
    return await import_file(
        session, user_id=user_id, stream=stream, options=options, batch_size=batch_size, on_batch=on_batch
    )


async def _run(table: Table, columns: list[Column], *, job: _Import, batch_size: int) -> ImportReport:
    job.report.columns = [(c.header, _shown_target(c)) for c in columns]
    batch: list[_Row] = []
    async for number, cells in _read_off_loop(table.records):
        if isinstance(cells, list) and not any(c.strip() for c in cells):
            continue  # blank line: not a row
        job.report.total += 1
        if job.report.total % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # validating rows is CPU work: let the worker's other loops run between rows
        row = _accept(job, number, cells, columns)
        if row is not None:
            batch.append(row)
        if job.report.total % batch_size == 0:
            await job.write(batch)
            batch = []
    if batch or job.report.total % batch_size:
        await job.write(batch)
    return job.report


async def _read_off_loop(records: Iterator[Record], chunk: int = YIELD_EVERY) -> AsyncIterator[Record]:
    """The records, read `chunk` at a time in a worker thread: decoding a CSV or parsing a workbook's XML is
    CPU work that would otherwise hold the event loop (and the worker's heartbeat and sends) meanwhile."""
    while read := await asyncio.to_thread(lambda: list(itertools.islice(records, chunk))):
        for record in read:
            yield record


def _shown_target(column: Column) -> str:
    return f"attributes.{column.target}" if column.kind == "attribute" else column.target


def _accept(job: _Import, number: int, cells: list[str] | csv.Error | RowProblem, columns: list[Column]) -> _Row | None:
    """The parsed row, or None after recording why it is skipped."""
    try:
        if isinstance(cells, csv.Error):
            raise _Skip("", f"malformed CSV: {cells}")
        if isinstance(cells, RowProblem):
            raise _Skip("", str(cells))
        row = parse_row(cells, columns, number)
        first = job.first_row_of(row.values["email_normalized"], number)
        if first is not None:
            raise _Skip(_header_of(columns, "email"), f"duplicate of row {first}")
        return row
    except _Skip as skip:
        job.report.skipped += 1
        job.report.add_error(number, skip.column, skip.message, _cell_of(cells, columns, skip.column))
        return None


def _cell_of(cells: list[str] | csv.Error | RowProblem, columns: list[Column], header: str) -> str:
    if not isinstance(cells, list) or not header:
        return ""
    index = next((c.index for c in columns if c.header == header), len(cells))
    return cells[index].strip() if index < len(cells) else ""
