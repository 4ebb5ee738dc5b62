"""XLSX import benchmark: the speed of a legitimate workbook and the cost of a hostile one, each beside a
reference measured in the same run.

    .venv/bin/python -m bench.bench_xlsx [--rows 100000] [--no-import] [--bomb-reference 30]

(also `python -m bench.run_all --only xlsx`, which writes the figures into bench/RESULTS.md).

1. A workbook of N rows (100,000; 20,000 with run_all --quick) is written with openpyxl's write-only mode:
   email, first and last name, phone (a number), company, city and a date; 1 % bad rows (0.5 % invalid
   addresses, 0.5 % repeats).
2. Reader passes, each in its own process (read time reported by the child, wall time from spawn to exit,
   peak RSS from VmHWM): `edm.contacts.sheets.open_table` over every record, and, as the reference,
   openpyxl's read-only `iter_rows(values_only=True)` turned into text the same way (how EDM read workbooks
   before); `--rounds` passes of each, alternated A B B A, medians reported.
3. The import (PostgreSQL; standalone in database `EDM_BENCH_DB`, default `edm_bench_xlsx`): created through
   `contacts.imports.create_import`, run by the worker's `imports` job code in a separate process (as in
   bench_import), wall time and VmHWM, beside the `open_table` pass of step 2; checks that created == the
   good rows and errors == the bad rows.
4. The dimension bomb: a 1.5 KB workbook that declares `A1:XFD1048576` and holds a header, one data row and
   one row numbered 1,048,576, read through `open_table` in a child process killed after 60 s, beside the
   same three rows with an honest dimension (`A1:A3`, rows 1–3). Then the old way, openpyxl read-only, on
   the bomb for a fixed budget (30 s): the rows it got through give its rate, and the time it would take to
   pad all 1,048,576 rows of 16,384 cells at that rate.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "EDM_BENCH_DB" not in os.environ:
    os.environ["EDM_BENCH_DB"] = "edm_bench_xlsx"  # never the shared edm_bench / edm_test databases

from bench import infra  # noqa: E402
from bench.infra import log  # noqa: E402

RUN_DIR = infra.ROOT / "var" / "bench"
BOMB_TIMEOUT = 60.0
# read_rounds: passes of each reader over the workbook, alternated A B B A … so a load that comes or goes
# during the run weighs on both (2 = one A B B A cycle); the bomb and its honest twin, being cheap, get 3.
FULL: dict[str, Any] = {"rows": 100_000, "bomb_reference_s": 30.0, "read_rounds": 2}
QUICK: dict[str, Any] = {"rows": 20_000, "bomb_reference_s": 10.0, "read_rounds": 1}
BOMB_ROUNDS = 3
BOMB_ROWS = 1_048_576


@dataclass
class Pass:
    """One reading of a file in a child process."""

    reader: str
    rows: int | None  # data records read; None when the child was killed or failed
    seconds: float  # wall time, spawn to exit
    peak_rss_mb: float  # VmHWM reported by the child, or the sampled peak when it was killed
    outcome: str
    read_s: float | None = None  # the reading alone, timed by the child
    finished: bool = True  # False: the child stopped at its time budget
    declared_rows: int | None = None  # data rows the sheet says it has (openpyxl's max_row − the header)
    rounds_read_s: list[float] = field(default_factory=list)  # every pass's read time, when there were several
    rows_s: float | None = None  # of read_s, the time spent in the rows (not importing and opening)

    @property
    def estimate_s(self) -> float | None:
        """For a pass stopped at its budget: the time to read every declared row at the rate it had."""
        if self.finished or not self.rows or not self.read_s or not self.declared_rows:
            return None
        rows_s = self.rows_s if self.rows_s is not None else self.read_s
        return self.read_s - rows_s + rows_s * self.declared_rows / self.rows


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


def tiny_workbook(dimension: str, last_row: int) -> bytes:
    """A workbook declaring `dimension`, holding rows 1, 2 and `last_row` only."""
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
        "xl/worksheets/sheet1.xml": f'<worksheet xmlns="{main}"><dimension ref="{dimension}"/><sheetData>'
        f"{row(1, 'email')}{row(2, 'ann@example.org')}{row(last_row, 'zed@example.org')}"
        "</sheetData></worksheet>",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as book:
        for name, text in members.items():
            book.writestr(name, text)
    return buffer.getvalue()


def dimension_bomb() -> bytes:
    """A workbook declaring the whole sheet (A1:XFD1048576) with rows 1, 2 and 1,048,576 only."""
    return tiny_workbook("A1:XFD1048576", BOMB_ROWS)


def honest_workbook() -> bytes:
    """The bomb's three rows, numbered 1–3 under an honest dimension: the floor of reading them."""
    return tiny_workbook("A1:A3", 3)


