"""Contacts benchmark (docs/contacts.md#performance-on-postgresql-1000000-contacts-of-one-user,
docs/tasks.md#selection-and-the-estimate) on PostgreSQL with 1,000,000 contacts of one user: list/search page latency,
the recipient estimate of a tag rule, and a streamed export's time and peak memory, each beside a reference measured in
the same run.

    .venv/bin/python -m bench.bench_contacts [--quick] [--reads 30]

(also `python -m bench.run_all --only contacts`, which writes the figures into bench/RESULTS.md).

1. A fresh database (`EDM_BENCH_DB`, default `edm_bench_contacts` here), 1,000,000 contacts (bench/seed.py,
   set-based) with a tag `half` on the first 500,000 and a child `vip` (of `half`) on every 10th of the first 100,000.
2. Search pages (limit 50), each in its own session as an API request makes it, through
   `contacts.service.list_contacts`: the first page by id, a deep page (cursor at 900,000), a free-text search,
   a tag filter (`vip`), `attr.n=777` and the sorts `-created`, `updated`, `name` (indexed by migration 0003) and
   `-last_activity` (not indexed); beside `SELECT 1` (the floor).
3. `tasks.recipients.estimate` for `include_tag_ids=[half]` (a parent: its child's members too), after
   `VACUUM ANALYZE` of the fresh tables (what autovacuum does soon after a bulk load), beside a plain
   `SELECT count(*)` of the tag's memberships.
4. `edm contact export --user bench --out FILE` of every contact in a separate process, its peak RSS sampled
   every 0.1 s (and the kernel's VmHWM), beside `COPY (SELECT … FROM contacts) TO STDOUT` of the same rows.

Targets: search p95 ≤ 200 ms, estimate ≤ 1 s, export RSS ≤ 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

if __name__ == "__main__" and "EDM_BENCH_DB" not in os.environ:
    os.environ["EDM_BENCH_DB"] = "edm_bench_contacts"  # never the shared edm_bench / edm_test databases

from bench import infra  # noqa: E402
from bench.infra import log  # noqa: E402

RUN_DIR = infra.ROOT / "var" / "bench"
FULL: dict[str, Any] = {"contacts": 1_000_000, "reads": 30}
QUICK: dict[str, Any] = {"contacts": 100_000, "reads": 15}
TARGETS = {"search_p95_ms": 200.0, "estimate_s": 1.0, "export_rss_mb": 200.0}


@dataclass
class Timing:
    reads: int
    p50_ms: float
    p95_ms: float
    max_ms: float


@dataclass
class ContactsResult:
    contacts: int
    searches: dict[str, Timing] = field(default_factory=dict)
    select_1: Timing | None = None
    estimate: Timing | None = None
    count_reference: Timing | None = None
    estimate_figures: dict[str, Any] = field(default_factory=dict)
    export_s: float = 0.0
    export_rows: int = 0
    export_bytes: int = 0
    export_rss_mb: float = 0.0
    export_hwm_mb: float | None = None
    copy_s: float = 0.0
    copy_bytes: int = 0


async def timed(sm: Any, fn: Any, reads: int, budget_s: float = 20.0) -> Timing:
    """`reads` runs (fewer, at least 5, when they would take more than `budget_s`), each in a fresh session."""
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(reads):
        if len(times) >= 5 and time.perf_counter() - started > budget_s:
            break
        t0 = time.perf_counter()
        async with sm() as session:
            await fn(session)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return Timing(len(times), statistics.median(times), times[max(0, -(-len(times) * 95 // 100) - 1)], times[-1])


async def tags(sm: Any, user_id: int, contacts: int) -> tuple[int, int]:
    from sqlalchemy import select, text

    from bench import seed
    from edm.db.session import unit_of_work
    from edm.models.contacts import Tag

    async with sm() as session:
        found = dict((await session.execute(select(Tag.name, Tag.id).where(Tag.user_id == user_id))).all())
    if "half" in found and "vip" in found:
        return found["half"], found["vip"]
    async with unit_of_work(sm) as session:
        half = await seed.tag_first(session, user_id=user_id, name="half", first_n=contacts // 2)
        vip = Tag(user_id=user_id, name="vip", parent_id=half)
        session.add(vip)
        await session.flush()
        await session.execute(
            text("""
            INSERT INTO contact_tags (contact_id, tag_id, created_at)
            SELECT id, :tag, now() FROM (SELECT id FROM contacts WHERE user_id = :user_id ORDER BY id LIMIT :n) s
            WHERE id % 10 = 0"""),
            {"tag": vip.id, "user_id": user_id, "n": contacts // 10},
        )
    # VACUUM as autovacuum would within a minute of the bulk load: it sets the visibility map, without which
    # every index-only scan of the fresh memberships fetches the heap (620,000 fetches in the estimate).
    async with sm.kw["bind"].connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE contacts"))
        await conn.execute(text("VACUUM ANALYZE contact_tags"))
    return half, vip.id


async def run(sm: Any, world: Any, *, contacts: int, reads: int) -> ContactsResult:
    from sqlalchemy import select, text

    from edm.clock import utc_now
    from edm.contacts import service
    from edm.contacts.filters import ContactFilter, Sort
    from edm.models.contacts import Contact
    from edm.paging import Page
    from edm.tasks.recipients import Rule, estimate

    res = ContactsResult(contacts)
    user_id = world.user_id
    half, vip = await tags(sm, user_id, contacts)
    async with sm() as session:
        ids = list(
            await session.scalars(
                select(Contact.id)
                .where(Contact.user_id == user_id)
                .order_by(Contact.id)
                .offset(contacts * 9 // 10)
                .limit(1)
            )
        )
    deep = ids[0] if ids else 0
    page = Page(50, None)
    cases: dict[str, tuple[ContactFilter, Page, Sort]] = {
        "first page (by id)": (ContactFilter(), page, Sort()),
        "deep page (cursor at 90 %)": (ContactFilter(), Page(50, deep), Sort()),
        "text search `q=person77777`": (ContactFilter(q="person77777"), page, Sort()),
        "text search `q=grace` (many hits)": (ContactFilter(q="grace"), page, Sort()),
        "tag filter (`vip`, 10,000 members)": (ContactFilter(tag_ids=(vip,)), page, Sort()),
        "attribute `attr.n=777`": (ContactFilter(attributes=(("n", "777"),)), page, Sort()),
        "sort by `-created`": (ContactFilter(), page, Sort("created", True)),
        "sort by `updated`": (ContactFilter(), page, Sort("updated", False)),
        "sort by `name`": (ContactFilter(), page, Sort("name", False)),
        "sort by `-last_activity` (no index)": (ContactFilter(), page, Sort("last_activity", True)),
    }

    async def searches(into: dict[str, Timing], labels: Any) -> None:
        for label in labels:
            filters, pg, sort = cases[label]

            async def one(session: Any, filters: Any = filters, pg: Any = pg, sort: Any = sort) -> Any:
                return await service.list_contacts(session, user_id=user_id, page=pg, filters=filters, sort=sort)

            into[label] = await timed(sm, one, reads)
            log(f"  {label}: p50 {into[label].p50_ms:.1f} ms, p95 {into[label].p95_ms:.1f} ms")

    await searches(res.searches, cases)

    async def select_one(session: Any) -> Any:
        return (await session.execute(text("SELECT 1"))).scalar()

    res.select_1 = await timed(sm, select_one, reads)

    rule = Rule.parse({"type": "tag_based", "include_tag_ids": [half]})

    async def run_estimate(session: Any) -> Any:
        res.estimate_figures = await estimate(session, user_id=user_id, rule=rule, now=utc_now())

    async def count_members(session: Any) -> Any:
        return (
            await session.execute(text("SELECT count(*) FROM contact_tags WHERE tag_id = :t"), {"t": half})
        ).scalar()

    res.estimate = await timed(sm, run_estimate, max(3, reads // 5))
    res.count_reference = await timed(sm, count_members, max(3, reads // 5))
    log(
        f"  estimate: p50 {res.estimate.p50_ms:.0f} ms ({res.estimate_figures.get('candidates')} candidates); "
        f"count(*) {res.count_reference.p50_ms:.0f} ms"
    )
    export(res)
    copy_reference(res, user_id)
    return res


def export(res: ContactsResult) -> None:
    import psutil

    out = RUN_DIR / "contacts-export.csv"
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(infra.BIN / "edm"), "contact", "export", "--user", "bench", "--out", str(out)],
        env=infra.edm_env(),
        stderr=subprocess.PIPE,
    )
    ps = psutil.Process(proc.pid)
    peak, hwm = 0.0, None
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss / 2**20)
            hwm = infra.vm_hwm_mb(proc.pid) or hwm
        except psutil.Error:
            break
        time.sleep(0.1)
    res.export_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"edm contact export failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    res.export_rss_mb, res.export_hwm_mb = peak, hwm
    res.export_bytes = out.stat().st_size
    with out.open("rb") as f:
        res.export_rows = sum(1 for _ in f) - 1  # no newline inside the seeded cells
    out.unlink()
    log(
        f"  export: {res.export_rows:,} rows, {res.export_bytes / 2**20:.0f} MB in {res.export_s:.1f} s, "
        f"peak RSS {peak:.0f} MB (VmHWM {hwm})"
    )


def copy_reference(res: ContactsResult, user_id: int) -> None:
    import psycopg

    t0 = time.perf_counter()
    size = 0
    with (
        psycopg.connect(infra.db_url()) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY (SELECT * FROM contacts WHERE user_id = %s ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
            (user_id,),
        ) as copy,
    ):
        for chunk in copy:
            size += len(chunk)
    res.copy_s, res.copy_bytes = time.perf_counter() - t0, size
    log(f"  COPY reference: {size / 2**20:.0f} MB in {res.copy_s:.1f} s")


def ok(flag: bool) -> str:
    return "✅" if flag else "❌"


def report_lines(r: dict[str, Any]) -> list[str]:
    def row(label: str, t: dict[str, Any]) -> str:
        return f"| {label} | {t['reads']} | {t['p50_ms']:.1f} ms | **{t['p95_ms']:.1f} ms** | {t['max_ms']:.1f} ms |"

    indexed = {label: t for label, t in r["searches"].items() if "no index" not in label}
    worst = max(t["p95_ms"] for t in indexed.values())
    lines = [
        f"### Contacts: {r['contacts']:,} contacts of one user (PostgreSQL, each read in a fresh session)",
        "",
        "| query (limit 50) | reads | p50 | p95 | max |",
        "|---|---|---|---|---|",
    ]
    lines += [row(label, t) for label, t in r["searches"].items()]
    lines += [
        row("`SELECT 1` (floor: check-out + one round trip)", r["select_1"]),
        "",
        f"Search p95 worst {worst:.0f} ms over the indexed shapes (target ≤ {TARGETS['search_p95_ms']:.0f} ms) "
        f"{ok(worst <= TARGETS['search_p95_ms'])}, with the indexes of migration 0003. The `last_activity` "
        "sort (the greatest of four timestamps) has no index and sorts all of the user's contacts.",
        "",
        "| estimate | reads | p50 | p95 | max |",
        "|---|---|---|---|---|",
        row(
            f"`estimate` tag rule (parent `half`, {r['estimate_figures'].get('candidates', 0):,} candidates)",
            r["estimate"],
        ),
        row("reference `SELECT count(*)` of the tag's memberships", r["count_reference"]),
        "",
        f"Estimate p95 {r['estimate']['p95_ms'] / 1000:.2f} s (target ≤ {TARGETS['estimate_s']:.0f} s) "
        f"{ok(r['estimate']['p95_ms'] / 1000 <= TARGETS['estimate_s'])}. The estimate is "
        "`tasks/recipients.py`: the rule's candidates minus the two hashed suppression subqueries (user and "
        "global lists, by address and by domain).",
        "",
        f"Export: `edm contact export` of {r['export_rows']:,} rows ({r['export_bytes'] / 2**20:.0f} MB) in "
        f"{r['export_s']:.1f} s ({r['export_rows'] / max(r['export_s'], 1e-9):,.0f} rows/s), peak RSS "
        f"**{r['export_rss_mb']:.0f} MB** (VmHWM {r['export_hwm_mb'] or 0:.0f} MB; target ≤ "
        f"{TARGETS['export_rss_mb']:.0f} MB {ok(r['export_rss_mb'] <= TARGETS['export_rss_mb'])}); reference "
        f"`COPY … TO STDOUT` of the same rows: {r['copy_bytes'] / 2**20:.0f} MB in {r['copy_s']:.1f} s.",
        "",
    ]
    return lines


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from bench import seed

    sizes = dict(QUICK if args.quick else FULL)
    if args.reads:
        sizes["reads"] = args.reads
    if args.reuse:
        engine, sm, world = await reuse_database()
    else:
        log(f"fresh database {infra.DB_NAME}; edm db upgrade")
        settings, engine, sm = infra.fresh_database(pool_size=2)
    try:
        if not args.reuse:
            t0 = time.perf_counter()
            world = await seed.seed(sm, settings, contacts=sizes["contacts"], tags={}, sink_port=infra.free_port())
            log(f"seeded {sizes['contacts']:,} contacts in {time.perf_counter() - t0:.1f} s")
        result = await run(sm, world, contacts=sizes["contacts"], reads=sizes["reads"])
    finally:
        await engine.dispose()
    return asdict(result)


async def reuse_database() -> tuple[Any, Any, Any]:
    """The bench database of a previous run as it is (its `bench` user and contacts), to measure again."""
    from types import SimpleNamespace

    from sqlalchemy import text

    from edm.db.engine import make_engine, make_sessionmaker

    os.environ.update({k: v for k, v in infra.edm_env().items() if k.startswith("EDM_")})
    engine = make_engine(infra.db_url(), pool_size=2)
    sm = make_sessionmaker(engine)
    async with sm() as session:
        user_id = (await session.execute(text("SELECT id FROM users WHERE username = 'bench'"))).scalar_one()
    log(f"reusing {infra.DB_NAME} (user {user_id})")
    return engine, sm, SimpleNamespace(user_id=user_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 contacts")
    parser.add_argument("--reads", type=int, help="timed reads per query")
    parser.add_argument("--reuse", action="store_true", help="measure the existing bench database again")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    started = time.monotonic()
    header = run_header(quick=args.quick)
    res = asyncio.run(main_async(args))
    print()
    print("\n".join(report_lines(res)))
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"results-contacts-{'quick' if args.quick else 'full'}.json").write_text(
        json.dumps(res, indent=2, default=str)
    )
    if not args.no_write:
        write_block(res, {**header, "duration_s": time.monotonic() - started})


def run_header(*, quick: bool) -> dict[str, Any]:
    """What run_all records about a run (machine, load at start, code), for the RESULTS.md block."""
    import datetime as dt

    from bench import run_all

    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": quick,
        "machine": run_all.machine(),
        "code": run_all.code_version(),
        "env": infra.passthrough(),
        "max_concurrency": None,
    }


def write_block(res: dict[str, Any], header: dict[str, Any]) -> None:
    """The `contacts` block of bench/RESULTS.md, as `run_all --only contacts` writes it."""
    from bench import run_all

    full = {**header, "pg": infra.pg_settings(), "contacts": res}
    run_all.write_section_results("contacts", "Contacts", run_all.report_section(full, report_lines(res)), full)


if __name__ == "__main__":
    main()
