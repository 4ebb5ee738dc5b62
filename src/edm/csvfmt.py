"""CSV in and out, shared by every import and export (docs/import.md, docs/contacts.md#export).

Out: RFC 4180 records and the formula-injection guard — a cell a spreadsheet would evaluate (starting with
= + - @ TAB or CR) is written with a leading `'`; imports of our own exports undo it with `unguard`, so an
export reads back unchanged. In: the encoding (UTF-8 with or without a BOM by default), the delimiter sniffed
from the header, the header line, and numbered records where a malformed record costs only its own row.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from edm.errors import BadInput

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
DELIMITERS = (",", ";", "\t")


class RowError(NamedTuple):
    """One refused row of an import: its number in the file, the column at fault, and why."""

    row: int
    column: str
    message: str


def guard(cell: str) -> str:
    """A cell a spreadsheet would evaluate gets a leading `'`; so does one that only looks guarded (`'=x`), so
    that `unguard` gives every cell back exactly."""
    return "'" + cell if _needs_guard(cell) else cell


def unguard(cell: str) -> str:
    """Undo `guard`: `'=x` reads back as `=x`, `''=x` as `'=x`; a quote before anything else stays."""
    return cell[1:] if cell.startswith("'") and _needs_guard(cell[1:]) else cell


def _needs_guard(cell: str) -> bool:
    # A formula start behind any number of quotes: `=x`, `'=x`, `''=x`, ...
    return cell.lstrip("'").startswith(FORMULA_STARTS)


def records(rows: Iterable[Sequence[str]]) -> str:
    """RFC 4180: CRLF line ends; a cell with a comma, quote, CR or LF is quoted, its quotes doubled."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerows(rows)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


def canonical(header: str) -> str:
    """`E-Mail Address` -> `emailaddress`: how headers (and encodings) are compared."""
    return re.sub(r"[^a-z0-9]", "", header.lower())


def codec(encoding: str | None) -> str:
    if encoding is None or canonical(encoding) == "utf8":
        return "utf-8-sig"  # reads files with or without a BOM
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise BadInput.field("encoding", f"unknown encoding {encoding[:40]!r}") from None


def sniff_delimiter(header_line: str) -> str:
    """The candidate that splits the header most often (a header is plain names, so this is reliable)."""
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def decode_error(codec_name: str, row: int) -> BadInput:
    shown = "UTF-8" if codec_name == "utf-8-sig" else codec_name
    return BadInput(
        f"the file is not valid {shown} text (near row {row}): give its `encoding`, e.g. gb18030",
        details=[{"field": "encoding", "message": f"cannot decode as {shown} near row {row}"}],
    )


def header_line(text: io.TextIOWrapper, codec_name: str) -> tuple[int, str]:
    """The first non-blank line and its row number. An empty file is refused."""
    number = 0
    try:
        for line in iter(text.readline, ""):
            number += 1
            if line.strip():
                return number, line
    except UnicodeDecodeError:
        raise decode_error(codec_name, number + 1) from None
    raise BadInput("the file is empty", details=[{"field": "file", "message": "empty file"}])


def numbered_records(reader: Any, first: int, codec_name: str) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(row number, cells) per record; a malformed record yields its csv.Error so only that row is lost."""
    number = first
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise decode_error(codec_name, number) from None
        except csv.Error as exc:
            yield number, exc
        else:
            yield number, cells
        number += 1
