"""CSV output shared by every export (SPEC §13.5): RFC 4180 records and the formula-injection guard.

A cell a spreadsheet would evaluate (starting with = + - @ TAB or CR) is written with a leading `'`; imports
of our own exports undo it with `unguard`, so an export reads back unchanged.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def guard(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def unguard(cell: str) -> str:
    """`'=x` reads back as `=x`; a quote before anything else stays."""
    return cell[1:] if cell.startswith("'") and cell[1:2] and cell[1] in FORMULA_STARTS else cell


def records(rows: Iterable[Sequence[str]]) -> str:
    """RFC 4180: CRLF line ends; a cell with a comma, quote, CR or LF is quoted, its quotes doubled."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerows(rows)
    return buffer.getvalue()
