"""Past a million (issue 16): a task of 10,000,000 recipients on PostgreSQL, each figure beside the same figure
for a 1,000,000-recipient task measured in the same run on the same database. On demand only: `make bench`
does not run it.

    .venv/bin/python -m bench.bench_scale [--recipients 10000000] [--reference 1000000] [--claim-seconds 30]

(also `python -m bench.run_all --only scale [--scale-recipients N]`, which writes the block into bench/RESULTS.md).

Set-up: a fresh database of its own (`<EDM_BENCH_DB>_scale`, `edm_bench_scale` by default; dropped at the end),
one user with `recipients` contacts (one INSERT … SELECT over generate_series, bench/seed.py), a tag on the
first `reference` contacts and one on the first `small` contacts, the bench's two SMTP services (interval 0,
quota 10⁹; nothing is sent: no SMTP is opened). Then, for the reference task first and the large task second
(the reference is deleted before the large task is generated, so each runs on a table that holds its own rows,
plus the dead ones it left):

1. generation: the worker's own `generation.generate` (one transaction), rows/s; beside it a bare
   `INSERT … SELECT` of as many narrow rows into an unindexed temporary table (the floor of writing rows);
2. the first 10 % of the task marked sent by set-based UPDATEs (what a worker's outcomes leave: dead entries at
   the head of the claim's partial index), so 90 % of the rows wait;
3. claims while 90 % wait: `queue.claim` of ≤ 100 for one service (as a worker claims), each followed by
   `queue.record` of an accepted outcome for every item (as a worker records), for `claim_seconds`: claim and
   record transaction p50/p99 and rows claimed per second of the loop;
4. with the task paused, a small task (`small` recipients) of the same owner: its claims (`queue.claim`, then
   `queue.release` of the items, so it never runs out) while the table holds the big task's rows;
5. statistics: `tasks.stats.task_stats` in a fresh session (as the API reads them) × `stats_reads`, beside the
   aggregate over the task's rows (`stats._row_groups`) × `aggregate_reads`;
6. cancel: the product's `tasks.service.cancel` in one unit of work (as `POST /tasks/{id}/cancel` runs it: the
   task stops and is refunded; a task this large leaves its pending SubTasks to the sweep), timed; then the worker's
   `sweep` job (`tasks.sweep.drain`) cancelling them, 10,000 a transaction, timed;
7. deletion: `tasks.service.delete_task` in one unit of work (as `DELETE /tasks/{id}` runs it: a task this large
   is only marked `deleting`), timed; then the worker's `sweep` job (`tasks.sweep.drain`: batches of
   10,000 SubTasks, a transaction each), timed, while the small task keeps claiming beside it (its claim latency
   shows whether the deletion blocks other tasks); the table's size and dead rows after it, and the
   `VACUUM subtasks` that reclaims them, timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import infra
from bench.infra import log

RUN_DIR = infra.ROOT / "var" / "bench"
FULL: dict[str, Any] = {
    "recipients": 10_000_000,
    "reference": 1_000_000,
    "small": 20_000,
    "claim_seconds": 30.0,
    "stats_reads": 20,
    "aggregate_reads": 2,
}
QUICK: dict[str, Any] = {
    "recipients": 200_000,
    "reference": 20_000,
    "small": 2_000,
    "claim_seconds": 5.0,
    "stats_reads": 10,
    "aggregate_reads": 2,
}
CLAIM = 100  # rows per claim, as a worker with 100 free slots claims
MARK_CHUNK = 250_000  # rows per UPDATE when marking the first 10 % sent
WORKER = "bench-scale"

FLOOR_SQL = """
CREATE TEMPORARY TABLE scale_floor ON COMMIT DROP AS
SELECT i AS seq, CAST(:task AS bigint) AS task_id, 'person' || i || '@rcpt.bench.example' AS recipient_email,
       CAST('pending' AS varchar(16)) AS send_state
FROM generate_series(1, CAST(:n AS bigint)) AS i
"""
MARK_SENT_SQL = """
UPDATE subtasks SET send_state = 'sent', attempts = 1, service_id = :service, sent_at = :now
WHERE task_id = :task AND seq > :low AND seq <= :high AND send_state = 'pending'
"""
SIZE_SQL = """
SELECT pg_total_relation_size('subtasks'), pg_relation_size('subtasks'),
       coalesce((SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'subtasks'), 0),
       coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'subtasks'), 0)
