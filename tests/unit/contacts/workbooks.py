"""Workbooks written part by part with zipfile, so a test can say exactly what the XML holds: the hostile
files (declared dimensions, far rows and columns, zip bombs, entity declarations) and small exact cases."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from xml.sax.saxutils import escape

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
XML_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'


def cell(ref: str, value: str | int | float, *, kind: str | None = None, style: int | None = None) -> str:
    """A cell: text as an inline string, numbers as numbers; `kind` gives another type (s, b, e, str, d)."""
    attrs = f' r="{ref}"' + (f' s="{style}"' if style is not None else "")
    if kind is None and isinstance(value, str):
        return f'<c{attrs} t="inlineStr"><is><t>{escape(value)}</t></is></c>'
    if kind is not None:
        attrs += f' t="{kind}"'
    return f"<c{attrs}><v>{escape(str(value))}</v></c>"


def row(number: int, *cells: str) -> str:
    return f'<row r="{number}">{"".join(cells)}</row>'


def sheet_xml(rows: Iterable[str], *, dimension: str | None = None, prolog: str = "") -> str:
    dim = f'<dimension ref="{dimension}"/>' if dimension else ""
    return f'{XML_DECL}{prolog}<worksheet xmlns="{MAIN}">{dim}<sheetData>{"".join(rows)}</sheetData></worksheet>'


def shared_strings_xml(strings: Iterable[str]) -> str:
    items = "".join(f"<si><t>{escape(s)}</t></si>" for s in strings)
    return f'{XML_DECL}<sst xmlns="{MAIN}">{items}</sst>'


def styles_xml(number_formats: Iterable[int], custom: dict[int, str] | None = None) -> str:
    """cellXfs with one xf per number format id, in order (so style i shows format number_formats[i])."""
    fmts = "".join(f'<numFmt numFmtId="{i}" formatCode="{escape(c)}"/>' for i, c in (custom or {}).items())
    xfs = "".join(f'<xf numFmtId="{i}" fontId="0" fillId="0" borderId="0" xfId="0"/>' for i in number_formats)
    return (
        f'{XML_DECL}<styleSheet xmlns="{MAIN}"><numFmts count="{len(custom or {})}">{fmts}</numFmts>'
        f'<cellStyleXfs count="1"><xf numFmtId="0"/></cellStyleXfs><cellXfs>{xfs}</cellXfs></styleSheet>'
    )


def workbook(
    sheets: dict[str, str | bytes | Iterable[bytes]],
    *,
    shared_strings: str | bytes | None = None,
    styles: str | None = None,
    date1904: bool = False,
    extra: dict[str, str | bytes] | None = None,
) -> bytes:
    """An XLSX package: sheets by name (their XML, or chunks written one at a time), in order."""
    types = (
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.'
        'spreadsheetml.sheet.main+xml"/>'
    )
    rels = [
        f'<Relationship Id="rId{n}" Type="{REL}/worksheet" Target="worksheets/sheet{n}.xml"/>'
        for n in range(1, len(sheets) + 1)
    ]
    members: dict[str, str | bytes | Iterable[bytes]] = {}
    for n, xml in enumerate(sheets.values(), start=1):
        members[f"xl/worksheets/sheet{n}.xml"] = xml
        types += (
            f'<Override PartName="/xl/worksheets/sheet{n}.xml" ContentType="application/vnd.openxmlformats-'
            f'officedocument.spreadsheetml.worksheet+xml"/>'
        )
    if shared_strings is not None:
        members["xl/sharedStrings.xml"] = shared_strings
        rels.append(f'<Relationship Id="rIdS" Type="{REL}/sharedStrings" Target="sharedStrings.xml"/>')
        types += (
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.sharedStrings+xml"/>'
        )
    if styles is not None:
        members["xl/styles.xml"] = styles
        rels.append(f'<Relationship Id="rIdT" Type="{REL}/styles" Target="styles.xml"/>')
        types += (
            '<Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.styles+xml"/>'
        )
    calendar = ' date1904="1"' if date1904 else ""
    sheet_list = "".join(
        f'<sheet name="{escape(name)}" sheetId="{n}" r:id="rId{n}"/>' for n, name in enumerate(sheets, start=1)
    )
    members.update(
        {
            "[Content_Types].xml": f'{XML_DECL}<Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            f'content-types"><Default Extension="rels" ContentType="application/vnd.'
            f'openxmlformats-package.relationships+xml"/><Default Extension="xml" '
            f'ContentType="application/xml"/>{types}</Types>',
            "_rels/.rels": f'{XML_DECL}<Relationships xmlns="{PKG}"><Relationship Id="rId1" '
            f'Type="{REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>',
            "xl/workbook.xml": f'{XML_DECL}<workbook xmlns="{MAIN}" xmlns:r="{REL}">'
            f"<workbookPr{calendar}/><sheets>{sheet_list}</sheets></workbook>",
            "xl/_rels/workbook.xml.rels": f'{XML_DECL}<Relationships xmlns="{PKG}">{"".join(rels)}</Relationships>',
            **(extra or {}),
        }
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        for name, content in members.items():
            if isinstance(content, str | bytes):
                package.writestr(name, content)
            else:
                with package.open(name, "w", force_zip64=False) as part:
                    for chunk in content:
                        part.write(chunk)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------
# Hostile files
# --------------------------------------------------------------------------------------------------------


def dimension_bomb(*middle: str, last_email: str = "zed@example.org") -> bytes:
    """Declares the whole sheet (A1:XFD1048576); holds a header, one good row, `middle` rows, and a good row
    numbered 1,048,576: openpyxl padded a million empty rows of 16,384 cells in between."""
    rows = [
        row(1, cell("A1", "email"), cell("B1", "name")),
        row(2, cell("A2", "ann@example.org"), cell("B2", "Ann")),
        *middle,
        row(1048576, cell("A1048576", last_email), cell("B1048576", "Zed")),
    ]
    return workbook({"Sheet1": sheet_xml(rows, dimension="A1:XFD1048576")})


def empty_cells(first: int, rows: int, per_row: int = 8) -> Iterable[str]:
    """Rows of styled cells without values: XML to parse that must cost no memory and produce no row."""
    for number in range(first, first + rows):
        yield f'<row r="{number}">' + "".join(f'<c r="{c}{number}" s="0"/>' for c in "CDEFGHIJ"[:per_row]) + "</row>"


def shared_strings_bomb(megabytes: int) -> bytes:
    """A sharedStrings part of `megabytes` MB of one repeated string: it deflates about 1,000 to 1."""

    def chunks() -> Iterable[bytes]:
        yield f'{XML_DECL}<sst xmlns="{MAIN}"><si><t>email</t></si><si><t>'.encode()
        block = b"a" * (1024 * 1024)
        for _ in range(megabytes):
            yield block
        yield b"</t></si></sst>"

    sheet = sheet_xml([row(1, cell("A1", 0, kind="s")), row(2, cell("A2", "ann@example.org"))])
    return workbook({"Sheet1": sheet}, shared_strings=chunks())


def many_columns(columns: int) -> bytes:
    """A header row of `columns` columns (Excel's maximum is 16,384)."""
    header = row(1, cell("A1", "email"), *(cell(f"{_letters(n)}1", f"c{n}") for n in range(2, columns + 1)))
    return workbook({"Sheet1": sheet_xml([header, row(2, cell("A2", "ann@example.org"))])})


def billion_laughs() -> bytes:
    """Nested entities that expand to 10^9 "lol"s if a parser expands them."""
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">' for n in range(1, 10)
    )
    prolog = f"<!DOCTYPE worksheet [{entities}]>"
    rows = [row(1, cell("A1", "email")), row(2, '<c r="A2" t="inlineStr"><is><t>&lol9;</t></is></c>')]
    return workbook({"Sheet1": sheet_xml(rows, prolog=prolog)})


def _letters(column: int) -> str:
    letters = ""
    while column:
        column, rest = divmod(column - 1, 26)
        letters = chr(65 + rest) + letters
    return letters
