"""XLSX worksheets read as a stream of rows, so that a hostile workbook costs bounded time and memory.

An XLSX file is a zip of XML parts. Only the parts an import needs are read (the package and workbook
relationships, the workbook, the styles for date formats, the shared strings and one worksheet), with expat
fed 16 KB at a time, and:

- the sheet's declared size (`<dimension ref="A1:XFD1048576"/>`) and its row numbers never decide what is
  allocated: only rows and cells that hold a value are produced, so a row numbered 1,048,576 after row 2
  costs one row, not a million empty ones, and a cell in column XFD is refused instead of padding a row;
- columns are capped at MAX_COLUMNS and the text of a cell at MAX_CELL_CHARS, Excel's limit (a data row
  past either is skipped and reported, a header refused), and rows at MAX_ROWS, Excel's limit too;
- the zip's directory is checked before zipfile loads it, each part's declared uncompressed size and
  compression ratio before it is inflated, and the bytes really inflated are counted against the same
  limits (all parts together: TOTAL_LIMIT), whatever the zip headers claim;
- shared strings are read only as far as cells refer to them and held as one UTF-8 buffer plus an offset
  per string (8 bytes each instead of a Python object), within SHARED_STRINGS_LIMIT;
- a document type declaration is refused, so no entity can be declared, let alone expanded (the "billion
  laughs" file);
- the header row must start within HEADER_WITHIN bytes of the sheet, so the synchronous check at upload is
  bounded too.

Cells become the text a person sees, exactly as openpyxl's read-only mode gave them before: integral numbers
without `.0`, numbers whose style is a date format as ISO dates (1900 or 1904 calendar), booleans as
`true`/`false`, error cells as their code (`#N/A`), text untouched.
"""

from __future__ import annotations

import array
import datetime as dt
import io
import posixpath
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any, BinaryIO
from xml.parsers import expat

from edm.errors import BadInput

MAX_COLUMNS = 1_000
MAX_CELL_CHARS = 32_767  # Excel's limit for the text of a cell
MAX_ROWS = 1_048_576  # rows of an Excel sheet
TOTAL_LIMIT = 1024**3  # bytes inflated from all the parts read, together
SHARED_STRINGS_LIMIT = 128 * 1024**2
STYLES_LIMIT = 64 * 1024**2
PART_LIMIT = 16 * 1024**2  # relationships and the workbook part
MAX_RATIO = 200  # inflated : stored, for parts over RATIO_FLOOR (ordinary sheets compress 5-30 times)
RATIO_FLOOR = 1024**2
HEADER_WITHIN = 16 * 1024**2
MAX_MEMBERS = 10_000
MAX_DIRECTORY_BYTES = 8 * 1024**2
FEED_BYTES = 16 * 1024  # XML bytes parsed at a time

RowRecord = tuple[int, "list[str] | RowProblem"]


class RowProblem(ValueError):
    """A row that cannot be read as it is (a value beyond MAX_COLUMNS): skipped and reported, not fatal."""


def unreadable(reason: str) -> BadInput:
    return BadInput(
        f"the file is not a readable XLSX workbook ({reason[:200]})",
        details=[{"field": "file", "message": "not an XLSX workbook"}],
    )


def _refused(reason: str) -> BadInput:
    return BadInput(f"the workbook is refused: {reason}", details=[{"field": "file", "message": reason}])


# --------------------------------------------------------------------------------------------------------
# The zip container
# --------------------------------------------------------------------------------------------------------


class _Archive:
    """The zip, opened after its directory was checked; parts are inflated through `_Part` readers."""

    def __init__(self, stream: BinaryIO) -> None:
        _check_directory(stream)
        try:
            self.zip = zipfile.ZipFile(stream)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise unreadable(str(exc)) from None
        self.infos = {info.filename: info for info in self.zip.infolist()}
        self.budget = TOTAL_LIMIT

    def has(self, name: str) -> bool:
        return name in self.infos

    def open(self, name: str, limit: int) -> _Part:
        """A counting reader of one part, after its declared size and compression ratio were checked."""
        info = self.infos.get(name)
        if info is None:
            raise unreadable(f"the part {name} is missing")
        limit = min(limit, self.budget)
        if info.file_size > limit:
            raise _too_large(name, limit)
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise _refused(
                f"{name} is compressed {info.file_size // max(1, info.compress_size):,} to 1 "
                f"(at most {MAX_RATIO} to 1 is accepted): a decompression bomb?"
            )
        try:
            return _Part(self, name, self.zip.open(info), limit)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, ValueError) as exc:
            raise unreadable(f"{name}: {exc}") from None

    def close(self) -> None:
        self.zip.close()


