"""The streaming XLSX reader: cells read exactly as openpyxl's read-only mode read them (openpyxl is the
reference, run on the same bytes), and hostile workbooks answered at once with a clear error or with their
real rows only: declared dimensions and far rows, too many columns or rows, zip bombs, entity expansion."""

from __future__ import annotations

import datetime as dt
import io
import secrets
import time
import tracemalloc
import zipfile
from collections.abc import Iterable
from decimal import Decimal

import openpyxl
import pytest

from edm.contacts import xlsx
from edm.contacts.sheets import open_table
from edm.contacts.xlsx import RowProblem, cell_text
from edm.errors import BadInput
from tests.unit.contacts import workbooks as wb
from tests.unit.contacts.workbooks import cell, row, sheet_xml

# A behavioural bound, generous for a loaded machine: each hostile file is answered "within a couple of
# seconds"; before, the dimension bomb kept the reader busy for about 17 minutes.
PROMPT = 5.0


Records = list[tuple[int, list[str] | RowProblem]]


def read(data: bytes, sheet: str | None = None) -> tuple[list[str], Records, int | None]:
    with open_table(io.BytesIO(data), format="xlsx", sheet=sheet) as table:
        return table.header, list(table.records), table.total_hint


def refusal(data: bytes, sheet: str | None = None) -> str:
    started = time.perf_counter()
    with pytest.raises(BadInput) as caught:
        read(data, sheet)
    assert time.perf_counter() - started < PROMPT
    return caught.value.message


def openpyxl_rows(data: bytes, sheet: str | None = None) -> list[tuple[int, list[str]]]:
    """What the reader gave before: openpyxl read-only, every value through cell_text, rows without any
    value left out and trailing empty cells dropped (openpyxl padded rows to the declared width)."""
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    found = []
    for number, values in enumerate(
        (book[sheet] if sheet else book.worksheets[0]).iter_rows(values_only=True), start=1
    ):
        cells = [cell_text(v) for v in values]
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            found.append((number, cells))
    book.close()
    return found