# ---- child processes ----------------------------------------------------------------------------------


def _read_edm(path: Path, budget: float | None) -> dict[str, Any]:
    from edm.contacts.sheets import open_table

    rows = 0
    with path.open("rb") as stream, open_table(stream, format="xlsx") as table:
        for _ in table.records:
            rows += 1
    return {"rows": rows, "finished": True, "declared_rows": None, "rows_s": None}


def _read_openpyxl(path: Path, budget: float | None) -> dict[str, Any]:
    """openpyxl's read-only rows turned into text, as EDM read workbooks before; stops after `budget` s."""
    import openpyxl

    from edm.contacts.sheets import cell_text

    started = time.perf_counter()
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    sheet = book.worksheets[0]
    declared = sheet.max_row
    rows, finished = 0, True
    rows_started = time.perf_counter()
    for values in sheet.iter_rows(values_only=True):
        [cell_text(v) for v in values]
        rows += 1
        if budget is not None and time.perf_counter() - started > budget:
            finished = False
            break
    rows_s = time.perf_counter() - rows_started
    book.close()
    return {
        "rows": rows - 1,
        "finished": finished,
        "declared_rows": declared - 1 if declared else None,
        "rows_s": rows_s,
    }


def _child(reader: str, path: Path, budget: float | None) -> None:
    started = time.perf_counter()
    out = (_read_edm if reader == "edm" else _read_openpyxl)(path, budget)
    out.update(seconds=time.perf_counter() - started, vm_hwm_mb=infra.vm_hwm_mb(os.getpid()))
    print(json.dumps(out))


def read_in_child(
    reader: str, label: str, path: Path, *, timeout: float | None = None, budget: float | None = None
) -> Pass:
    """`reader` ("edm" or "openpyxl") reads `path` in a child process; killed after `timeout` seconds. With
    `budget`, the openpyxl reader stops by itself after that many seconds and says how far it got."""
    started = time.perf_counter()
    argv = [sys.executable, "-m", "bench.bench_xlsx", "--read", reader, str(path)]
    proc = subprocess.Popen(
        argv + (["--budget", str(budget)] if budget is not None else []),
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
            finished=False,
        )
    sampler.stop()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["?"])[-1]
        return Pass(label, None, seconds, sampler.peak(proc.pid), f"refused: {last[:200]}")
    reported = json.loads(out.strip().splitlines()[-1])
    finished = bool(reported["finished"])
    outcome = "read" if finished else f"stopped at its {budget:.0f} s budget"
    return Pass(
        label,
        int(reported["rows"]),
        seconds,
        float(reported["vm_hwm_mb"] or sampler.peak(proc.pid)),
        outcome,
        read_s=float(reported["seconds"]),
        finished=finished,
        declared_rows=reported["declared_rows"],
        rows_s=reported["rows_s"],
    )


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


async def import_workbook(sm: Any, settings: Any, path: Path, rows: int, bad: int) -> ImportRun:
    from bench import bench_import
    from edm.models.contacts import Import

    user_id = await bench_import._user(sm)
    started = time.perf_counter()
    import_id = await bench_import._create(sm, settings, user_id, path)
    upload_s = time.perf_counter() - started
    log(f"  import {import_id} queued in {upload_s:.1f} s; importing in a separate process")
    seconds, vm_hwm, sampled = bench_import._run_worker(import_id)
    async with sm() as session:
        row = await session.get(Import, import_id)
    assert row is not None
    checks = row.status == "completed" and row.created == rows - bad and row.errors == bad
    log(
        f"  imported in {seconds:.1f} s ({rows / seconds:,.0f} rows/s), peak RSS {vm_hwm or sampled:.0f} MB; "
        f"created {row.created:,}, errors {row.errors:,}; checks {'ok' if checks else 'FAILED'}"
    )
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


# ---- the run ------------------------------------------------------------------------------------------


@dataclass
class XlsxResult:
    rows: int
    bad_rows: int
    file_mb: float
    edm: Pass
    openpyxl: Pass  # reference of `edm`
    bomb_bytes: int
    bomb: Pass
    honest: Pass  # reference of `bomb`: the same rows with an honest dimension
    bomb_openpyxl: Pass  # the old reader on the bomb, for a budget
    import_run: ImportRun | None