def _too_large(name: str, limit: int) -> BadInput:
    return _refused(f"{name} inflates to more than {_size(limit)}; save the sheet as CSV")


def _size(count: int) -> str:
    return f"{count / 1024**2:,.0f} MB" if count >= 1024**2 else f"{count:,} bytes"


class _Part:
    """Reads one part, counting the bytes really inflated against the part's limit and against the total of
    the archive: the sizes the zip declares are checked before, but only what is inflated is certain."""

    def __init__(self, archive: _Archive, name: str, raw: IO[bytes], limit: int) -> None:
        self.archive, self.name, self.raw, self.limit = archive, name, raw, limit
        self.count = 0

    def read(self, size: int = FEED_BYTES) -> bytes:
        try:
            data: bytes = self.raw.read(size)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
            raise unreadable(f"{self.name}: {exc}") from None
        self.count += len(data)
        self.archive.budget -= len(data)
        if self.archive.budget < 0:
            raise _refused(f"its parts inflate to more than {_size(TOTAL_LIMIT)}; save the sheet as CSV")
        if self.count > self.limit:
            raise _too_large(self.name, self.limit)
        return data


def _check_directory(stream: BinaryIO) -> None:
    """Refuse a zip whose central directory is huge before zipfile reads all of it into memory."""
    here = stream.tell()
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    tail_size = min(size, 22 + 0xFFFF + 20)  # the end record, its comment, a zip64 locator before it
    stream.seek(size - tail_size)
    tail = stream.read(tail_size)
    stream.seek(here)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise unreadable("it is not a zip file")
    entries, directory = struct.unpack_from("<HI", tail, at + 10)
    if entries == 0xFFFF or directory == 0xFFFFFFFF:
        entries, directory = _zip64_directory(stream, tail, at)
    if entries > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
        raise _refused(
            f"the zip holds {entries:,} files in a {directory:,}-byte directory "
            f"(at most {MAX_MEMBERS:,} files are accepted)"
        )


def _zip64_directory(stream: BinaryIO, tail: bytes, end_at: int) -> tuple[int, int]:
    locator = end_at - 20
    if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
        raise unreadable("a zip64 directory without its locator")
    (offset,) = struct.unpack_from("<Q", tail, locator + 8)
    here = stream.tell()
    stream.seek(offset)
    record = stream.read(56)
    stream.seek(here)
    if len(record) < 56 or record[:4] != b"PK\x06\x06":
        raise unreadable("a zip64 directory that cannot be found")
    entries, directory = struct.unpack_from("<QQ", record, 32)
    return int(entries), int(directory)


# --------------------------------------------------------------------------------------------------------
# Expat, safely and incrementally
# --------------------------------------------------------------------------------------------------------


def _refuse_doctype(*_: Any) -> None:
    raise _refused("it declares a document type (DTD), which a workbook never needs; entities are not expanded")