"""


@dataclass
class Latency:
    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class ClaimRun:
    seconds: float
    claims: int
    rows: int
    empty: int  # claims that returned nothing
    claim: Latency
    after: Latency  # the record (or release) transaction that follows each claim

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass
class SizeRun:
    recipients: int
    rows: int
    generate_s: float
    floor_s: float  # bare INSERT … SELECT of as many narrow rows, unindexed temporary table
    mark_s: float
    claims: ClaimRun
    small_claims: ClaimRun  # the small task's claims, this task paused beside it
    stats: Latency
    aggregate: Latency
    stats_equal: bool
    cancel_s: float  # the product's cancel (one request)
    cancelled: int  # pending SubTasks the sweep cancelled
    cancel_sweep_s: float  # the sweep cancelling them
    request_s: float  # `delete_task` as the request runs it
    delete_s: float  # the background deletion (`deletion.drain`)
    during_delete: ClaimRun  # the small task's claims while the deletion ran
    table_before: dict[str, int] = field(default_factory=dict)  # sizes before the delete
    table_after: dict[str, int] = field(default_factory=dict)  # sizes right after it (dead rows)
    vacuum_s: float = 0.0
    table_vacuumed: dict[str, int] = field(default_factory=dict)


@dataclass
class ScaleResult:
    recipients: int
    reference: int
    small: int
    claim_seconds: float
    seed_s: float
    sizes: list[SizeRun]
    load: list[float]  # 1, 5, 15-minute load averages at the end


def latency(samples: list[float]) -> Latency:
    if not samples:
        return Latency(0, 0.0, 0.0, 0.0)
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) >= 2 else ordered * 99
    return Latency(len(ordered), 1000 * q[49], 1000 * q[98], 1000 * ordered[-1])


async def table_size(sm: Any) -> dict[str, int]:
    from sqlalchemy import text

    async with sm() as session:
        await session.execute(text("SELECT pg_stat_force_next_flush()"))
    async with sm() as session:
        total, heap, live, dead = (await session.execute(text(SIZE_SQL))).one()
    return {"total_bytes": int(total), "heap_bytes": int(heap), "live": int(live), "dead": int(dead)}


async def claim_loop(
    sm: Any, service_id: int, *, seconds: float, release: bool, stop: asyncio.Event | None = None
) -> ClaimRun:
    """`queue.claim` of ≤ CLAIM for `service_id`, each followed by `queue.record` (accepted) or `queue.release`,
    for `seconds` or until `stop` is set."""
    from edm.clock import utc_now
    from edm.db.session import unit_of_work
    from edm.dispatch import queue
    from edm.providers.base import Outcome, SendResult
    from edm.system.runtime_settings import Policy

    claim_times: list[float] = []
    after_times: list[float] = []
    rows = empty = 0
    started = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - started
        if (stop is not None and stop.is_set()) or (stop is None and elapsed >= seconds):
            break
        t0 = time.perf_counter()
        async with unit_of_work(sm) as session:
            claim = await queue.claim(session, service_id=service_id, worker_id=WORKER, now=utc_now(), max_items=CLAIM)
        claim_times.append(time.perf_counter() - t0)
        if claim is None or not claim.items:
            empty += 1
            await asyncio.sleep(0.01)
            continue
        rows += len(claim.items)
        t0 = time.perf_counter()
        now = utc_now()
        async with unit_of_work(sm) as session:
            if release:
                await queue.release(session, claim=claim, items=claim.items, now=now, message="bench")
            else:
                outcomes = [
                    queue.ItemOutcome(i, SendResult(str(i.public_id), Outcome.ACCEPTED), now) for i in claim.items
                ]
                await queue.record(session, claim=claim, outcomes=outcomes, now=now, policy=Policy())
        after_times.append(time.perf_counter() - t0)
    return ClaimRun(
        seconds=time.perf_counter() - started,
        claims=len(claim_times),
        rows=rows,
        empty=empty,
        claim=latency(claim_times),
        after=latency(after_times),
    )


async def floor_insert(sm: Any, n: int) -> float:
    from sqlalchemy import text

    from edm.db.session import unit_of_work

    started = time.perf_counter()
    async with unit_of_work(sm) as session:
        await session.execute(text(FLOOR_SQL), {"task": 0, "n": n})
    return time.perf_counter() - started


async def mark_sent(sm: Any, task_id: int, service_id: int, upto: int) -> float:
    from sqlalchemy import text

    from edm.clock import utc_now
    from edm.db.session import unit_of_work

    started = time.perf_counter()
    for low in range(0, upto, MARK_CHUNK):
        async with unit_of_work(sm) as session:
            params = {"task": task_id, "service": service_id, "now": utc_now(), "low": low}
            await session.execute(text(MARK_SENT_SQL), {**params, "high": min(upto, low + MARK_CHUNK)})
    return time.perf_counter() - started


async def timed_reads(sm: Any, read: Any, times: int) -> tuple[Latency, Any]:
    """`read(session)` `times` times, each in a fresh session (check-out included), after one untimed warm-up."""
    async with sm() as session:
        result = await read(session)
    samples = []
    for _ in range(times):
        t0 = time.perf_counter()
        async with sm() as session:
            result = await read(session)
        samples.append(time.perf_counter() - t0)
    return latency(samples), result


async def set_status(sm: Any, task_id: int, status: str) -> None:
    """The small task's status by SQL: `queued` / `paused` to switch its claims on and off."""
    from sqlalchemy import text

    from edm.db.session import unit_of_work

    async with unit_of_work(sm) as session:
        await session.execute(text("UPDATE tasks SET status = :s WHERE id = :t"), {"s": status, "t": task_id})


