"""Import files as a header plus numbered records, for CSV and XLSX alike (SPEC §13.4).

CSV is read through an incremental decoder, one record at a time; XLSX through openpyxl in read-only mode,
one row at a time, with every cell turned into the text a person sees: an integral number stays an integer
(a phone number or an id never gains `.0`), a date becomes ISO 8601, a cell typed as text is untouched.
Row numbers are spreadsheet row numbers: the header is usually row 1.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, BinaryIO

from edm import csvfmt
from edm.errors import BadInput

ZIP_MAGIC = b"PK\x03\x04"
OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # the legacy binary .xls format
FORMATS = ("csv", "xlsx")

@dataclass
class Table:
    header: list[str]
    records: Iterator[tuple[int, list[str] | csv.Error]]
    total_hint: int | None = None  # data rows, when the format says so cheaply


def detect_format(filename: str, head: bytes) -> str:
    """`xlsx` for a zip container (what an XLSX file is), `csv` otherwise; the legacy .xls is refused."""
    if head.startswith(ZIP_MAGIC):
        return "xlsx"
    if head.startswith(OLE_MAGIC) or filename.lower().endswith((".xls", ".xlsx")):
        raise BadInput("the file is not a readable XLSX workbook: save it as .xlsx or CSV",
                       details=[{"field": "file", "message": "not an XLSX workbook"}])
    return "csv"


@contextmanager
def open_table(stream: BinaryIO, *, format: str, encoding: str | None = None, delimiter: str | None = None,
               sheet: str | None = None) -> Iterator[Table]:
    """The header and records of a CSV or XLSX byte stream. BadInput for an empty or unreadable file."""
    opener = _xlsx_table if format == "xlsx" else _csv_table
    with opener(stream, encoding=encoding, delimiter=delimiter, sheet=sheet) as table:
        yield table


# --------------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------------


@contextmanager
def _csv_table(stream: BinaryIO, *, encoding: str | None, delimiter: str | None, sheet: str | None) -> Iterator[Table]:
    codec = csvfmt.codec(encoding)
    text = io.TextIOWrapper(stream, encoding=codec, newline="")
    try:
        header_row, header_line = csvfmt.header_line(text, codec)
        # itertools.chain, not a generator: a generator left half-way is finalized later, after the detach
        lines = itertools.chain((header_line,), text)
        reader = csv.reader(lines, delimiter=delimiter or csvfmt.sniff_delimiter(header_line))
        header = next(reader)
        yield Table(header, csvfmt.numbered_records(reader, header_row + 1, codec))
    finally:
        text.detach()  # the caller owns the binary stream: do not close it with the wrapper


# --------------------------------------------------------------------------------------------------------
# XLSX
# --------------------------------------------------------------------------------------------------------


@contextmanager
def _xlsx_table(stream: BinaryIO, *, encoding: str | None, delimiter: str | None, sheet: str | None) -> Iterator[Table]:
    import openpyxl  # imported on first use: only XLSX imports pay for it

    try:
        book = openpyxl.load_workbook(stream, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise BadInput(f"the file is not a readable XLSX workbook ({str(exc)[:100]})",
                       details=[{"field": "file", "message": "not an XLSX workbook"}]) from None
    try:
        yield _sheet_table(_worksheet(book, sheet))
    finally:
        book.close()


def _worksheet(book: Any, name: str | None) -> Any:
    if name is None:
        return book.worksheets[0]
    if name not in book.sheetnames:
        raise BadInput.field("sheet", f"no sheet named {name[:50]!r}; sheets: {', '.join(book.sheetnames)[:300]}")
    return book[name]


def _sheet_table(sheet: Any) -> Table:
    rows = enumerate(sheet.iter_rows(values_only=True), start=1)
    for number, values in rows:
        header = [cell_text(v) for v in values]
        if any(h.strip() for h in header):
            while header and not header[-1].strip():
                header.pop()  # read-only sheets often report a wider range than the data
            max_row = sheet.max_row if isinstance(sheet.max_row, int) else None
            return Table(header, _sheet_records(rows), max_row - number if max_row else None)
    raise BadInput("the file is empty", details=[{"field": "file", "message": "empty file"}])


def _sheet_records(rows: Iterator[tuple[int, tuple[Any, ...]]]) -> Iterator[tuple[int, list[str] | csv.Error]]:
    for number, values in rows:
        yield number, [cell_text(v) for v in values]


def cell_text(value: Any) -> str:
    """The text of a cell: 8613800138000.0 -> "8613800138000", a date -> ISO 8601, text untouched."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | Decimal):
        return str(int(value)) if value == value and abs(value) != float("inf") and value == int(value) else str(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)
