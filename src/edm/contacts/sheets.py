"""Import files as a header plus numbered records, for CSV and XLSX alike (docs/import.md#files).

CSV is read through an incremental decoder, one record at a time; XLSX by `contacts.xlsx`, a streaming
reader that produces only the rows holding a value, with every cell turned into the text a person sees: an
integral number stays an integer (a phone number or an id never gains `.0`), a date becomes ISO 8601, a cell
typed as text is untouched. Row numbers are spreadsheet row numbers: the header is usually row 1.

Reading is synchronous CPU work: callers on an event loop run it in a thread (see `importer`).
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from edm import csvfmt
from edm.contacts import xlsx
from edm.contacts.xlsx import RowProblem, cell_text
from edm.errors import BadInput

__all__ = ["FORMATS", "RowProblem", "Table", "cell_text", "detect_format", "open_table"]

ZIP_MAGIC = b"PK\x03\x04"
OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # the legacy binary .xls format
FORMATS = ("csv", "xlsx")


@dataclass
class Table:
    header: list[str]
    # a record is its cells, or why that one row cannot be read (it is skipped and reported)
    records: Iterator[tuple[int, list[str] | csv.Error | RowProblem]]
    total_hint: int | None = None  # data rows, when the format says so cheaply


def detect_format(filename: str, head: bytes) -> str:
    """`xlsx` for a zip container (what an XLSX file is), `csv` otherwise; the legacy .xls is refused."""
    if head.startswith(ZIP_MAGIC):
        return "xlsx"
    if head.startswith(OLE_MAGIC) or filename.lower().endswith((".xls", ".xlsx")):
        raise BadInput(
            "the file is not a readable XLSX workbook: save it as .xlsx or CSV",
            details=[{"field": "file", "message": "not an XLSX workbook"}],
        )
    return "csv"


@contextmanager
def open_table(
    stream: BinaryIO,
    *,
    format: str,
    encoding: str | None = None,
    delimiter: str | None = None,
    sheet: str | None = None,
) -> Iterator[Table]:
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
    with xlsx.open_sheet(stream, sheet) as found:
        yield Table(found.header, found.records, found.total_hint)