def alternate(a: Callable[[], Pass], b: Callable[[], Pass], rounds: int) -> tuple[Pass, Pass]:
    """Each reader `rounds` times, in the order A B B A A B …; each side's passes combined into one: the median
    read and wall times, the largest peak RSS, the first failure's outcome."""
    runs: dict[int, list[Pass]] = {0: [], 1: []}
    for r in range(rounds):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            done = (a if which == 0 else b)()
            _log_pass(done)
            runs[which].append(done)
    return _combine(runs[0]), _combine(runs[1])


def _combine(passes: list[Pass]) -> Pass:
    if len(passes) == 1:
        return passes[0]
    failed = [p for p in passes if p.rows is None or not p.finished]
    if failed:
        return failed[0]
    reads = [p.read_s for p in passes if p.read_s is not None]
    return replace(
        passes[0],
        seconds=statistics.median(p.seconds for p in passes),
        peak_rss_mb=max(p.peak_rss_mb for p in passes),
        read_s=statistics.median(reads) if reads else None,
        rounds_read_s=reads,
    )


def _log_pass(p: Pass) -> None:
    read = f"read {p.read_s:.2f} s, " if p.read_s is not None else ""
    rows = f"{p.rows:,} rows" if p.rows is not None else "no rows"
    log(f"  {p.reader}: {rows}, {read}wall {p.seconds:.2f} s, peak RSS {p.peak_rss_mb:.0f} MB; {p.outcome}")