def _parser(
    start: Callable[[str, dict[str, str]], None],
    end: Callable[[str], object],
    text: Callable[[str], None] | None = None,
) -> Any:
    """An expat parser (namespaces resolved, names given as "uri local") that refuses any DTD."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_doctype
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    if text is not None:
        parser.CharacterDataHandler = text
    return parser


def _feed(parser: Any, part: _Part, data: bytes) -> None:
    try:
        parser.Parse(data, not data)
    except expat.ExpatError as exc:
        raise unreadable(f"{part.name}: {expat.ErrorString(exc.code)} at line {exc.lineno}") from None
    # Read in a thread next to an event loop: hand the GIL over after every feed (a few milliseconds of
    # parsing), or the loop and the database driver's threads wait up to the 5 ms switch interval at each
    # hand-over, and a worker's statements crawl while it reads.
    time.sleep(0)


def _local(name: str) -> str:
    return name.rpartition(" ")[2]


def _elements(part: _Part, wanted: dict[str, str | None]) -> list[tuple[str, dict[str, str]]]:
    """(local name, attributes by local name) of the elements named in `wanted` ({name: required parent or
    None}), in document order. For the small parts: relationships and the workbook."""
    found: list[tuple[str, dict[str, str]]] = []
    path: list[str] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        local = _local(name)
        if local in wanted and wanted[local] in (None, path[-1] if path else None):
            found.append((local, {_local(k): v for k, v in attrs.items()}))
        path.append(local)

    _parse_all(part, start, lambda name: path.pop())
    return found


def _parse_all(part: _Part, start: Callable[[str, dict[str, str]], None], end: Callable[[str], object]) -> None:
    parser = _parser(start, end)
    while data := part.read():
        _feed(parser, part, data)
    _feed(parser, part, b"")


# --------------------------------------------------------------------------------------------------------
# The workbook: its sheets, calendar, date styles and shared strings
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Styles:
    """Which cell styles (indexes of `cellXfs`) show a number as a date, and which of those as a duration."""

    dates: frozenset[int] = frozenset()
    durations: frozenset[int] = frozenset()

    @classmethod
    def read(cls, part: _Part) -> _Styles:
        from openpyxl.styles.numbers import BUILTIN_FORMATS, is_date_format, is_timedelta_format

        custom: dict[int, str] = {}
        styles = array.array("q")  # the number format of each cell style, in order
        path: list[str] = []

        def start(name: str, attrs: dict[str, str]) -> None:
            local, parent = _local(name), path[-1] if path else ""
            if local == "numFmt" and parent == "numFmts":
                custom[_int(attrs.get("numFmtId"))] = attrs.get("formatCode", "")
            elif local == "xf" and parent == "cellXfs":
                styles.append(_int(attrs.get("numFmtId")))
            path.append(local)

        _parse_all(part, start, lambda name: path.pop())
        dates, durations = set(), set()
        kinds: dict[int, tuple[bool, bool]] = {}  # format id -> (a date, a duration), decided once per format
        for index, format_id in enumerate(styles):
            if format_id not in kinds:
                code = custom[format_id] if format_id in custom else BUILTIN_FORMATS.get(format_id)
                kinds[format_id] = (is_date_format(code), is_timedelta_format(code))
            date, duration = kinds[format_id]
            if date:
                dates.add(index)
            if duration:
                durations.add(index)
        return cls(frozenset(dates), frozenset(durations))


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


class _SharedStrings:
    """The workbook's shared strings, read only as far as cells refer to them (the header check at upload
    reads a handful), held as one UTF-8 buffer and the end offset of each string."""

    def __init__(self, part: _Part | None) -> None:
        self.part = part
        self.buffer = bytearray()
        self.ends = array.array("Q")
        self.pieces: list[str] | None = None  # the text of the <si> being read
        self.length = 0  # its characters so far: past MAX_CELL_CHARS, no more are kept
        self.collecting = False
        self.phonetic = 0  # inside <rPh>: a reading aid, not part of the text
        if part is not None:
            self.parser = _parser(self._start, self._end, self._text)

    def get(self, index: int) -> str | None:
        while index >= len(self.ends) and self.part is not None:
            data = self.part.read()
            _feed(self.parser, self.part, data)
            if not data:
                self.part = None
        if not 0 <= index < len(self.ends):
            return None
        start = self.ends[index - 1] if index else 0
        return self.buffer[start : self.ends[index]].decode()

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        local = _local(name)
        if local == "si":
            self.pieces, self.length = [], 0
        elif local == "rPh":
            self.phonetic += 1
        elif local == "t" and self.pieces is not None and not self.phonetic:
            self.collecting = True

    def _end(self, name: str) -> None:
        local = _local(name)
        if local == "t":
            self.collecting = False
        elif local == "rPh":
            self.phonetic -= 1
        elif local == "si" and self.pieces is not None:
            # as openpyxl: the escape of a literal "_x" loses its marker
            self.buffer += "".join(self.pieces).replace("x005F_", "").encode()
            self.ends.append(len(self.buffer))
            self.pieces = None

    def _text(self, data: str) -> None:
        if self.collecting and self.pieces is not None and self.length <= MAX_CELL_CHARS:
            self.pieces.append(data[: MAX_CELL_CHARS + 1 - self.length])  # one more: known to be too long
            self.length += len(data)


@dataclass
class _Book:
    sheets: list[tuple[str, str | None]]  # (name, worksheet part; None for a chart sheet)
    epoch: dt.datetime
    styles: _Styles
    strings: _SharedStrings

    @classmethod
    def read(cls, archive: _Archive) -> _Book:
        from openpyxl.utils.datetime import CALENDAR_MAC_1904, CALENDAR_WINDOWS_1900

        workbook = _workbook_part(archive)
        rels = _relationships(archive, workbook)
        found = _elements(archive.open(workbook, PART_LIMIT), {"workbookPr": None, "sheet": "sheets"})
        sheets = []
        for name, attrs in found:
            if name == "sheet":
                kind, target = rels.get(attrs.get("id", ""), ("", ""))
                sheets.append((attrs.get("name", ""), target if kind == "worksheet" and archive.has(target) else None))
        date1904 = any(a.get("date1904", "").lower() in ("1", "true") for name, a in found if name == "workbookPr")
        by_kind = {kind: target for kind, target in rels.values()}
        styles = by_kind.get("styles")
        strings = by_kind.get("sharedStrings")
        return cls(
            sheets=sheets,
            epoch=CALENDAR_MAC_1904 if date1904 else CALENDAR_WINDOWS_1900,
            styles=_Styles.read(archive.open(styles, STYLES_LIMIT)) if styles and archive.has(styles) else _Styles(),
            strings=_SharedStrings(
                archive.open(strings, SHARED_STRINGS_LIMIT) if strings and archive.has(strings) else None
            ),
        )

    def worksheet(self, name: str | None) -> str:
        """The part of the sheet named `name`, or of the first worksheet."""
        names = ", ".join(n for n, _ in self.sheets)[:300]
        if name is None:
            part = next((p for _, p in self.sheets if p is not None), None)
            if part is None:
                raise unreadable("it has no worksheet")
            return part
        for sheet_name, part in self.sheets:
            if sheet_name == name:
                if part is None:
                    raise BadInput.field("sheet", f"{name[:50]!r} is not a worksheet (a chart?); sheets: {names}")
                return part
        raise BadInput.field("sheet", f"no sheet named {name[:50]!r}; sheets: {names}")


def _workbook_part(archive: _Archive) -> str:
    if archive.has("_rels/.rels"):
        for kind, target in _relationships(archive, "").values():
            if kind == "officeDocument" and archive.has(target):
                return target
    if archive.has("xl/workbook.xml"):
        return "xl/workbook.xml"
    raise unreadable("it has no workbook part")


def _relationships(archive: _Archive, part: str) -> dict[str, tuple[str, str]]:
    """{id: (kind, target part)} of a part's relationships ("" for the package's own); kind is the last
    segment of the relationship type (worksheet, sharedStrings, styles, officeDocument, ...)."""
    folder, base = posixpath.split(part)
    path = posixpath.join(folder, "_rels", f"{base}.rels")
    if not archive.has(path):
        return {}
    rels = {}
    for _, attrs in _elements(archive.open(path, PART_LIMIT), {"Relationship": None}):
        target = attrs.get("Target", "")
        if attrs.get("TargetMode") == "External":
            continue
        resolved = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
        rels[attrs.get("Id", "")] = (attrs.get("Type", "").rpartition("/")[2], resolved)
    return rels


# --------------------------------------------------------------------------------------------------------
# The sheet
# --------------------------------------------------------------------------------------------------------


class SheetReader:
    """The rows of one worksheet that hold a value, as (row number, cell texts) or (row number, RowProblem),
    produced a feed (FEED_BYTES of XML) at a time. Rows and cells without a value are never materialized."""

    def __init__(self, part: _Part, book: _Book) -> None:
        self.part, self.book = part, book
        self.ready: list[RowRecord] = []
        self.row_number = 0
        self.column = 0
        self.cells: list[str] = []
        self.too_far = 0  # the first column beyond MAX_COLUMNS that holds a value in this row
        self.too_long = 0  # the first column of this row whose text is longer than MAX_CELL_CHARS
        self.produced = 0
        self.declared_rows: int | None = None  # from <dimension>: a progress hint, never a size to allocate
        self.kind, self.style, self.value = "n", "", ""
        self.inline: list[str] | None = None
        self.text: list[str] | None = None  # character data being collected (a <v>, or a <t> of an inline string)
        self.length = 0  # characters of the current cell so far
        self.phonetic = 0
        self.looking_for_header = True
        self.parser = _parser(self._start, self._end, self._text)
        # handlers by the element's full name ("uri local"), resolved from its local name once per name
        self._starts: dict[str, Callable[[dict[str, str]], None]] = {}
        self._ends: dict[str, Callable[[], None]] = {}
        self._start_by_local = {local: getattr(self, method) for local, method in _STARTS.items()}
        self._end_by_local = {local: getattr(self, method) for local, method in _ENDS.items()}

    # ---- the stream of rows ----------------------------------------------------------------------------

    def rows(self) -> Iterator[RowRecord]:
        while True:
            if self.ready:
                ready, self.ready = self.ready, []
                yield from ready
                continue
            data = self.part.read()
            if self.looking_for_header and self.part.count > HEADER_WITHIN:
                raise BadInput(
                    f"the sheet has no header row in its first {_size(HEADER_WITHIN)}",
                    details=[{"field": "file", "message": "no header row"}],
                )
            _feed(self.parser, self.part, data)
            if not data:
                yield from self.ready
                return

    def header(self, rows: Iterator[RowRecord]) -> tuple[int, list[str]]:
        """The first row with a non-blank cell: (its number, its cells without trailing blanks)."""
        for number, cells in rows:
            if isinstance(cells, RowProblem):
                raise BadInput(
                    f"the header row (row {number}) has {cells}", details=[{"field": "file", "message": str(cells)}]
                )
            if any(c.strip() for c in cells):
                self.looking_for_header = False
                while not cells[-1].strip():
                    cells.pop()
                return number, cells
        raise BadInput("the file is empty", details=[{"field": "file", "message": "empty file"}])

    def total_hint(self, header_row: int) -> int | None:
        if self.declared_rows is None:
            return None
        return max(0, min(self.declared_rows, MAX_ROWS) - header_row)

    # ---- expat handlers: dispatch by element name, resolved once per distinct name --------------------

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        try:
            handler = self._starts[name]
        except KeyError:
            handler = self._starts[name] = self._start_by_local.get(_local(name), _ignore_start)
        handler(attrs)

    def _end(self, name: str) -> None:
        try:
            handler = self._ends[name]
        except KeyError:
            handler = self._ends[name] = self._end_by_local.get(_local(name), _ignore_end)
        handler()

    def _text(self, data: str) -> None:
        if self.text is not None:
            self.length += len(data)
            if self.length <= MAX_CELL_CHARS:
                self.text.append(data)

    def _row_start(self, attrs: dict[str, str]) -> None:
        given = attrs.get("r")
        self.row_number = _row_number(given) if given is not None else self.row_number + 1
        if self.row_number > MAX_ROWS:
            raise BadInput(
                f"the sheet has a row numbered {self.row_number:,}; a sheet has at most {MAX_ROWS:,}",
                details=[{"field": "file", "message": "row number out of range"}],
            )
        self.column = 0
        self.cells = []
        self.too_far = self.too_long = 0

    def _row_end(self) -> None:
        if self.too_far:
            self._produce(
                RowProblem(
                    f"a value in column {_letters(self.too_far)} (column {self.too_far:,}); "
                    f"at most {MAX_COLUMNS:,} columns are read"
                )
            )
        elif self.too_long:
            self._produce(
                RowProblem(
                    f"a cell in column {_letters(self.too_long)} longer than {MAX_CELL_CHARS:,} "
                    "characters (the most a spreadsheet cell holds)"
                )
            )
        elif self.cells:
            self._produce(self.cells)
        self.cells = []

    def _produce(self, cells: list[str] | RowProblem) -> None:
        self.produced += 1
        if self.produced > MAX_ROWS:
            raise BadInput(
                f"the sheet has more than {MAX_ROWS:,} rows", details=[{"field": "file", "message": "too many rows"}]
            )
        self.ready.append((self.row_number, cells))

    def _cell_start(self, attrs: dict[str, str]) -> None:
        ref = attrs.get("r")
        self.column = _column_number(ref) if ref is not None else self.column + 1
        self.kind = attrs.get("t", "n")
        self.style = attrs.get("s", "")
        self.value = ""
        self.inline = None
        self.length = 0

    def _cell_end(self) -> None:
        text = self._cell_text()
        if not text:
            return  # no value: nothing is stored, whatever the column
        column = self.column
        if self.length > MAX_CELL_CHARS or len(text) > MAX_CELL_CHARS:  # (text of a shared string)
            self.too_long = self.too_long or column
            return
        if column > MAX_COLUMNS:
            self.too_far = self.too_far or column
            return
        cells = self.cells
        if column > len(cells):
            cells.extend([""] * (column - len(cells)))
        cells[column - 1] = text

    def _value_start(self, attrs: dict[str, str]) -> None:
        self.text = []

    def _value_end(self) -> None:
        if self.text is not None:
            self.value = "".join(self.text)
            self.text = None

    def _inline_start(self, attrs: dict[str, str]) -> None:
        self.inline = []

    def _run_text_start(self, attrs: dict[str, str]) -> None:
        if self.inline is not None and not self.phonetic:
            self.text = []

    def _run_text_end(self) -> None:
        if self.text is not None and self.inline is not None:
            self.inline.append("".join(self.text))
        self.text = None

    def _dimension_start(self, attrs: dict[str, str]) -> None:
        last = attrs.get("ref", "").rpartition(":")[2].lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ$")
        self.declared_rows = int(last) if last.isdigit() and len(last) < 10 else None

    def _phonetic_start(self, attrs: dict[str, str]) -> None:
        self.phonetic += 1

    def _phonetic_end(self) -> None:
        self.phonetic -= 1

    # ---- cell values ---------------------------------------------------------------------------------

    def _cell_text(self) -> str:
        kind, value = self.kind, self.value
        if kind == "inlineStr":
            return "".join(self.inline) if self.inline is not None else ""
        if not value:
            return ""
        if kind == "n":
            return self._number(value)
        if kind == "s":
            text = self.book.strings.get(_int(value, -1))
            if text is None:
                raise unreadable(f"row {self.row_number} refers to shared string {value[:20]}, which is missing")
            return text
        if kind == "b":
            return {"1": "true", "0": "false"}.get(value, value)
        if kind == "d":
            return _iso_date(value)
        return value  # "str" (a formula's text), "e" (an error code such as #N/A)

    def _number(self, value: str) -> str:
        try:
            number: int | float = float(value) if "." in value or "E" in value or "e" in value else int(value)
        except ValueError:
            return value
        if self.style and self.book.styles.dates:
            style = _int(self.style, -1)
            if style in self.book.styles.dates:
                return _date_text(number, self.book.epoch, style in self.book.styles.durations)
        return cell_text(number)


_STARTS = {
    "c": "_cell_start",
    "v": "_value_start",
    "row": "_row_start",
    "is": "_inline_start",
    "t": "_run_text_start",
    "rPh": "_phonetic_start",
    "dimension": "_dimension_start",
}
_ENDS = {"c": "_cell_end", "v": "_value_end", "row": "_row_end", "t": "_run_text_end", "rPh": "_phonetic_end"}


def _ignore_start(attrs: dict[str, str]) -> None:
    pass


def _ignore_end() -> None:
    pass


def _column_number(ref: str) -> int:
    """ "AB12" -> 28. A reference without letters is not a cell reference."""
    number = 0
    for char in ref:
        code = ord(char) - 64
        if not 1 <= code <= 26:
            break
        number = number * 26 + code
        if number > 16384:
            break  # past Excel's last column: the exact number no longer matters
    if number == 0:
        raise unreadable(f"the cell reference {ref[:20]!r} is not valid")
    return number


def _letters(column: int) -> str:
    letters = ""
    while column:
        column, rest = divmod(column - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _row_number(given: str) -> int:
    try:
        number = int(given)
    except ValueError:
        try:
            as_float = float(given)
        except ValueError:
            raise unreadable(f"the row number {given[:20]!r} is not a number") from None
        if not as_float.is_integer():
            raise unreadable(f"the row number {given[:20]!r} is not a whole number") from None
        number = int(as_float)
    if number < 1:
        raise unreadable(f"the row number {number} is not valid")
    return number


def _date_text(number: float, epoch: dt.datetime, duration: bool) -> str:
    from openpyxl.utils.datetime import from_excel

    try:
        return cell_text(from_excel(number, epoch, timedelta=duration))
    except (OverflowError, ValueError):
        return "#VALUE!"  # what openpyxl made of a date style on a number that is no date


def _iso_date(value: str) -> str:
    from openpyxl.utils.datetime import from_ISO8601

    try:
        return cell_text(from_ISO8601(value))
    except (ValueError, TypeError):
        return value


def cell_text(value: Any) -> str:
    """The text of a cell: 8613800138000.0 -> "8613800138000", a date -> ISO 8601, text untouched."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        return str(int(value)) if value == value and abs(value) != float("inf") and value == int(value) else str(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------


@dataclass
class Sheet:
    header_row: int
    header: list[str]
    records: Iterator[RowRecord]
    total_hint: int | None


@contextmanager
def open_sheet(stream: BinaryIO, sheet: str | None = None) -> Iterator[Sheet]:
    """The header and the following records of a worksheet (the first, or the one named `sheet`).
    BadInput for a file that is not a readable workbook, is refused by the limits above, or is empty."""
    archive = _Archive(stream)
    try:
        book = _Book.read(archive)
        reader = SheetReader(archive.open(book.worksheet(sheet), TOTAL_LIMIT), book)
        rows = reader.rows()
        number, header = reader.header(rows)
        yield Sheet(number, header, rows, reader.total_hint(number))
    finally:
        archive.close()
