"""XLSX import benchmark: the speed of a legitimate workbook and the cost of a hostile one.

    .venv/bin/python -m bench.bench_xlsx [--rows 100000] [--no-import]

1. A workbook of N rows (100,000) is written with openpyxl's write-only mode: email, first and last name,
   phone (a number), company, city and a date; 1 % bad rows (0.5 % invalid addresses, 0.5 % repeats).
2. Reader passes, each in its own process (wall time from spawn to exit, peak RSS from VmHWM):
   `edm.contacts.sheets.open_table` over every record, and, as the reference in the same run, openpyxl's
   read-only `iter_rows(values_only=True)` turned into text the same way (how EDM read workbooks before).
3. The import (PostgreSQL, database `EDM_BENCH_DB`, default `edm_bench_xlsx`): created through
   `contacts.imports.create_import`, run by the worker's `imports` job code in a separate process (as in
   bench_import), wall time and VmHWM; checks that created == the good rows and errors == the bad rows.
4. The dimension bomb: a 1.5 KB workbook that declares `A1:XFD1048576` and holds a header, one data row and
   one row numbered 1,048,576, read through `open_table` in a child process killed after 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

if __name__ == "__main__" and "EDM_BENCH_DB" not in os.environ:
    os.environ["EDM_BENCH_DB"] = "edm_bench_xlsx"  # never the shared edm_bench / edm_test databases

from bench import infra  # noqa: E402
from bench.infra import log  # noqa: E402

RUN_DIR = infra.ROOT / "var" / "bench"
BOMB_TIMEOUT = 60.0


@dataclass
class Pass:
    """One reading of a file in a child process."""

    reader: str
    rows: int | None  # records read; None when the child was killed or failed
    seconds: float
    peak_rss_mb: float  # VmHWM reported by the child, or the sampled peak when it was killed
    outcome: str


def write_workbook(path: Path, rows: int) -> int:
    """The bench workbook; returns the number of bad rows."""
    import openpyxl

    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("Contacts")
    sheet.append(["email", "first_name", "last_name", "phone", "company", "city", "joined"])
    bad = 0
    joined = dt.datetime(2024, 1, 1)
    for i in range(rows):
        email = f"user{i}@example{i % 97}.org"
        if i % 200 == 17:
            email, bad = f"user{i}.example.org", bad + 1
        elif i % 200 == 117:
            email, bad = f"user{i - 50}@example{(i - 50) % 97}.org", bad + 1
        sheet.append(
            [
                email,
                f"First{i}",
                f"Last{i}",
                15550000000 + i,
                f"Company {i % 1000}",
                f"City {i % 50}",
                joined + dt.timedelta(days=i % 365),
            ]
        )
    book.save(path)
    return bad


def dimension_bomb() -> bytes:
    """A workbook declaring the whole sheet (A1:XFD1048576) with rows 1, 2 and 1,048,576 only."""
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    pkg = "http://schemas.openxmlformats.org/package/2006/relationships"

    def row(number: int, text: str) -> str:
        return f'<row r="{number}"><c r="A{number}" t="inlineStr"><is><t>{text}</t></is></c></row>'

    members = {
        "[Content_Types].xml": '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
        'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/'
        'sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.'
        'worksheet+xml"/></Types>',
        "_rels/.rels": f'<Relationships xmlns="{pkg}"><Relationship Id="rId1" Type="{rel}/officeDocument" '
        'Target="xl/workbook.xml"/></Relationships>',
        "xl/workbook.xml": f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets><sheet name="Sheet1" sheetId="1" '
        'r:id="rId1"/></sheets></workbook>',
        "xl/_rels/workbook.xml.rels": f'<Relationships xmlns="{pkg}"><Relationship Id="rId1" Type="{rel}/worksheet" '
        'Target="worksheets/sheet1.xml"/></Relationships>',
        "xl/worksheets/sheet1.xml": f'<worksheet xmlns="{main}"><dimension ref="A1:XFD1048576"/><sheetData>'
        f"{row(1, 'email')}{row(2, 'ann@example.org')}{row(1048576, 'zed@example.org')}"
        "</sheetData></worksheet>",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as book:
        for name, text in members.items():
            book.writestr(name, text)
    return buffer.getvalue()


# ---- child processes ----------------------------------------------------------------------------------


def _read_edm(path: Path) -> int:
    from edm.contacts.sheets import open_table

    rows = 0
    with path.open("rb") as stream, open_table(stream, format="xlsx") as table:
        for _ in table.records:
            rows += 1
    return rows


def _read_openpyxl(path: Path) -> int:
    import openpyxl

    from edm.contacts.sheets import cell_text

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    rows = 0
    for values in book.worksheets[0].iter_rows(values_only=True):
        [cell_text(v) for v in values]
        rows += 1
    book.close()
    return rows - 1  # the header


def _child(reader: str, path: Path) -> None:
    started = time.perf_counter()
    rows = (_read_edm if reader == "edm" else _read_openpyxl)(path)
    print(
        json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "vm_hwm_mb": infra.vm_hwm_mb(os.getpid())})
    )


def read_in_child(reader: str, label: str, path: Path, *, timeout: float | None = None) -> Pass:
    """`reader` ("edm" or "openpyxl") reads `path` in a child process; killed after `timeout` seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_xlsx", "--read", reader, str(path)],
        cwd=infra.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = infra.RssSampler([proc.pid]).start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        sampler.stop()
        return Pass(
            label,
            None,
            time.perf_counter() - started,
            sampler.peak(proc.pid),
            f"still reading after {timeout:.0f} s: killed",
        )
    sampler.stop()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["?"])[-1]
        return Pass(label, None, seconds, sampler.peak(proc.pid), f"refused: {last[:200]}")
    reported = json.loads(out.strip().splitlines()[-1])
    return Pass(label, int(reported["rows"]), seconds, float(reported["vm_hwm_mb"] or sampler.peak(proc.pid)), "read")