def ours(data: bytes, sheet: str | None = None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The reader's header and rows, normalized as `openpyxl_rows` (a no-op for this reader, which never
    produces a row without a value nor trailing empty cells)."""
    header, records, _ = read(data, sheet)
    rows = []
    for number, cells in records:
        assert isinstance(cells, list)
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            rows.append((number, cells))
    return header, rows


def as_before(data: bytes, sheet: str | None = None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    (_, header), *records = openpyxl_rows(data, sheet)
    return header, records


# --------------------------------------------------------------------------------------------------------
# Legitimate workbooks: the same text as before


@pytest.mark.parametrize("date1904", [False, True])
def test_an_openpyxl_workbook_reads_as_openpyxl_read_it(date1904: bool) -> None:
    book = openpyxl.Workbook()
    book.epoch = openpyxl.utils.datetime.CALENDAR_MAC_1904 if date1904 else book.epoch
    notes = book.active
    notes.title = "Notes"
    notes.append(["not the data"])
    people = book.create_sheet("People")
    people.append(["Email", "Mobile", "Joined", "Code", "Score", "Flag", "At", "Took", "Note", "Formula"])
    people.append(
        [
            "ann@example.org",
            8613800138000,
            dt.datetime(2024, 5, 1),
            "007",
            2.5,
            True,
            dt.datetime(2024, 5, 1, 9, 30),
            dt.timedelta(hours=30),
            " spaced\nlines ",
            "=1+1",
        ]
    )
    people.append(
        ["ben@example.org", 447700900123.0, dt.date(2023, 1, 2), 12, -1e-7, False, dt.time(9, 30), None, "Zoë", None]
    )
    people.append([None, None, None])
    people.append(["cid@example.org", Decimal("3.25"), 45000, 0.5, 10**20])
    people["C5"].number_format = "yyyy-mm-dd"
    people["D5"].number_format = "0%"
    people["K6"] = "far right"
    buffer = io.BytesIO()
    book.save(buffer)
    data = buffer.getvalue()

    expected = as_before(data, "People")
    assert ours(data, "People") == expected
    # (the formula has no cached value: no text)
    assert expected[1][0] == (
        2,
        [
            "ann@example.org",
            "8613800138000",
            "2024-05-01",
            "007",
            "2.5",
            "true",
            "2024-05-01T09:30:00",
            "1 day, 6:00:00",
            " spaced\nlines ",
        ],
    )
    assert ours(data) == as_before(data) == (["not the data"], [])


@pytest.mark.filterwarnings("ignore::UserWarning")  # openpyxl's notes on the crafted styles and the 1e300 date
def test_shared_and_inline_strings_rich_runs_phonetics_and_cell_types_read_as_openpyxl_read_them() -> None:
    strings = (
        f'<?xml version="1.0"?><sst xmlns="{wb.MAIN}"><si><t>email</t></si><si><t>name</t></si>'
        '<si><r><rPr><b/></rPr><t>Ann </t></r><r><t xml:space="preserve">Smith</t></r></si>'
        '<si><t>山田</t><rPh sb="0" eb="2"><t>ヤマダ</t></rPh></si>'
        "<si><t>a_x005F_x000D_b</t></si><si><t/></si><si><t>when</t></si><si><t>flag</t></si></sst>"
    )
    styles = wb.styles_xml([0, 14, 164, 10], custom={164: "[h]:mm"})
    rows = [
        row(
            1,
            cell("A1", 0, kind="s"),
            cell("B1", 1, kind="s"),
            cell("C1", 6, kind="s"),
            cell("D1", 7, kind="s"),
            '<c r="E1" t="inlineStr"><is><r><t>no</t></r><r><t>te</t></r><rPh sb="0" eb="1"><t>x</t></rPh></is></c>',
        ),
        row(
            2,
            cell("A2", "ann@example.org"),
            cell("B2", 2, kind="s"),
            cell("C2", 45413, style=1),
            cell("D2", 1, kind="b"),
            cell("E2", 3, kind="s"),
        ),
        # cells and a row without references follow on from the previous ones
        '<row r="4"><c t="inlineStr"><is><t>ben@example.org</t></is></c><c t="s"><v>4</v></c>'
        '<c s="2"><v>1.5</v></c><c t="b"><v>0</v></c><c t="e"><v>#N/A</v></c></row>',
        '<row><c t="inlineStr"><is><t>cid@example.org</t></is></c><c t="s"><v>5</v></c>'
        '<c t="d"><v>2024-02-03T04:05:06</v></c><c t="str"><v>formula text</v></c><c s="3"><v>0.25</v></c></row>',
        row(7, cell("A7", "dee@example.org"), cell("C7", 2.0), cell("D7", "1E3"), cell("E7", 1e300, style=1)),
    ]
    data = wb.workbook({"S": sheet_xml(rows)}, shared_strings=strings, styles=styles)

    expected = as_before(data)
    assert ours(data) == expected
    assert expected == (
        ["email", "name", "when", "flag", "note"],
        [
            (2, ["ann@example.org", "Ann Smith", "2024-05-01", "true", "山田"]),
            (4, ["ben@example.org", "a_x000D_b", "1 day, 12:00:00", "false", "#N/A"]),
            (5, ["cid@example.org", "", "2024-02-03T04:05:06", "formula text", "0.25"]),
            (7, ["dee@example.org", "", "2", "1E3", "#VALUE!"]),
        ],
    )


# --------------------------------------------------------------------------------------------------------
# Hostile workbooks


def test_declared_dimensions_and_a_far_row_cost_nothing() -> None:
    started = time.perf_counter()
    header, records, hint = read(wb.dimension_bomb())
    assert time.perf_counter() - started < PROMPT
    assert header == ["email", "name"]
    assert records == [(2, ["ann@example.org", "Ann"]), (1048576, ["zed@example.org", "Zed"])]
    assert hint == 1048575  # the declared size, shown as a progress hint only


def test_cells_and_rows_without_values_produce_nothing_and_hold_no_memory() -> None:
    data = wb.dimension_bomb(*wb.empty_cells(3, 20_000))  # 3.7 MB of XML: 160,000 styled cells, no value
    tracemalloc.start()
    try:
        header, records, _ = read(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [n for n, _ in records] == [2, 1048576]
    assert peak < 2 * 1024**2, f"{peak:,} bytes held to read {len(data):,} bytes of workbook"


def test_a_header_wider_than_the_column_limit_is_refused_naming_the_limit() -> None:
    message = refusal(wb.many_columns(16384))
    assert message == (
        "the header row (row 1) has a value in column ALM (column 1,001); at most 1,000 columns are read"
    )
    header, _, _ = read(wb.many_columns(1000))
    assert len(header) == 1000 and header[-1] == "c1000"


def test_a_data_row_with_a_value_past_the_limit_is_a_row_problem_and_empty_far_cells_are_nothing() -> None:
    rows = [
        row(1, cell("A1", "email")),
        row(2, cell("A2", "ann@example.org"), cell("XFD2", "far")),
        row(3, cell("A3", "ben@example.org"), '<c r="XFD3" s="1"/>', cell("XFC3", "")),
    ]
    _, records, _ = read(wb.workbook({"S": sheet_xml(rows)}))
    (two, problem), three = records
    assert two == 2 and isinstance(problem, RowProblem)
    assert str(problem) == "a value in column XFD (column 16,384); at most 1,000 columns are read"
    assert three == (3, ["ben@example.org"])


def test_a_cell_longer_than_a_spreadsheet_cell_is_a_row_problem_and_is_not_held() -> None:
    huge = secrets.token_hex(4 * 1024**2)  # 8 MB of text in one cell (it does not compress: no bomb)
    rows = [
        row(1, cell("A1", 0, kind="s")),
        row(2, cell("A2", "ann@example.org"), cell("B2", huge)),
        row(3, cell("A3", "ben@example.org"), cell("C3", 1, kind="s")),
        row(4, cell("A4", "cid@example.org"), cell("B4", "z" * 32_767)),
    ]
    data = wb.workbook({"S": sheet_xml(rows)}, shared_strings=wb.shared_strings_xml(["email", "y" * 40_000]))
    tracemalloc.start()
    try:
        _, records, _ = read(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024**2, f"{peak:,} bytes held to read a cell of {len(huge):,} characters"
    (two, long_inline), (three, long_shared), four = records
    assert (two, str(long_inline)) == (
        2,
        "a cell in column B longer than 32,767 characters (the most a spreadsheet cell holds)",
    )
    assert three == 3 and str(long_shared).startswith("a cell in column C longer than 32,767 characters")
    assert four == (4, ["cid@example.org", "z" * 32_767])
    header = wb.workbook({"S": sheet_xml([row(1, cell("A1", "email"), cell("B1", "e" * 40_000))])})
    assert refusal(header) == (
        "the header row (row 1) has a cell in column B longer than 32,767 characters "
        "(the most a spreadsheet cell holds)"
    )


def test_row_numbers_past_the_sheet_and_too_many_rows_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    past = [row(1, cell("A1", "email")), row(1048577, cell("A1048577", "ann@example.org"))]
    assert refusal(wb.workbook({"S": sheet_xml(past)})) == (
        "the sheet has a row numbered 1,048,577; a sheet has at most 1,048,576"
    )
    # repeated row numbers cannot make more rows than the limit either
    monkeypatch.setattr(xlsx, "MAX_ROWS", 3)
    rows = [row(1, cell("A1", "email"))] + [row(2, cell("A2", f"c{n}@example.org")) for n in range(5)]
    assert refusal(wb.workbook({"S": sheet_xml(rows)})) == "the sheet has more than 3 rows"


def test_a_shared_strings_bomb_is_refused_before_it_is_inflated() -> None:
    too_large = refusal(wb.shared_strings_bomb(200))  # 200 MB: over the 128 MB held for shared strings
    assert too_large == (
        "the workbook is refused: xl/sharedStrings.xml inflates to more than 128 MB; save the sheet as CSV"
    )
    too_compressed = refusal(wb.shared_strings_bomb(20))  # under the size limit, but 1,000 to 1
    assert too_compressed.startswith("the workbook is refused: xl/sharedStrings.xml is compressed 1,0")
    assert too_compressed.endswith("to 1 (at most 200 to 1 is accepted): a decompression bomb?")


def test_the_bytes_really_inflated_count_against_the_total_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    strings = [f"person{i:05d}@example.org {'x' * 20}" for i in range(2000)]
    rows = [row(1, cell("A1", "email"))] + [row(n + 2, cell(f"A{n + 2}", n, kind="s")) for n in range(2000)]
    data = wb.workbook({"S": sheet_xml(rows)}, shared_strings=wb.shared_strings_xml(strings))
    assert len(read(data)[1]) == 2000
    sizes = {i.filename: i.file_size for i in zipfile.ZipFile(io.BytesIO(data)).infolist()}
    sheet, table = sizes["xl/worksheets/sheet1.xml"], sizes["xl/sharedStrings.xml"]
    limit = (sheet + table) * 3 // 4
    assert max(sheet, table) + 10_000 < limit  # each part passes the checks made before inflating it
    monkeypatch.setattr(xlsx, "TOTAL_LIMIT", limit)
    assert refusal(data) == (
        f"the workbook is refused: its parts inflate to more than {limit:,} bytes; save the sheet as CSV"
    )


@pytest.mark.parametrize(
    "prolog",
    [
        "billion laughs",
        '<!DOCTYPE worksheet [<!ENTITY secret SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE worksheet SYSTEM "http://example.com/evil.dtd">',
    ],
)
def test_a_document_type_declaration_is_refused_so_no_entity_is_expanded(prolog: str) -> None:
    data = (
        wb.billion_laughs()
        if prolog == "billion laughs"
        else wb.workbook(
            {
                "S": sheet_xml(
                    [row(1, cell("A1", "email")), row(2, '<c r="A2" t="inlineStr"><is><t>&secret;</t></is></c>')],
                    prolog=prolog,
                )
            }
        )
    )
    assert refusal(data) == (
        "the workbook is refused: it declares a document type (DTD), which a workbook never "
        "needs; entities are not expanded"
    )


def test_an_undeclared_entity_is_unreadable_not_expanded() -> None:
    data = wb.workbook({"S": sheet_xml([row(1, '<c r="A1" t="inlineStr"><is><t>&lol;</t></is></c>')])})
    assert refusal(data).startswith(
        "the file is not a readable XLSX workbook (xl/worksheets/sheet1.xml: undefined entity"
    )


def test_a_zip_with_too_many_files_is_refused_before_its_directory_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    data = wb.workbook({"S": sheet_xml([row(1, cell("A1", "email"))])}, extra={f"junk/{n}.bin": b"" for n in range(20)})
    monkeypatch.setattr(xlsx, "MAX_MEMBERS", 10)
    assert refusal(data).startswith("the workbook is refused: the zip holds 25 files in a ")
    assert refusal(b"PK\x03\x04" + b"\0" * 100) == "the file is not a readable XLSX workbook (it is not a zip file)"


def test_the_header_must_start_within_the_first_bytes_of_the_sheet(monkeypatch: pytest.MonkeyPatch) -> None:
    data = wb.workbook({"S": sheet_xml([*wb.empty_cells(1, 2000), row(3000, cell("A3000", "email"))])})
    assert read(data)[0] == ["email"]
    monkeypatch.setattr(xlsx, "HEADER_WITHIN", 64 * 1024)
    assert refusal(data) == "the sheet has no header row in its first 65,536 bytes"


def test_the_header_check_reads_only_the_shared_strings_it_needs() -> None:
    # The header uses string 0; the table is broken far after it. Reading the header succeeds (the check at
    # upload stays cheap however large the table); reading the rows reaches the break and fails clearly.
    broken = wb.shared_strings_xml(["email", *(f"p{i}@example.org" for i in range(20_000))]).replace(
        "p19999@example.org</t>", "p19999@example.org</x>"
    )
    rows = [row(1, cell("A1", 0, kind="s")), *wb.empty_cells(2, 2000), row(3000, cell("A3000", 20_000, kind="s"))]
    data = wb.workbook({"S": sheet_xml(rows)}, shared_strings=broken)
    with open_table(io.BytesIO(data), format="xlsx") as table:
        assert table.header == ["email"]
        with pytest.raises(BadInput, match="sharedStrings.xml: mismatched tag"):
            list(table.records)


def test_a_missing_shared_string_and_an_unknown_sheet_are_clear_errors() -> None:
    missing = wb.workbook(
        {"S": sheet_xml([row(1, cell("A1", 5, kind="s"))])}, shared_strings=wb.shared_strings_xml(["a"])
    )
    assert refusal(missing) == (
        "the file is not a readable XLSX workbook (row 1 refers to shared string 5, which is missing)"
    )
    data = wb.workbook({"Data": sheet_xml([row(1, cell("A1", "email"))])})
    assert refusal(data, "Chart") == "sheet: no sheet named 'Chart'; sheets: Data"


def test_cell_text_keeps_numbers_as_people_see_them() -> None:
    assert [cell_text(v) for v in (8613800138000.0, 2.5, 12, True, None, dt.date(2024, 5, 1), "007")] == [
        "8613800138000",
        "2.5",
        "12",
        "true",
        "",
        "2024-05-01",
        "007",
    ]


def _chunks(parts: Iterable[str]) -> Iterable[bytes]:
    for part in parts:
        yield part.encode()


def test_a_big_sheet_streams_through_a_zip_written_in_chunks() -> None:
    body = _chunks(
        [
            f'{wb.XML_DECL}<worksheet xmlns="{wb.MAIN}"><sheetData>',
            row(1, cell("A1", "email")),
            *(row(n, cell(f"A{n}", f"c{n}@example.org")) for n in range(2, 30_002)),
            "</sheetData></worksheet>",
        ]
    )
    data = wb.workbook({"S": body})
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("xl/worksheets/sheet1.xml")
    assert info.file_size > 1024**2
    _, records, _ = read(data)
    assert len(records) == 30_000 and records[-1] == (30_001, ["c30001@example.org"])