def scale_db() -> tuple[str, str]:
    """(name, URL) of the section's database: beside the bench database, named after it, dropped after the run."""
    name = f"{infra.DB_NAME}_scale"
    return name, f"{infra.PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(infra.PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


async def run_size(
    sm: Any, world: Any, *, recipients: int, tag: str | None, small_task: int, sizes: dict[str, Any]
) -> SizeRun:
    from sqlalchemy import text

    from bench import seed
    from edm.db.session import unit_of_work
    from edm.tasks import service as tasks
    from edm.tasks import stats, sweep

    service_id = world.service_ids[0]
    label = f"{recipients:,}"
    task_id, _ = await seed.create_task(sm, world, name=f"scale {label}", tag=tag)
    log(f"scale {label}: generating task {task_id} with generation.generate")
    generate_s, _ = await seed.generate(sm, task_id)
    async with sm() as session:
        rows = int(await session.scalar(text("SELECT count(*) FROM subtasks WHERE task_id = :t"), {"t": task_id}) or 0)
    floor_s = await floor_insert(sm, rows)
    log(
        f"  generated {rows:,} rows in {generate_s:.1f} s ({rows / generate_s:,.0f} rows/s); "
        f"bare INSERT … SELECT {floor_s:.1f} s"
    )
    mark_s = await mark_sent(sm, task_id, service_id, rows // 10)
    log(f"  first {rows // 10:,} marked sent in {mark_s:.1f} s; claiming for {sizes['claim_seconds']:.0f} s")
    claims = await claim_loop(sm, service_id, seconds=sizes["claim_seconds"], release=False)
    log(
        f"  claims: {claims.rows_per_s:,.0f} rows/s, claim p50 {claims.claim.p50_ms:.1f} ms "
        f"p99 {claims.claim.p99_ms:.1f} ms, record p50 {claims.after.p50_ms:.1f} ms ({claims.empty} empty)"
    )
    await seed.pause(sm, task_id)
    await set_status(sm, small_task, "queued")
    small = await claim_loop(sm, service_id, seconds=sizes["claim_seconds"] / 2, release=True)
    log(
        f"  small task beside it: claim p50 {small.claim.p50_ms:.1f} ms p99 {small.claim.p99_ms:.1f} ms "
        f"({small.rows_per_s:,.0f} rows/s, {small.empty} empty)"
    )

    async def counters(session: Any) -> Any:
        return await stats.task_stats(session, task_id)

    async def aggregate(session: Any) -> Any:
        return stats._assemble((await stats._row_groups(session, task_id, None)).get(None, []))

    stats_t, figures = await timed_reads(sm, counters, sizes["stats_reads"])
    aggregate_t, aggregated = await timed_reads(sm, aggregate, sizes["aggregate_reads"])
    log(
        f"  task_stats p50 {stats_t.p50_ms:.2f} ms p99 {stats_t.p99_ms:.2f} ms; aggregate over the rows "
        f"p50 {aggregate_t.p50_ms:,.0f} ms; equal: {figures == aggregated}"
    )
    started = time.perf_counter()
    async with unit_of_work(sm) as session:
        await tasks.cancel(session, await tasks.get_task(session, task_id, user_id=None), actor="bench")
    cancel_s = time.perf_counter() - started
    started = time.perf_counter()
    cancelled = (await sweep.drain(sm, should_stop=lambda: False)).cancelled
    cancel_sweep_s = time.perf_counter() - started
    log(f"  cancel (request) {cancel_s:.1f} s; the sweep cancelled {cancelled:,} in {cancel_sweep_s:.1f} s")
    before = await table_size(sm)
    started = time.perf_counter()
    async with unit_of_work(sm) as session:
        task = await tasks.get_task(session, task_id, user_id=None)
        await tasks.delete_task(session, task)
    request_s = time.perf_counter() - started
    stop = asyncio.Event()
    probe = asyncio.create_task(claim_loop(sm, service_id, seconds=0.0, release=True, stop=stop))
    await asyncio.sleep(1.0)  # the probe is claiming before the deletion starts
    started = time.perf_counter()
    try:
        drained = await sweep.drain(sm, should_stop=lambda: False)
        delete_s = time.perf_counter() - started
    finally:
        stop.set()
        during = await probe
    assert drained.tasks == [task_id], drained
    after = await table_size(sm)
    log(
        f"  delete_task (request) {request_s * 1000:.0f} ms; background deletion {delete_s:.1f} s "
        f"({rows / delete_s:,.0f} rows/s); small task's claims meanwhile: "
        f"{during.claims} claims, p50 {during.claim.p50_ms:.1f} ms, max {during.claim.max_ms:.1f} ms; "
        f"dead rows after: {after['dead']:,}"
    )
    engine = sm.kw["bind"]
    started = time.perf_counter()
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM subtasks"))
    vacuum_s = time.perf_counter() - started
    vacuumed = await table_size(sm)
    log(f"  VACUUM subtasks {vacuum_s:.1f} s; table {vacuumed['total_bytes'] / 2**20:,.0f} MB with its indexes")
    await set_status(sm, small_task, "paused")
    return SizeRun(
        recipients=recipients,
        rows=rows,
        generate_s=generate_s,
        floor_s=floor_s,
        mark_s=mark_s,
        claims=claims,
        small_claims=small,
        stats=stats_t,
        aggregate=aggregate_t,
        stats_equal=figures == aggregated,
        cancel_s=cancel_s,
        cancelled=cancelled,
        cancel_sweep_s=cancel_sweep_s,
        request_s=request_s,
        delete_s=delete_s,
        during_delete=during,
        table_before=before,
        table_after=after,
        vacuum_s=vacuum_s,
        table_vacuumed=vacuumed,
    )


async def run(*, recipients: int, reference: int, small: int, **sizes: Any) -> ScaleResult:
    """The whole section on a fresh database of its own (`scale_db`), dropped afterwards."""
    from bench import seed
    from edm.db.engine import make_engine, make_sessionmaker
    from edm.settings import Settings

    name, url = scale_db()
    log(f"scale: fresh database {name}; edm db upgrade")
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')
    env = infra.edm_env(EDM_DATABASE_URL=url)
    saved = {k: v for k, v in os.environ.items() if k.startswith("EDM_")}
    engine = None
    try:
        infra.edm("db", "upgrade", env=env)
        os.environ.update({k: v for k, v in env.items() if k.startswith("EDM_")})
        settings = Settings()
        engine = make_engine(url, pool_size=4)
        sm = make_sessionmaker(engine)
        t0 = time.perf_counter()
        world = await seed.seed(
            sm,
            settings,
            contacts=recipients,
            tags={"reference": reference, "small": small},
            sink_port=infra.free_port(),
            max_concurrency=100,
        )
        seed_s = time.perf_counter() - t0
        log(f"scale: seeded {recipients:,} contacts in {seed_s:.1f} s")
        small_task, _ = await seed.create_task(sm, world, name="small", tag="small")
        await seed.generate(sm, small_task)
        await seed.pause(sm, small_task)
        common = {"small_task": small_task, "sizes": {**sizes}}
        runs = [
            await run_size(sm, world, recipients=reference, tag="reference", **common),
            await run_size(sm, world, recipients=recipients, tag=None, **common),
        ]
    finally:
        if engine is not None:
            await engine.dispose()
        for key in [k for k in os.environ if k.startswith("EDM_") and k not in saved]:
            del os.environ[key]
        os.environ.update(saved)
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"scale: dropped {name}")
    return ScaleResult(
        recipients=recipients,
        reference=reference,
        small=small,
        claim_seconds=float(sizes["claim_seconds"]),
        seed_s=seed_s,
        sizes=runs,
        load=[round(x, 2) for x in os.getloadavg()],
    )