# ---- the import ---------------------------------------------------------------------------------------


@dataclass
class ImportRun:
    rows: int
    bad_rows: int
    upload_s: float
    import_s: float
    rows_per_s: float
    peak_rss_mb: float
    status: str
    created: int
    errors: int
    checks_ok: bool


async def import_workbook(path: Path, rows: int, bad: int) -> ImportRun:
    from bench import bench_import
    from edm.models.contacts import Import

    settings, engine, sm = infra.fresh_database()
    try:
        user_id = await bench_import._user(sm)
        started = time.perf_counter()
        import_id = await bench_import._create(sm, settings, user_id, path)
        upload_s = time.perf_counter() - started
        seconds, vm_hwm, sampled = bench_import._run_worker(import_id)
        async with sm() as session:
            row = await session.get(Import, import_id)
        assert row is not None
        checks = row.status == "completed" and row.created == rows - bad and row.errors == bad
        return ImportRun(
            rows,
            bad,
            upload_s,
            seconds,
            rows / seconds,
            vm_hwm or sampled,
            str(row.status),
            row.created,
            row.errors,
            checks,
        )
    finally:
        await engine.dispose()


# ---- main ---------------------------------------------------------------------------------------------


def report_lines(passes: list[Pass], bomb: Pass, run: ImportRun | None, rows: int) -> list[str]:
    lines = [
        f"### XLSX: {rows:,}-row workbook and the dimension bomb",
        "",
        "| case | rows read | wall time | peak RSS | outcome |",
        "|---|---|---|---|---|",
    ]
    for p in [*passes, bomb]:
        shown = f"{p.rows:,}" if p.rows is not None else "–"
        lines.append(f"| {p.reader} | {shown} | {p.seconds:.1f} s | {p.peak_rss_mb:.0f} MB | {p.outcome} |")
    if run is not None:
        lines += [
            "",
            f"Import of the workbook by the `imports` job code: {run.import_s:.1f} s "
            f"({run.rows_per_s:,.0f} rows/s), peak RSS {run.peak_rss_mb:.0f} MB, upload (header "
            f"check + chunks) {run.upload_s:.1f} s; {run.status}: {run.created:,} created, "
            f"{run.errors:,} errors; checks {'ok' if run.checks_ok else 'FAILED'}.",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-import", action="store_true", help="reader passes and the bomb only")
    parser.add_argument("--read", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        _child(args.read[0], Path(args.read[1]))
        return
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / f"import-{args.rows}.xlsx"
    log(f"xlsx: writing {args.rows:,} rows to {path.relative_to(infra.ROOT)}")
    bad = write_workbook(path, args.rows)
    log(f"  {path.stat().st_size / 2**20:.1f} MB; reading it with each reader")
    passes = [
        read_in_child("edm", "edm open_table", path),
        read_in_child("openpyxl", "openpyxl read-only (reference)", path),
    ]
    bomb_path = RUN_DIR / "dimension-bomb.xlsx"
    bomb_path.write_bytes(dimension_bomb())
    log(f"  the dimension bomb ({bomb_path.stat().st_size:,} bytes), at most {BOMB_TIMEOUT:.0f} s")
    bomb = read_in_child(
        "edm", f"dimension bomb ({bomb_path.stat().st_size:,} bytes), edm open_table", bomb_path, timeout=BOMB_TIMEOUT
    )
    run = None if args.no_import else asyncio.run(import_workbook(path, args.rows, bad))
    print("\n".join(report_lines(passes, bomb, run, args.rows)))
    print(
        json.dumps(
            {"passes": [asdict(p) for p in passes], "bomb": asdict(bomb), "import": asdict(run) if run else None}
        )
    )
    path.unlink()
    bomb_path.unlink()


if __name__ == "__main__":
    main()
