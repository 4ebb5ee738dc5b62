"""CSV import of contacts (SPEC §13.4): streamed, batched, and every rejected row accounted for.

The file is read from a binary stream through an incremental decoder, one CSV record at a time, so memory
holds one batch plus a small digest per distinct address (for in-file duplicate detection), never the file.
Each batch is one set-based upsert (`service.bulk_insert_contacts`) followed by a flush; the caller owns the
transaction and may commit after every batch through `on_batch` (the CLI does, to show progress and keep
transactions short). Row numbers are spreadsheet row numbers: the header is row 1.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sqlalchemy.ext.asyncio import AsyncSession

from edm import csvfmt
from edm.contacts.models import Tag
from edm.contacts.service import (
    ATTR_KEY,
    IMPORT_MODES,
    check_attributes,
    check_tag_name,
    clean_contact_values,
    create_tag,
    require_own,
    tag_ids_by_name,
)
from edm.contacts.service import bulk_insert_contacts as write_rows
from edm.csvfmt import RowError
from edm.errors import BadInput

MAX_STORED_ERRORS = 10_000
MAX_BATCH_SIZE = 10_000
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

    def add_error(self, row: int, column: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_STORED_ERRORS:
            self.errors.append(RowError(row, column, message))

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "created": self.created, "updated": self.updated, "skipped": self.skipped,
                "error_count": self.error_count, "errors": [e._asdict() for e in self.errors],
                "columns": [{"header": h, "target": t} for h, t in self.columns]}


OnBatch = Callable[[ImportReport], Awaitable[None]]


# --------------------------------------------------------------------------------------------------------
# Header mapping
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    index: int
    header: str
    kind: str  # "field" | "attribute" | "tags"
    target: str  # field name, attribute key, or "tags"


def plan_columns(headers: Sequence[str]) -> list[Column]:
    """Known headers map to fields (first one wins); every other column becomes a custom attribute."""
    columns: list[Column] = []
    taken: set[str] = set()
    for index, raw in enumerate(headers):
        header = raw.strip()
        target = FIELD_ALIASES.get(csvfmt.canonical(header))
        if target is not None and target not in taken:
            taken.add(target)
            columns.append(Column(index, header, "tags" if target == "tags" else "field", target))
        else:
            key = _attribute_key(header, index, taken)
            taken.add(key)
            columns.append(Column(index, header, "attribute", key))
    if "email" not in taken:
        found = [h.strip() for h in headers]
        raise BadInput(f"the file has no email column; headers found: {', '.join(found) or '(none)'}",
                       details=[{"field": "file", "message": "no email column"}], headers=found)
    return columns


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
    extra = [c for c in cells[len(columns):] if c.strip()]
    if extra:
        raise _Skip("", f"the row has {len(cells)} cells but the header has {len(columns)}")
    raw: dict[str, Any] = {"email": ""}
    attributes: dict[str, Any] = {}
    tags: list[tuple[str | None, str]] = []
    for column in columns:
        cell = cells[column.index].strip() if column.index < len(cells) else ""
        if not cell and column.target != "email":
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
        counts = await write_rows(self.session, user_id=self.user_id, rows=[r.values for r in batch], mode=self.mode,
                                  tag_ids=self.extra_tags, row_tag_ids=row_tags)
        self.report.created += counts.created
        self.report.updated += counts.updated
        self.report.skipped += counts.skipped
        await self.session.flush()
        if self.on_batch is not None:
            await self.on_batch(self.report)


async def import_csv(
    session: AsyncSession, *, user_id: int, stream: BinaryIO, mode: str = "skip_existing",
    encoding: str | None = None, tag_ids: Sequence[int] = (), batch_size: int = 1000,
    delimiter: str | None = None, on_batch: OnBatch | None = None,
) -> ImportReport:
    """Import contacts from a CSV byte stream. Bad rows are reported and skipped; good rows are kept.

    Raises BadInput (422) at once for a bad option, an empty file, a file without an email column (listing
    the headers found) or text that cannot be decoded. Flushes after every batch and then awaits
    `on_batch(report)`; it never commits.
    """
    _check_options(mode, batch_size, delimiter)
    extra = await require_own(session, Tag, user_id=user_id, ids=tag_ids, field="tag_ids")
    codec = csvfmt.codec(encoding)
    text = io.TextIOWrapper(stream, encoding=codec, newline="")
    try:
        return await _run(session, text, codec, delimiter=delimiter, job=_Import(
            session, user_id, mode, extra, _Tags(session, user_id, await tag_ids_by_name(session, user_id=user_id)),
            ImportReport(), on_batch), batch_size=batch_size)
    finally:
        text.detach()  # the caller owns the binary stream: do not close it with the wrapper


def _check_options(mode: str, batch_size: int, delimiter: str | None) -> None:
    if mode not in IMPORT_MODES:
        raise BadInput.field("mode", f"must be one of {', '.join(IMPORT_MODES)}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise BadInput.field("batch_size", f"must be 1 to {MAX_BATCH_SIZE}")
    if delimiter is not None and delimiter not in csvfmt.DELIMITERS:
        raise BadInput.field("delimiter", "must be ',', ';' or a tab")


async def _run(session: AsyncSession, text: io.TextIOWrapper, codec: str, *, delimiter: str | None, job: _Import,
               batch_size: int) -> ImportReport:
    header_row, header_line = csvfmt.header_line(text, codec)
    reader = csv.reader(_chain(header_line, text), delimiter=delimiter or csvfmt.sniff_delimiter(header_line))
    columns = plan_columns(next(reader))
    job.report.columns = [(c.header, _shown_target(c)) for c in columns]
    batch: list[_Row] = []
    for number, cells in csvfmt.numbered_records(reader, header_row + 1, codec):
        if isinstance(cells, list) and not any(c.strip() for c in cells):
            continue  # blank line: not a row
        job.report.total += 1
        row = _accept(job, number, cells, columns)
        if row is not None:
            batch.append(row)
        if job.report.total % batch_size == 0:
            await job.write(batch)
            batch = []
    if batch or job.report.total % batch_size:
        await job.write(batch)
    return job.report


def _chain(first: str, rest: io.TextIOWrapper) -> Iterator[str]:
    yield first
    yield from rest


def _shown_target(column: Column) -> str:
    return f"attributes.{column.target}" if column.kind == "attribute" else column.target


def _accept(job: _Import, number: int, cells: list[str] | csv.Error, columns: list[Column]) -> _Row | None:
    """The parsed row, or None after recording why it is skipped."""
    try:
        if isinstance(cells, csv.Error):
            raise _Skip("", f"malformed CSV: {cells}")
        row = parse_row(cells, columns, number)
        first = job.first_row_of(row.values["email_normalized"], number)
        if first is not None:
            raise _Skip(_header_of(columns, "email"), f"duplicate of row {first}")
        return row
    except _Skip as skip:
        job.report.skipped += 1
        job.report.add_error(number, skip.column, skip.message)
        return None