# ---- reporting ----------------------------------------------------------------------------------------


def report_lines(r: dict[str, Any]) -> list[str]:
    ref, big = r["sizes"]
    n_ref, n_big = ref["rows"], big["rows"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "—"

    def mb(b: int) -> str:
        return f"{b / 2**20:,.0f} MB"

    def claims_row(label: str, key: str, sub: str = "claim") -> str:
        a, b = ref[key][sub], big[key][sub]
        return (
            f"| {label} | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} ms "
            f"| {ratio(b['p50_ms'], a['p50_ms'])} |"
        )

    def rate(s: dict[str, Any]) -> float:
        return s["rows"] / s["seconds"] if s["seconds"] else 0.0

    gen_ref, gen_big = n_ref / ref["generate_s"], n_big / big["generate_s"]
    lines = [
        f"### Past a million: one task of {n_big:,} SubTasks beside one of {n_ref:,} (PostgreSQL, same run)",
        "",
        f"| figure | {n_ref:,} | {n_big:,} | ratio (large / reference) |",
        "|---|---|---|---|",
        f"| generation (`generation.generate`, one transaction) | {ref['generate_s']:.1f} s ({gen_ref:,.0f} rows/s) "
        f"| {big['generate_s']:.1f} s ({gen_big:,.0f} rows/s) | rows/s {ratio(gen_big, gen_ref)} |",
        f"| reference: bare `INSERT … SELECT` of as many narrow rows (unindexed temporary table) "
        f"| {ref['floor_s']:.1f} s | {big['floor_s']:.1f} s | generation / bare: "
        f"{ratio(ref['generate_s'], ref['floor_s'])} → {ratio(big['generate_s'], big['floor_s'])} |",
        f"| claim of ≤ {CLAIM} (`queue.claim`) while 90 % wait, p50 / p99 | "
        f"{ref['claims']['claim']['p50_ms']:.1f} / {ref['claims']['claim']['p99_ms']:.1f} ms | "
        f"{big['claims']['claim']['p50_ms']:.1f} / {big['claims']['claim']['p99_ms']:.1f} ms | "
        f"p50 {ratio(big['claims']['claim']['p50_ms'], ref['claims']['claim']['p50_ms'])} |",
        claims_row("record of the claimed batch (`queue.record`, accepted), p50 / p99", "claims", "after"),
        f"| rows claimed and recorded per second (one loop, {r['claim_seconds']:.0f} s) | "
        f"{rate(ref['claims']):,.0f} | {rate(big['claims']):,.0f} "
        f"| {ratio(rate(big['claims']), rate(ref['claims']))} |",
        claims_row(f"claim for a small task ({r['small']:,} rows) beside this one, paused, p50 / p99", "small_claims"),
        f"| `task_stats` (fresh session), p50 / p99 | {ref['stats']['p50_ms']:.2f} / {ref['stats']['p99_ms']:.2f} ms "
        f"| {big['stats']['p50_ms']:.2f} / {big['stats']['p99_ms']:.2f} ms "
        f"| p50 {ratio(big['stats']['p50_ms'], ref['stats']['p50_ms'])} |",
        f"| reference: aggregate over the task's rows (`_row_groups`), p50 | {ref['aggregate']['p50_ms']:,.0f} ms "
        f"| {big['aggregate']['p50_ms']:,.0f} ms | {ratio(big['aggregate']['p50_ms'], ref['aggregate']['p50_ms'])} |",
        f"| cancel as the request runs it (`tasks.service.cancel`: the task stops, refunded) | "
        f"{ref['cancel_s'] * 1000:,.0f} ms | {big['cancel_s'] * 1000:,.0f} ms | — |",
        f"| the sweep cancelling the pending SubTasks (10,000 a transaction) | {ref['cancel_sweep_s']:.1f} s "
        f"({ref['cancelled'] / ref['cancel_sweep_s']:,.0f} rows/s) | {big['cancel_sweep_s']:.1f} s "
        f"({big['cancelled'] / big['cancel_sweep_s']:,.0f} rows/s) "
        f"| rows/s {ratio(big['cancelled'] / big['cancel_sweep_s'], ref['cancelled'] / ref['cancel_sweep_s'])} |",
        f"| `delete_task` as the request runs it (marks the task `deleting`) | {ref['request_s'] * 1000:.0f} ms "
        f"| {big['request_s'] * 1000:.0f} ms | — |",
        f"| background deletion (`sweep.drain`, 10,000 SubTasks a transaction) | {ref['delete_s']:.1f} s "
        f"({n_ref / ref['delete_s']:,.0f} rows/s) | {big['delete_s']:.1f} s ({n_big / big['delete_s']:,.0f} rows/s) "
        f"| rows/s {ratio(n_big / big['delete_s'], n_ref / ref['delete_s'])} |",
        f"| small task's claims during the deletion: count, p50 / max | {ref['during_delete']['claims']}, "
        f"{ref['during_delete']['claim']['p50_ms']:.1f} / {ref['during_delete']['claim']['max_ms']:.1f} ms "
        f"| {big['during_delete']['claims']}, {big['during_delete']['claim']['p50_ms']:.1f} / "
        f"{big['during_delete']['claim']['max_ms']:.1f} ms | — |",
        f"| `subtasks` with indexes before the delete → after → after `VACUUM` | "
        f"{mb(ref['table_before']['total_bytes'])} → {mb(ref['table_after']['total_bytes'])} → "
        f"{mb(ref['table_vacuumed']['total_bytes'])} | {mb(big['table_before']['total_bytes'])} → "
        f"{mb(big['table_after']['total_bytes'])} → {mb(big['table_vacuumed']['total_bytes'])} | — |",
        f"| dead rows after the delete; `VACUUM subtasks` | {ref['table_after']['dead']:,}; {ref['vacuum_s']:.1f} s "
        f"| {big['table_after']['dead']:,}; {big['vacuum_s']:.1f} s "
        f"| vacuum {ratio(big['vacuum_s'], ref['vacuum_s'])} |",
        "",
        f"Set-up: {r['recipients']:,} contacts seeded in {r['seed_s']:.0f} s; the reference task runs first and is "
        f"deleted before the large one is generated. Claims: `queue.claim` for one service (≤ {CLAIM}), then "
        f"`queue.record` of an accepted outcome for each item, after the first 10 % of the task were marked sent by "
        f"set-based UPDATEs; the small task's claims give the items back (`queue.release`). Statistics equal to the "
        f"aggregate: {'✅' if ref['stats_equal'] and big['stats_equal'] else '❌'}. "
        f"Load average at the end: {', '.join(f'{x:.2f}' for x in r['load'])} (2 cores, shared).",
        "",
    ]
    return lines


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = dict(QUICK if args.quick else FULL)
    if args.recipients:
        sizes["recipients"] = args.recipients
        if not args.reference:
            sizes["reference"] = min(sizes["reference"], max(1, args.recipients // 10))
    if args.reference:
        sizes["reference"] = args.reference
    if args.claim_seconds:
        sizes["claim_seconds"] = args.claim_seconds
    return asdict(await run(**sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200,000 beside 20,000")
    parser.add_argument("--recipients", type=int, help="the large task (10,000,000)")
    parser.add_argument("--reference", type=int, help="the reference task (1,000,000)")
    parser.add_argument("--claim-seconds", type=float, help="seconds of each claim loop (30)")
    args = parser.parse_args()
    res = asyncio.run(main_async(args))
    print()
    print("\n".join(report_lines(res)))
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "results-scale.json").write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