async def run(
    sm: Any | None, settings: Any | None, *, rows: int, bomb_reference_s: float, read_rounds: int = 1
) -> XlsxResult:
    """The reader passes, the bomb, and the import when `sm` is given (a migrated database)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / f"import-{rows}.xlsx"
    log(f"xlsx: writing {rows:,} rows to {path.relative_to(infra.ROOT)}")
    bad = write_workbook(path, rows)
    file_mb = path.stat().st_size / 2**20
    log(f"  {file_mb:.1f} MB; reading it with each reader (child processes), {read_rounds} round(s) alternated")
    edm_pass, openpyxl_pass = alternate(
        lambda: read_in_child("edm", "edm open_table", path),
        lambda: read_in_child("openpyxl", "openpyxl read-only + cell_text", path),
        read_rounds,
    )
    bomb_path, honest_path = RUN_DIR / "dimension-bomb.xlsx", RUN_DIR / "dimension-honest.xlsx"
    bomb_path.write_bytes(dimension_bomb())
    honest_path.write_bytes(honest_workbook())
    bomb_bytes = bomb_path.stat().st_size
    log(f"  the dimension bomb ({bomb_bytes:,} bytes) and its honest twin, at most {BOMB_TIMEOUT:.0f} s each")
    bomb, honest = alternate(
        lambda: read_in_child("edm", "edm open_table (bomb)", bomb_path, timeout=BOMB_TIMEOUT),
        lambda: read_in_child("edm", "edm open_table (honest)", honest_path, timeout=BOMB_TIMEOUT),
        BOMB_ROUNDS,
    )
    log(f"  openpyxl on the bomb for {bomb_reference_s:.0f} s (how EDM read it before)")
    bomb_openpyxl = read_in_child(
        "openpyxl",
        "openpyxl read-only + cell_text",
        bomb_path,
        timeout=bomb_reference_s + BOMB_TIMEOUT,
        budget=bomb_reference_s,
    )
    _log_pass(bomb_openpyxl)
    if bomb_openpyxl.estimate_s:
        log(f"    at that rate all {bomb_openpyxl.declared_rows:,} rows: ~{bomb_openpyxl.estimate_s / 60:.0f} min")
    run_ = None if sm is None else await import_workbook(sm, settings, path, rows, bad)
    path.unlink()
    bomb_path.unlink()
    honest_path.unlink()
    return XlsxResult(rows, bad, file_mb, edm_pass, openpyxl_pass, bomb_bytes, bomb, honest, bomb_openpyxl, run_)


# ---- reporting ----------------------------------------------------------------------------------------


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}×" if value and reference else "–"


def _big_ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:,.0f}×" if value and reference else "–"


def _rounds(p: dict[str, Any], what: str) -> str:
    n = len(p.get("rounds_read_s") or []) or 1
    return f"{what}: medians of {n} passes per reader, alternated" if n > 1 else f"{what}: one pass per reader"


def _pass_text(p: dict[str, Any]) -> str:
    read = f"{p['read_s']:.2f} s" if p["read_s"] is not None else "–"
    rows = f"{p['rows']:,} rows" if p["rows"] is not None else "no rows"
    return f"{read} (wall {p['seconds']:.2f} s), {p['peak_rss_mb']:.0f} MB, {rows}, {p['outcome']}"


def report_lines(r: dict[str, Any]) -> list[str]:
    edm, ref = r["edm"], r["openpyxl"]
    bomb, honest, old = r["bomb"], r["honest"], r["bomb_openpyxl"]
    lines = [
        f"### (i) XLSX: a {r['rows']:,}-row workbook ({r['file_mb']:.1f} MB, {r['bad_rows']:,} bad rows) and the "
        f"dimension bomb ({r['bomb_bytes']:,} bytes declaring `A1:XFD1048576`)",
        "",
        "Each reader in its own process: read time timed by the child (wall time from spawn to exit), peak RSS "
        f"(VmHWM), rows read; {_rounds(edm, 'the workbook')}, {_rounds(bomb, 'the bomb and its twin')}. Ratios "
        "are of the read times (for the import and the upload, of wall times).",
        "",
        "| measure | value | reference (same run) | ratio |",
        "|---|---|---|---|",
        f"| read the workbook: edm `open_table` | {_pass_text(edm)} | openpyxl read-only + `cell_text` (how EDM "
        f"read workbooks before): {_pass_text(ref)} | {_ratio(edm['read_s'], ref['read_s'])} |",
    ]
    run_ = r.get("import_run")
    if run_ is not None:
        lines += [
            f"| import by the `imports` job code (separate process, spawn → exit) | {run_['import_s']:.1f} s "
            f"({run_['rows_per_s']:,.0f} rows/s), peak RSS {run_['peak_rss_mb']:.0f} MB | the edm `open_table` "
            f"pass of the same file: wall {edm['seconds']:.2f} s | {_ratio(run_['import_s'], edm['seconds'])} |",
            f"| upload (header check + file stored in import_chunks) | {run_['upload_s']:.2f} s | the edm "
            f"`open_table` pass: wall {edm['seconds']:.2f} s | {_ratio(run_['upload_s'], edm['seconds'])} |",
        ]
    lines.append(
        f"| dimension bomb: edm `open_table` | {_pass_text(bomb)} | the same 3 rows under an honest dimension "
        f"(`A1:A3`): {_pass_text(honest)} | {_ratio(bomb['read_s'], honest['read_s'])} |"
    )
    estimate = Pass(**old).estimate_s
    if estimate is not None:
        lines.append(
            f"| dimension bomb: openpyxl read-only + `cell_text` (the old way), for a budget | stopped after "
            f"{old['read_s']:.1f} s at data row {old['rows']:,} of {old['declared_rows']:,} (rows of 16,384 cells), "
            f"{old['peak_rss_mb']:.0f} MB: **~{estimate / 60:.0f} min** for the whole sheet at that rate | the edm "
            f"`open_table` read of the bomb: {bomb['read_s'] or 0:.2f} s | {_big_ratio(estimate, bomb['read_s'])} |"
        )
    else:
        lines.append(
            f"| dimension bomb: openpyxl read-only + `cell_text` (the old way) | {_pass_text(old)} | the edm "
            f"`open_table` read of the bomb: {bomb['read_s'] or 0:.2f} s | {_ratio(old['read_s'], bomb['read_s'])} |"
        )
    if run_ is not None:
        lines += [
            "",
            f"Import result: {run_['status']}: {run_['created']:,} created, {run_['errors']:,} errors; checks "
            f"{'ok' if run_['checks_ok'] else 'FAILED'}.",
        ]
    return lines


# ---- main ---------------------------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> XlsxResult:
    if args.no_import:
        return await run(None, None, rows=args.rows, bomb_reference_s=args.bomb_reference, read_rounds=args.rounds)
    settings, engine, sm = infra.fresh_database()
    try:
        return await run(sm, settings, rows=args.rows, bomb_reference_s=args.bomb_reference, read_rounds=args.rounds)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL["rows"])
    parser.add_argument("--no-import", action="store_true", help="reader passes and the bomb only")
    parser.add_argument(
        "--bomb-reference",
        type=float,
        default=FULL["bomb_reference_s"],
        help="seconds openpyxl reads the bomb for (its rate gives the time to finish)",
    )
    parser.add_argument(
        "--rounds", type=int, default=FULL["read_rounds"], help="passes of each reader over the workbook, alternated"
    )
    parser.add_argument("--read", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        _child(args.read[0], Path(args.read[1]), args.budget)
        return
    result = asyncio.run(_main(args))
    print("\n".join(report_lines(asdict(result))))


if __name__ == "__main__":
    main()
