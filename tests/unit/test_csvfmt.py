"""CSV in and out: the formula guard and its undoing, RFC 4180 records, header handling, encodings, and rows
that fail alone."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edm import csvfmt
from edm.errors import BadInput

no_store = settings(database=None, deadline=None)  # no example store in the tree; no per-example deadline


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_a_cell_a_spreadsheet_would_evaluate_is_quoted_and_reads_back(start: str) -> None:
    cell = f"{start}SUM(A1:A9)"
    assert csvfmt.guard(cell) == "'" + cell
    assert csvfmt.unguard(csvfmt.guard(cell)) == cell


@pytest.mark.parametrize("cell", ["", "plain", "'quoted", "a=b", " =x", "'", "''"])
def test_other_cells_pass_untouched_both_ways(cell: str) -> None:
    assert csvfmt.guard(cell) == cell
    assert csvfmt.unguard(cell) == cell


def test_a_cell_that_only_looks_guarded_is_guarded_again() -> None:
    assert csvfmt.guard("'=1+1") == "''=1+1" and csvfmt.unguard("''=1+1") == "'=1+1"
    assert csvfmt.guard("''@x") == "'''@x" and csvfmt.unguard("'''@x") == "''@x"


@no_store
@given(st.text())
@example("'=1+1")  # a cell that already looks guarded
@example("''=1+1")
def test_every_exported_cell_reads_back_unchanged(cell: str) -> None:
    assert csvfmt.unguard(csvfmt.guard(cell)) == cell


@no_store
@given(st.text())
def test_no_guarded_cell_starts_like_a_formula(cell: str) -> None:
    assert not csvfmt.guard(cell).startswith(csvfmt.FORMULA_STARTS)


def test_records_are_rfc_4180() -> None:
    text = csvfmt.records([["a", "b,c", 'say "hi"'], ["line\nbreak", "", "x"]])
    assert text == 'a,"b,c","say ""hi"""\r\n"line\nbreak",,x\r\n'


@no_store
@given(
    st.lists(st.lists(st.text(alphabet=st.characters(exclude_characters="\x00")), min_size=1, max_size=5), max_size=5)
)
def test_records_read_back_as_written(rows: list[list[str]]) -> None:
    assert list(csv.reader(io.StringIO(csvfmt.records(rows), newline=""))) == rows


@pytest.mark.parametrize(
    ("header", "canonical"),
    [
        ("E-Mail Address", "emailaddress"),
        ("first_name", "firstname"),
        (" Tags ", "tags"),
        ("名前", ""),
    ],
)
def test_headers_compare_by_letters_and_digits(header: str, canonical: str) -> None:
    assert csvfmt.canonical(header) == canonical


@pytest.mark.parametrize(
    ("given", "name"),
    [
        (None, "utf-8-sig"),
        ("UTF-8", "utf-8-sig"),
        ("utf8", "utf-8-sig"),
        ("GB18030", "gb18030"),
        ("latin-1", "iso8859-1"),
        ("Shift_JIS", "shift_jis"),
    ],
)
def test_encodings_by_any_spelling(given: str | None, name: str) -> None:
    assert csvfmt.codec(given) == name


def test_an_unknown_encoding_is_refused_by_name() -> None:
    name = "klingon-" + "x" * 100
    with pytest.raises(BadInput) as refused:
        csvfmt.codec(name)
    assert refused.value.details == [{"field": "encoding", "message": f"unknown encoding {name[:40]!r}"}]


@pytest.mark.parametrize(
    ("line", "delimiter"),
    [
        ("email,name,tags\n", ","),
        ("email;name;tags\n", ";"),
        ("email\tname\ttags\n", "\t"),
        ("email\n", ","),
        ("email;name,tags;x\n", ";"),
    ],
)
def test_the_delimiter_is_the_one_that_splits_the_header_most(line: str, delimiter: str) -> None:
    assert csvfmt.sniff_delimiter(line) == delimiter


def _text(data: bytes, codec_name: str = "utf-8-sig") -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data), encoding=codec_name, newline="")


def test_the_header_is_the_first_line_with_content() -> None:
    assert csvfmt.header_line(_text(b"\xef\xbb\xbf\n  \nemail,name\r\na@example.com,Ann\r\n"), "utf-8-sig") == (
        3,
        "email,name\r\n",
    )


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(BadInput, match="the file is empty"):
        csvfmt.header_line(_text(b"\n \n"), "utf-8-sig")


def test_bytes_that_are_not_the_encoding_name_the_row_and_the_fix() -> None:
    with pytest.raises(BadInput) as refused:
        csvfmt.header_line(_text("名前,email\n".encode("gb18030")), "utf-8-sig")
    assert "not valid UTF-8 text (near row 1)" in refused.value.message and "gb18030" in refused.value.message
    assert refused.value.details == [{"field": "encoding", "message": "cannot decode as UTF-8 near row 1"}]


def test_a_malformed_record_costs_only_its_own_row() -> None:
    reader = csv.reader(io.StringIO('a,b\n"unterminated\nc,d\n'), strict=True)
    numbered = list(csvfmt.numbered_records(reader, 2, "utf-8-sig"))
    assert numbered[0] == (2, ["a", "b"])
    assert isinstance(numbered[1][1], csv.Error) and numbered[1][0] == 3
    reader = csv.reader(io.StringIO('a,"b"x\nc,d\n'), strict=True)
    rows = list(csvfmt.numbered_records(reader, 5, "utf-8-sig"))
    assert isinstance(rows[0][1], csv.Error) and rows[1] == (6, ["c", "d"]), "the next row still reads"


def test_undecodable_bytes_in_a_record_name_its_row() -> None:
    with pytest.raises(BadInput, match=r"not valid UTF-8 text \(near row 4\)"):
        list(csvfmt.numbered_records(csv.reader(_text(b"\xff\xfe,x\n")), 4, "utf-8-sig"))
