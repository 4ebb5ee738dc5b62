"""EDM's benchmark on PostgreSQL (`make bench`): dispatch, generation and worker memory, each printed beside
a reference measured in the same run. Not a timed test: it prints figures and writes bench/RESULTS.md.

    .venv/bin/python -m bench.run_all [--quick]
                                      [--only dispatch|generation|rss|webhooks|tracking|stats|import|contacts|
                                              xlsx|compose|console|inbound|scale]
                                      [--concurrency 8]

(a) dispatch: a task of 100,000 recipients through two SMTP services pointed at Postfix's smtp-sink, with 1
    and then 2 `edm worker` processes; messages/s beside `smtp-source -d -s 1 -m N -l 5000` (one session)
    against the same sink, measured right before each run, and the ratio.
(b) generation of a 1,000,000-recipient task (the worker's own `generation.generate`, one transaction).
(c) worker peak RSS for a 10,000-recipient task (to completion) and a 1,000,000-recipient task (the worker
    generates it, then sends for a fixed window), sampled every 0.2 s, with the kernel's VmHWM.
(d) webhook ingest (bench/bench_webhooks.py): signed SendGrid batches of 100 posted to one `edm serve`, beside
    `GET /healthz` on the same server and client in the same run; then the `events` job's apply rate. Written
    into its own block of RESULTS.md, so `--only webhooks` leaves the other sections' block alone.
(e) tracking endpoints (bench/bench_tracking.py): the open pixel and the click redirect of one `edm serve` under
    wrk, beside `GET /healthz` of the same server in the same run; then the `events` job applies the hits.
(f) task statistics (bench/bench_stats.py): `task_stats` of a 1,000,000-SubTask task read from the trigger-kept
    counters, beside `SELECT 1` and the aggregate over the rows in the same run; counters checked against the
    recount. (e) and (f) each write their own block of RESULTS.md, like (d).
(g) contact import (bench/bench_import.py): a 1,000,000-row CSV (1 % bad rows) imported by the `imports` job code
    in a separate process: wall time and peak RSS, beside PostgreSQL COPY and a csv.reader pass of the same file
    in the same run. Its own block of RESULTS.md, like (d).
(h) contacts (bench/bench_contacts.py): list/search page p95, a tag rule's recipient estimate and a streamed
    `edm contact export` of 1,000,000 contacts (peak RSS), beside `SELECT 1`, `count(*)` and `COPY … TO` in the
    same run. Its own block of RESULTS.md, like (d).
(i) XLSX import (bench/bench_xlsx.py): a 100,000-row workbook read by `open_table` in a child process, beside
    openpyxl's read-only mode (how EDM read workbooks before) on the same file in the same run; its import by
    the `imports` job code (wall time, peak RSS) beside that read; the "dimension bomb" (1.5 KB declaring
    A1:XFD1048576) beside the same rows under an honest dimension, and openpyxl on the bomb for a fixed
    budget (its rate gives the time it would take). Its own block of RESULTS.md, like (d).
(j) compose (bench/bench_compose.py): CPU µs per recipient of each step a worker runs (context, unsubscribe
    token, guarded render with click tracking, MIME, SMTP payload), each alternating with a reference in the
    same run (plain Jinja2 on the same sources, a bare HMAC, the stdlib's EmailMessage, …). No database, no
    SMTP. Its own block of RESULTS.md, like (d).
(k) console (bench/bench_console.py): p50/p95 of every console page of one user (dashboard, contacts and their
    search/tag filters, a contact, imports, tags, templates, senders, media, campaigns, a campaign, its
    recipients, one recipient, account) over one `edm serve`, logged in through the login form, each beside
    `GET /healthz` of the same server in the same run. Target: every page p95 ≤ 300 ms with 1,000,000 contacts
    and 1,000,000 SubTasks. Its own block of RESULTS.md, like (d).
(l) inbound mail (bench/bench_inbound.py): 20 KB replies (threaded replies, automatic replies, mail by address,
    unrouted mail) posted as raw MIME to the SMTP endpoint of one `edm serve`, beside `GET /healthz` of the same
    server in the same run, with CPU per 1,000 messages (server, PostgreSQL) and a check that every message was
    stored exactly once and that replays add nothing; then `match_thread` against `--inbound-subtasks` stored
    SubTasks (10,000,000 in the full run, seeded in a database of its own, dropped afterwards) beside a
    primary-key lookup on the same table, with the plan. Targets: ≥ 500 messages/s with p99 ≤ 200 ms; threading
    ≤ 5 ms. Its own block of RESULTS.md, like (d).
(m) past a million (bench/bench_scale.py), on demand only (`--only scale`, never in the full run): a task of
    10,000,000 recipients (`--scale-recipients N`) beside one of 1,000,000 in the same run, in a database of its
    own (dropped afterwards): generation (beside a bare INSERT … SELECT), claims and records while 90 % wait, a
    small task's claims beside it, statistics (beside the aggregate over the rows), and `delete_task` with a
    small task claiming meanwhile, then VACUUM. The ratios large / reference should stay near 1 for claims and
    statistics. About 45 minutes at full size on 2 shared cores. Its own block of RESULTS.md, like (d).

Targets (2-core machine): dispatch ≥ 1,500 msg/s with 2 workers and ≥ 0.45 × smtp-source single session;
generation ≤ 20 s; worker RSS ≤ 150 MB and flat; webhooks ≥ 10,000 events/s with p99 ≤ 200 ms (one process);
tracking ≥ 3,000 req/s per endpoint (one process); statistics of 1,000,000 SubTasks ≤ 100 ms; (g) import
and (h) contacts print their own targets. (i) and (j) have none of their own: (i) is read against openpyxl
(the reader before) and the bomb against an honest three-row workbook (it should cost about the same); (j)
bounds one core's messages/s before any I/O, to set beside (a)'s 1,500 msg/s over 2 workers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench import (
    bench_compose,
    bench_console,
    bench_contacts,
    bench_import,
    bench_inbound,
    bench_scale,
    bench_stats,
    bench_tracking,
    bench_webhooks,
    bench_xlsx,
    infra,
    seed,
)
from bench.infra import log

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RUN_DIR = infra.ROOT / "var" / "bench"

FULL: dict[str, Any] = {
    "dispatch": 100_000,
    "generation": 1_000_000,
    "rss_small": 10_000,
    "rss_large": 1_000_000,
    "rss_window": 75.0,
    "ref_messages": 30_000,
}
QUICK: dict[str, Any] = {
    "dispatch": 5_000,
    "generation": 100_000,
    "rss_small": 2_000,
    "rss_large": 100_000,
    "rss_window": 15.0,
    "ref_messages": 10_000,
}
SECTIONS = (
    "dispatch",
    "generation",
    "rss",
    "webhooks",
    "tracking",
    "stats",
    "import",
    "contacts",
    "xlsx",
    "compose",
    "console",
    "inbound",
    "scale",
)
ON_DEMAND = {"scale"}  # only with --only: not part of the full run
NO_SMTP = {
    "webhooks",
    "tracking",
    "stats",
    "import",
    "contacts",
    "xlsx",
    "compose",
    "console",
    "inbound",
    "scale",
}  # these send nothing
NO_DATABASE = {"compose", "scale"}  # no bench database is created for these alone (scale makes its own)
STALL_SECONDS = 45.0
# Before the first send the workers are still starting: on shared cores under load (a load average of 15 on 2
# cores) importing and connecting took over 45 s.
FIRST_SEND_SECONDS = 180.0
TARGETS = {"batch_2w": 5000.0, "dispatch_2w": 1500.0, "dispatch_ratio": 0.45, "generation_s": 20.0, "rss_mb": 150.0}


@dataclass
class DispatchResult:
    workers: int
    concurrency: int
    recipients: int
    sent: int
    failed: int
    other: int
    generation_s: float
    rate_db: float  # sent / (last sent_at − first attempt start)
    rate_task: float | None  # sent / (task.completed_at − task.first_sent_at): includes finalize lag
    rate_wall: float  # sent / (all final − workers spawned): includes process start-up
    seconds_db: float
    seconds_wall: float
    ref_rate: float
    ref_rates: list[float]
    peak_rss_mb: list[float]
    cpu: dict[str, float]
    cpu_wall: float
    timed_out: bool = False
    tracking: bool = True  # open pixel and click rewriting (21 links in the bench template) on
    worker_errors: list[str] = field(default_factory=list)
    services_after: list[str] = field(default_factory=list)
    kind: str = "smtp"  # "smtp" (the sink) or "batch" (the simulated batch ESP)

    @property
    def ratio(self) -> float:
        return self.rate_db / self.ref_rate if self.ref_rate else 0.0


@dataclass
class RssResult:
    label: str
    recipients: int
    sent: int
    seconds: float
    peak_mb: float
    vm_hwm_mb: float | None
    start_mb: float  # at the first sent message (the worker is up, the task generated)
    end_mb: float
    series: list[tuple[float, float]]  # (seconds, MB) every ~5 s
    generation_in_worker_s: float | None = None
    sent_after: list[tuple[float, int]] = field(default_factory=list)


# ---- small database helpers ---------------------------------------------------------------------------


async def scalar_row(sm: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> Any:
    async with sm() as session:
        return (await session.execute(text(sql), params)).one()


async def progress(sm: async_sessionmaker[AsyncSession], task_id: int) -> tuple[int, int, int]:
    """(open rows: pending or allocated, sent, total) of a task."""
    row = await scalar_row(
        sm,
        """
        SELECT count(*) FILTER (WHERE send_state IN ('pending', 'allocated')),
               count(*) FILTER (WHERE send_state = 'sent'), count(*)
        FROM subtasks WHERE task_id = :t""",
        t=task_id,
    )
    return int(row[0]), int(row[1]), int(row[2])


async def service_states(sm: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sm() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT s.name, st.frozen, st.frozen_reason FROM email_services s "
                    "JOIN email_service_states st ON st.service_id = s.id ORDER BY s.id"
                )
            )
        ).all()
    return [f"{name}: {'FROZEN (' + str(reason) + ')' if frozen else 'ok'}" for name, frozen, reason in rows]


async def analyze(sm: async_sessionmaker[AsyncSession]) -> None:
    async with sm() as session:
        await session.execute(text("ANALYZE subtasks"))
        await session.commit()


# ---- (a) dispatch -------------------------------------------------------------------------------------


async def run_dispatch(
    sm: async_sessionmaker[AsyncSession],
    world: seed.World,
    *,
    workers: int,
    concurrency: int,
    sink: infra.Sink,
    source_bin: str,
    ref_messages: int,
    timeout: float,
    profile: bool = False,
    tracking: bool = True,
    batch: BatchEsp | None = None,
) -> DispatchResult:
    """One dispatch run. With `batch`, the task may use only the simulated batch ESP's services, and the
    reference is that ESP's ceiling (see BatchEsp) instead of smtp-source."""
    name = f"dispatch {workers}w" + (" batch ESP" if batch else "")
    task_id, _ = await seed.create_task(
        sm, world, name=name, tag="dispatch", tracking=tracking, service_ids=batch.service_ids if batch else None
    )
    gen_s, sendable = await seed.generate(sm, task_id)
    await analyze(sm)
    if batch is None:
        log(
            f"{name}: task {task_id} generated ({sendable:,} recipients, {gen_s:.1f} s); reference smtp-source -s 1 × 3"
        )
        ref = infra.smtp_source(source_bin, sink.port, messages=ref_messages, sessions=1)
        log(f"  smtp-source -d -s 1: {ref.rate:,.0f} msg/s (rounds {', '.join(f'{r:,.0f}' for r in ref.rates)})")
        ref_rate, ref_rates = ref.rate, ref.rates
    else:
        ref_rate, ref_rates = batch.ceiling_per_call, []
        log(f"{name}: task {task_id} generated ({sendable:,} recipients, {gen_s:.1f} s); {batch.describe()}")

    pool = infra.Workers(workers, concurrency, RUN_DIR / f"dispatch-{workers}w").start()
    spawned = time.monotonic()
    sampler = infra.RssSampler(pool.pids).start()
    meter: infra.CpuMeter | None = None
    spy = None
    timed_out = False
    try:
        last_log = 0.0
        last_sent, last_change = -1, time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            pool.check_alive()
            open_, sent, total = await progress(sm, task_id)
            if sent != last_sent:
                last_sent, last_change = sent, time.monotonic()
            elif time.monotonic() - last_change > (STALL_SECONDS if sent else FIRST_SEND_SECONDS):
                timed_out = True
                log(f"  no progress for {time.monotonic() - last_change:.0f} s: stopping ({await service_states(sm)})")
                break
            if meter is None and sent > 0:
                meter = infra.CpuMeter({"workers": pool.pids, "sink": [sink.pid], "bench": [os.getpid()]}).start()
                if profile:
                    spy = infra.PySpy(
                        pool.pids[0], RUN_DIR / f"pyspy-dispatch-{workers}w{'-batch' if batch else ''}.txt"
                    ).start()
            if time.monotonic() - last_log > 10:
                elapsed = time.monotonic() - spawned
                log(f"  {sent:,}/{total:,} sent after {elapsed:.0f} s")
                last_log = time.monotonic()
            if open_ == 0:
                break
            if time.monotonic() - spawned > timeout:
                timed_out = True
                log(f"  timed out after {timeout:.0f} s with {open_:,} open rows")
                break
        done = time.monotonic()
        if meter is not None:
            meter.stop()
        if spy is not None:
            spy.stop()
        hwm = [infra.vm_hwm_mb(pid) for pid in pool.pids]
        # The finalize job (every 5 s) sets completed_at: wait for it to give the task-level figure.
        deadline = time.monotonic() + 12
        while not timed_out and time.monotonic() < deadline:
            if (await seed.task_row(sm, task_id)).completed_at is not None:
                break
            await asyncio.sleep(0.5)
    finally:
        sampler.stop()
        pool.stop()
    task = await seed.task_row(sm, task_id)
    row = await scalar_row(
        sm,
        """
        SELECT count(*) FILTER (WHERE send_state = 'sent'), count(*) FILTER (WHERE send_state = 'failed'),
               count(*) FILTER (WHERE send_state NOT IN ('sent', 'failed')), max(sent_at),
               (SELECT min(a.started_at) FROM send_attempts a JOIN subtasks s2 ON s2.id = a.subtask_id
                WHERE s2.task_id = :t)
        FROM subtasks WHERE task_id = :t""",
        t=task_id,
    )
    sent, failed, other, last_sent, first_start = int(row[0]), int(row[1]), int(row[2]), row[3], row[4]
    seconds_db = (last_sent - first_start).total_seconds() if last_sent and first_start else 0.0
    task_span = (
        (task.completed_at - task.first_sent_at).total_seconds() if task.completed_at and task.first_sent_at else None
    )
    peaks = [max(sampler.peak(pid), h or 0.0) for pid, h in zip(pool.pids, hwm, strict=True)]
    result = DispatchResult(
        workers=workers,
        concurrency=concurrency,
        recipients=sendable,
        sent=sent,
        failed=failed,
        other=other,
        generation_s=gen_s,
        rate_db=sent / seconds_db if seconds_db else 0.0,
        rate_task=sent / task_span if task_span else None,
        rate_wall=sent / (done - spawned),
        seconds_db=seconds_db,
        seconds_wall=done - spawned,
        ref_rate=ref_rate,
        ref_rates=ref_rates,
        peak_rss_mb=peaks,
        cpu=dict(meter.used) if meter else {},
        cpu_wall=meter.wall if meter else 0.0,
        timed_out=timed_out,
        tracking=tracking,
        worker_errors=pool.errors()[:10],
        services_after=await service_states(sm),
        kind="batch" if batch else "smtp",
    )
    if timed_out:
        await seed.pause(sm, task_id)
    log(
        f"  {workers}w: {result.rate_db:,.0f} msg/s (DB), {result.rate_wall:,.0f} msg/s (wall), "
        f"ratio {result.ratio:.2f} × {'the per-call ceiling' if batch else 'smtp-source'}; sent {sent:,}, "
        f"failed {failed:,}"
    )
    return result


@dataclass
class BatchEsp:
    """The simulated batch ESP of the dispatch section: two `fake` services, each call taking `latency_ms`
    for up to `batch_size` recipients. Its same-run reference is arithmetic, not measured: one call in flight
    moves batch_size ÷ latency recipients per second (10,000/s at 500 and 50 ms), the most one connection of
    such an ESP gives; the target (≥ 5,000 recipients/s with 2 workers) is half of it."""

    service_ids: list[int]
    latency_ms: float
    batch_size: int
    max_concurrency: int

    @property
    def ceiling_per_call(self) -> float:
        return self.batch_size / (self.latency_ms / 1000.0)

    def describe(self) -> str:
        return (
            f"batch ESP: {len(self.service_ids)} fake services, latency {self.latency_ms:.0f} ms per call, batch "
            f"{self.batch_size}, max_concurrency {self.max_concurrency}; ceiling of one call in flight "
            f"{self.ceiling_per_call:,.0f} recipients/s"
        )


# ---- (b) generation -----------------------------------------------------------------------------------


async def run_generation(sm: async_sessionmaker[AsyncSession], world: seed.World) -> dict[str, Any]:
    task_id, schedule_s = await seed.create_task(sm, world, name="generation 1M")
    log(f"generation: task {task_id} scheduled (estimate + test render {schedule_s:.1f} s); generating")
    seconds, sendable = await seed.generate(sm, task_id)
    log(f"  generated {sendable:,} recipients in {seconds:.1f} s ({sendable / seconds:,.0f} rows/s)")
    await seed.pause(sm, task_id)
    return {"recipients": sendable, "seconds": seconds, "schedule_s": schedule_s}


# ---- (c) worker RSS -----------------------------------------------------------------------------------


async def run_rss(
    sm: async_sessionmaker[AsyncSession],
    world: seed.World,
    *,
    label: str,
    tag: str | None,
    concurrency: int,
    window: float | None,
    timeout: float,
) -> RssResult:
    """One worker; it generates the task itself (the maintenance job), then sends. `window` None = until
    every recipient is final; else stop that many seconds after the first message was sent."""
    task_id, _ = await seed.create_task(sm, world, name=f"rss {label}", tag=tag)
    pool = infra.Workers(1, concurrency, RUN_DIR / f"rss-{tag or 'all-contacts'}").start()
    pid = pool.pids[0]
    sampler = infra.RssSampler([pid]).start()
    spawned = time.monotonic()
    first_sent: float | None = None
    generated_at: float | None = None
    sent_after: list[tuple[float, int]] = []
    total = 0
    sent = 0
    try:
        while True:
            await asyncio.sleep(0.5)
            pool.check_alive()
            open_, sent, total = await progress(sm, task_id)
            now = time.monotonic()
            if generated_at is None and total > 0:
                generated_at = now
                log(f"rss {label}: the worker generated {total:,} recipients after {now - spawned:.1f} s")
            if first_sent is None and sent > 0:
                first_sent = now
            if first_sent is not None and (not sent_after or now - spawned - sent_after[-1][0] >= 5):
                sent_after.append((round(now - spawned, 1), sent))
            if total and open_ == 0:
                break
            if window is not None and first_sent is not None and now - first_sent >= window:
                break
            if now - spawned > timeout:
                log(f"  rss {label}: timed out after {timeout:.0f} s")
                break
        hwm = infra.vm_hwm_mb(pid)
    finally:
        sampler.stop()
        pool.stop()
    await seed.pause(sm, task_id)
    samples = sampler.samples.get(pid, [])
    series = [(round(t, 1), round(mb, 1)) for t, mb in samples[:: max(1, int(5 / sampler.period))]]
    seconds = time.monotonic() - spawned
    task = await seed.task_row(sm, task_id)
    gen_in_worker = (
        (task.generated_at - task.created_at).total_seconds() if task.generated_at and task.created_at else None
    )
    result = RssResult(
        label=label,
        recipients=total,
        sent=sent,
        seconds=seconds,
        peak_mb=max(sampler.peak(pid), hwm or 0.0),
        vm_hwm_mb=hwm,
        start_mb=sampler.at(pid, (first_sent or spawned + 2.0) - spawned),
        end_mb=samples[-1][1] if samples else 0.0,
        series=series,
        generation_in_worker_s=gen_in_worker,
        sent_after=sent_after,
    )
    log(
        f"  rss {label}: peak {result.peak_mb:.0f} MB (VmHWM {hwm or 0:.0f} MB), "
        f"at first send {result.start_mb:.0f} MB, "
        f"at the end {result.end_mb:.0f} MB; {sent:,} of {total:,} sent in {seconds:.0f} s"
    )
    return result


# ---- reporting ----------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit the figures are for (src/ moves while benchmarks run: say which code was measured)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=infra.ROOT, capture_output=True, text=True).stdout.strip()

    head = git("log", "-1", "--format=%h %cI %s")[:100]
    dirty = " + uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else ""
    return f"{head}{dirty}" if head else "unknown"


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as f:
        models = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    return {
        "nproc": os.cpu_count(),
        "cpu": models[0] if models else platform.processor(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def ok(flag: bool) -> str:
    return "✅ met" if flag else "❌ missed"


def report(res: dict[str, Any]) -> str:
    """The result tables as Markdown (printed, and written into RESULTS.md)."""
    lines: list[str] = []
    m, pg = res["machine"], res["pg"]
    database = (
        f"PostgreSQL {pg.get('server_version', '?')} (shared_buffers {pg.get('shared_buffers', '?')}, "
        f"synchronous_commit {pg.get('synchronous_commit', '?')})"
        if pg
        else "no database"
    )
    lines.append(
        f"Run {res['date']} ({'quick' if res['quick'] else 'full'}), {res['duration_s']:.0f} s total. "
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, "
        f"{database}; load average at start {m['load_avg_at_start']}. Code: `{res.get('code', '?')}`."
        + (f" Settings passed to the workers: {res['env']}." if res.get("env") else "")
    )
    lines.append("")
    batch_runs = [d for d in res.get("dispatch") or [] if d.get("kind") == "batch"]
    res = {**res, "dispatch": [d for d in res.get("dispatch") or [] if d.get("kind", "smtp") == "smtp"]}
    if res.get("dispatch"):
        lines.append(
            "### (a) Dispatch → smtp-sink (2 SMTP services, interval 0, max_concurrency "
            f"{res['max_concurrency']}, `edm worker --concurrency {res['dispatch'][0]['concurrency']}`)"
        )
        lines.append("")
        lines.append(
            "| workers | tracking | recipients | sent | msg/s (DB: first send → last sent) "
            "| msg/s (wall, incl. start-up) | msg/s (task first_sent_at → completed_at) "
            "| smtp-source -s 1 (same run) | ratio | peak RSS / worker |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for d in res["dispatch"]:
            rate_task = f"{d['rate_task']:,.0f}" if d["rate_task"] else "–"
            cut = " (timed out)" if d["timed_out"] else ""
            lines.append(
                f"| {d['workers']} | {_tracking(d)} | {d['recipients']:,} | {d['sent']:,}{cut} "
                f"| **{d['rate_db']:,.0f}** | {d['rate_wall']:,.0f} | {rate_task} | {d['ref_rate']:,.0f} "
                f"| **{d['rate_db'] / d['ref_rate']:.2f}** | "
                f"{', '.join(f'{p:.0f} MB' for p in d['peak_rss_mb'])} |"
            )
        lines.append("")
        lines.append("CPU seconds per 1,000 messages while sending (first sent row → last), by process group:")
        lines.append("")
        lines.append(
            "| workers | tracking | edm workers | PostgreSQL (bench DB + aux) | smtp-sink | bench poller "
            "| other (not ours) | machine busy / available |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for d in res["dispatch"]:
            k = 1000 / max(1, d["sent"])
            c = d["cpu"]
            if c:
                avail = d["cpu_wall"] * m["nproc"]
                busy = sum(c.values())
                cells = " | ".join(f"{c.get(g, 0) * k:.2f}" for g in ("workers", "postgres", "sink", "bench", "other"))
                share = f"{busy:.0f} / {avail:.0f} CPU-s ({100 * busy / avail:.0f} %)"
                lines.append(f"| {d['workers']} | {_tracking(d)} | {cells} | {share} |")
        lines.append("")
        two = [d for d in res["dispatch"] if d["workers"] == 2 and d.get("tracking", True)]
        if two:
            d = two[0]
            ratio = d["rate_db"] / d["ref_rate"]
            lines.append(
                f"Target (2 workers): ≥ {TARGETS['dispatch_2w']:,.0f} msg/s → {d['rate_db']:,.0f}: "
                f"{ok(d['rate_db'] >= TARGETS['dispatch_2w'])}; ≥ {TARGETS['dispatch_ratio']} × smtp-source "
                f"→ {ratio:.2f}: {ok(ratio >= TARGETS['dispatch_ratio'])}."
            )
            lines.append("")
    if batch_runs:
        lines += report_batch(batch_runs, m["nproc"])
    if res.get("generation"):
        g = res["generation"]
        lines.append("### (b) Generation")
        lines.append("")
        lines.append("| recipients | seconds (generate + commit) | rows/s | schedule (estimate + test render) |")
        lines.append("|---|---|---|---|")
        lines.append(
            f"| {g['recipients']:,} | **{g['seconds']:.1f}** | {g['recipients'] / g['seconds']:,.0f} "
            f"| {g['schedule_s']:.1f} s |"
        )
        for d in res.get("dispatch") or []:
            lines.append(
                f"| {d['recipients']:,} (dispatch {d['workers']}w task) | {d['generation_s']:.1f} "
                f"| {d['recipients'] / d['generation_s']:,.0f} | |"
            )
        lines.append("")
        lines.append(
            f"Reference (docs/performance.md, same machine kind): 1M pending rows by INSERT … SELECT 2.5 s, "
            f"by COPY 1.7 s. Target ≤ {TARGETS['generation_s']:.0f} s for 1,000,000 → "
            f"{ok(g['seconds'] <= TARGETS['generation_s'])}."
        )
        lines.append("")
    if res.get("rss"):
        lines.append("### (c) Worker RSS (one `edm worker`, sampled every 0.2 s; VmHWM from /proc)")
        lines.append("")
        lines.append(
            "| task | recipients | sent while measured | seconds | RSS at first send | peak RSS | VmHWM | RSS at end |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in res["rss"]:
            lines.append(
                f"| {r['label']} | {r['recipients']:,} | {r['sent']:,} | {r['seconds']:.0f} | "
                f"{r['start_mb']:.0f} MB | **{r['peak_mb']:.0f} MB** | {r['vm_hwm_mb'] or 0:.0f} MB | "
                f"{r['end_mb']:.0f} MB |"
            )
        lines.append("")
        for r in res["rss"]:
            lines.append(
                f"- {r['label']}: RSS over time (s, MB): " + ", ".join(f"{t:.0f}s {mb:.0f}" for t, mb in r["series"])
            )
        lines.append("")
        peak = max(r["peak_mb"] for r in res["rss"])
        lines.append(
            f"Target ≤ {TARGETS['rss_mb']:.0f} MB and flat → peak {peak:.0f} MB: "
            f"{ok(peak <= TARGETS['rss_mb'])} (flatness: compare the small and large task, and the series "
            "above)."
        )
        lines.append("")
    for d in res.get("dispatch") or []:
        if any("FROZEN" in s for s in d["services_after"]):
            lines.append(f"Services after the {d['workers']}-worker run: " + "; ".join(d["services_after"]))
            lines.append("")
        if d["worker_errors"]:
            lines.append(f"Worker errors ({d['workers']}w): " + " | ".join(d["worker_errors"][:3]))
            lines.append("")
    return "\n".join(lines)


def report_batch(runs: list[dict[str, Any]], nproc: int) -> list[str]:
    """The batch-ESP rows of (a): recipients/s beside the ESP's per-call ceiling (batch ÷ latency)."""
    lines = [
        "### (a′) Dispatch → the simulated batch ESP (2 `fake` services, 50 ms per call, batch_size 500, "
        "in-process in each worker)",
        "",
        "| workers | tracking | recipients | sent | recipients/s (DB: first send → last sent) | recipients/s (wall) "
        "| ceiling of one call in flight (batch ÷ latency) | ratio | CPU s per 1,000: workers / PostgreSQL "
        "| machine busy / available |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in runs:
        k = 1000 / max(1, d["sent"])
        c = d["cpu"]
        busy = sum(c.values()) if c else 0.0
        avail = d["cpu_wall"] * nproc
        share = f"{busy:.0f} / {avail:.0f} CPU-s ({100 * busy / avail:.0f} %)" if c and avail else "–"
        cut = " (timed out)" if d["timed_out"] else ""
        lines.append(
            f"| {d['workers']} | {_tracking(d)} | {d['recipients']:,} | {d['sent']:,}{cut} | **{d['rate_db']:,.0f}** "
            f"| {d['rate_wall']:,.0f} | {d['ref_rate']:,.0f} | {d['rate_db'] / d['ref_rate']:.2f} "
            f"| {c.get('workers', 0) * k:.2f} / {c.get('postgres', 0) * k:.2f} | {share} |"
        )
    two = [d for d in runs if d["workers"] == 2]
    if two:
        lines += [
            "",
            f"Target (2 workers): ≥ {TARGETS['batch_2w']:,.0f} recipients/s → {two[0]['rate_db']:,.0f}: "
            f"{ok(two[0]['rate_db'] >= TARGETS['batch_2w'])}.",
        ]
    return [*lines, ""]


MARK_BEGIN = "<!-- bench:results:begin -->"
MARK_END = "<!-- bench:results:end -->"


def write_results(markdown: str, res: dict[str, Any]) -> None:
    """Replace the generated block of RESULTS.md (the hand-written analysis around it is kept)."""
    block = f"{MARK_BEGIN}\n## Latest run\n\n{markdown}\n{MARK_END}"
    if RESULTS.exists():
        current = RESULTS.read_text()
        if MARK_BEGIN in current and MARK_END in current:
            head, rest = current.split(MARK_BEGIN, 1)
            _, tail = rest.split(MARK_END, 1)
            RESULTS.write_text(head + block + tail)
        else:
            RESULTS.write_text(current.rstrip() + "\n\n" + block + "\n")
    else:
        RESULTS.write_text(f"# EDM benchmark results\n\n{block}\n")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"results-{'quick' if res['quick'] else 'full'}.json").write_text(json.dumps(res, indent=2, default=str))


WEBHOOKS_BEGIN = "<!-- bench:webhooks:begin -->"
WEBHOOKS_END = "<!-- bench:webhooks:end -->"


def report_webhooks(res: dict[str, Any]) -> str:
    """(d) as Markdown, under the same run header as report()."""
    header = report({**res, "dispatch": None, "generation": None, "rss": None}).rstrip()
    return "\n".join([header, "", *bench_webhooks.report_lines(res["webhooks"], res["machine"]["nproc"])])


def report_section(res: dict[str, Any], lines: list[str]) -> str:
    """A section's Markdown lines under the same run header as report()."""
    header = report({**res, "dispatch": None, "generation": None, "rss": None}).rstrip()
    return "\n".join([header, "", *lines])


def write_section_results(name: str, title: str, markdown: str, res: dict[str, Any]) -> None:
    """Replace the block `<!-- bench:NAME:begin/end -->` of RESULTS.md (the text around it is kept), or append
    one; the run's figures also go to var/bench/results-NAME-….json."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n## {title}: latest run\n\n{markdown}\n{end}"
    current = RESULTS.read_text() if RESULTS.exists() else "# EDM benchmark results\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        _, tail = rest.split(end, 1)
        current = head + block + tail
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(current)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"results-{name}-{'quick' if res['quick'] else 'full'}.json").write_text(
        json.dumps(res, indent=2, default=str)
    )


def write_webhooks_results(markdown: str, res: dict[str, Any]) -> None:
    """Replace the webhook block of RESULTS.md (the hand-written analysis around it is kept), or append one."""
    block = f"{WEBHOOKS_BEGIN}\n## Webhook ingest: latest run\n\n{markdown}\n{WEBHOOKS_END}"
    current = RESULTS.read_text() if RESULTS.exists() else "# EDM benchmark results\n"
    if WEBHOOKS_BEGIN in current and WEBHOOKS_END in current:
        head, rest = current.split(WEBHOOKS_BEGIN, 1)
        _, tail = rest.split(WEBHOOKS_END, 1)
        current = head + block + tail
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(current)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"results-webhooks-{'quick' if res['quick'] else 'full'}.json").write_text(
        json.dumps(res, indent=2, default=str)
    )


def _tracking(d: dict[str, Any]) -> str:
    return "on" if d.get("tracking", True) else "off"


# ---- main ---------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from edm.db.engine import make_engine, make_sessionmaker
    from edm.settings import Settings

    sizes = dict(QUICK if args.quick else FULL)
    if args.dispatch_recipients:
        sizes["dispatch"] = args.dispatch_recipients
    only = set(args.only or [s for s in SECTIONS if s not in ON_DEMAND])
    contacts_sizes = dict(bench_contacts.QUICK if args.quick else bench_contacts.FULL)
    stats_sizes = dict(bench_stats.QUICK if args.quick else bench_stats.FULL)
    console_sizes = dict(bench_console.QUICK if args.quick else bench_console.FULL)
    started = time.monotonic()
    res: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "max_concurrency": args.max_concurrency,
        "code": code_version(),
        "env": infra.passthrough(),
    }
    smtp = bool(only - NO_SMTP)  # no sink needed otherwise
    sink_bin, source_bin = infra.ensure_postfix_tools() if smtp else ("", "")
    res["pg"] = {}
    if only - NO_DATABASE:
        log(f"fresh database {infra.DB_NAME}; edm db upgrade")
        infra.recreate_database()
        infra.edm("db", "upgrade")
        res["pg"] = infra.pg_settings()
    env = infra.edm_env()
    os.environ.update({k: v for k, v in env.items() if k.startswith("EDM_")})
    settings = Settings()
    engine = make_engine(settings.database_url, pool_size=4)
    sm = make_sessionmaker(engine)
    sink = infra.Sink(sink_bin)
    if smtp:
        sink.start()
        log(f"smtp-sink pid {sink.pid} on 127.0.0.1:{sink.port}")
    try:
        need = max(
            [sizes["dispatch"]] * ("dispatch" in only)
            + [sizes["generation"]] * ("generation" in only)
            + [sizes["rss_large"], sizes["rss_small"]] * ("rss" in only)
            + [stats_sizes["subtasks"]] * ("stats" in only)
            + [contacts_sizes["contacts"]] * ("contacts" in only)
            + [console_sizes["contacts"]] * ("console" in only),
            default=0,
        )
        t0 = time.perf_counter()
        world = (
            None
            if not need
            else await seed.seed(
                sm,
                settings,
                contacts=need,
                sink_port=sink.port,
                max_concurrency=args.max_concurrency,
                tags={"dispatch": min(need, sizes["dispatch"]), "rss-small": sizes["rss_small"]},
            )
        )
        res["seed"] = {"contacts": need, "seconds": time.perf_counter() - t0}
        if need:
            log(f"seeded {need:,} contacts, tags and 2 SMTP services in {res['seed']['seconds']:.1f} s")
        if "dispatch" in only:
            res["dispatch"] = []
            for workers in args.workers:
                result = await run_dispatch(
                    sm,
                    world,
                    workers=workers,
                    concurrency=args.concurrency,
                    sink=sink,
                    source_bin=source_bin,
                    ref_messages=sizes["ref_messages"],
                    timeout=args.timeout,
                    profile=args.profile,
                )
                res["dispatch"].append(asdict(result))
            if args.untracked_reference:
                # The same run without tracking: what rewriting links and adding the pixel cost, same machine.
                result = await run_dispatch(
                    sm,
                    world,
                    workers=max(args.workers),
                    concurrency=args.concurrency,
                    sink=sink,
                    source_bin=source_bin,
                    ref_messages=sizes["ref_messages"],
                    timeout=args.timeout,
                    tracking=False,
                )
                res["dispatch"].append(asdict(result))
        if "dispatch" in only and args.batch_esp:
            esp = BatchEsp(
                await seed.fake_services(sm, settings, world, latency_ms=50.0, batch_size=500, max_concurrency=10),
                latency_ms=50.0,
                batch_size=500,
                max_concurrency=10,
            )
            for workers in args.batch_workers:
                result = await run_dispatch(
                    sm,
                    world,
                    workers=workers,
                    concurrency=args.concurrency,
                    sink=sink,
                    source_bin=source_bin,
                    ref_messages=sizes["ref_messages"],
                    timeout=args.timeout,
                    profile=args.profile,
                    batch=esp,
                )
                res["dispatch"].append(asdict(result))
        if "rss" in only:
            res["rss"] = [
                asdict(
                    await run_rss(
                        sm,
                        world,
                        label=f"{sizes['rss_small']:,} recipients (to completion)",
                        tag="rss-small",
                        concurrency=args.concurrency,
                        window=None,
                        timeout=args.timeout,
                    )
                ),
                asdict(
                    await run_rss(
                        sm,
                        world,
                        label=f"{sizes['rss_large']:,} recipients (generated by the "
                        f"worker, then {sizes['rss_window']:.0f} s of sending)",
                        tag=None,
                        concurrency=args.concurrency,
                        window=sizes["rss_window"],
                        timeout=args.timeout,
                    )
                ),
            ]
        if "generation" in only:
            res["generation"] = await run_generation(sm, world)
        if "webhooks" in only:
            wh = dict(bench_webhooks.QUICK if args.quick else bench_webhooks.FULL)
            res["webhooks"] = asdict(
                await bench_webhooks.run(
                    sm,
                    settings,
                    subtasks=wh["subtasks"],
                    events=wh["events"],
                    ref_requests=wh["ref_requests"],
                    connections=args.webhook_connections,
                    profile=args.profile,
                )
            )
        if "tracking" in only:
            tr = dict(bench_tracking.QUICK if args.quick else bench_tracking.FULL)
            res["tracking"] = asdict(
                await bench_tracking.run(
                    sm,
                    settings,
                    subtasks=tr["subtasks"],
                    seconds=tr["seconds"],
                    connections=args.tracking_connections,
                    profile=args.profile,
                )
            )
        if "stats" in only:
            res["stats"] = asdict(
                await bench_stats.run(
                    sm,
                    world,
                    subtasks=stats_sizes["subtasks"],
                    reads=stats_sizes["reads"],
                    reference_reads=stats_sizes["reference_reads"],
                )
            )
        if "import" in only:
            rows = (bench_import.QUICK if args.quick else bench_import.FULL)["rows"]
            res["import"] = asdict(await bench_import.run(sm, settings, rows=rows))
        if "contacts" in only:
            res["contacts"] = asdict(await bench_contacts.run(sm, world, contacts=need, reads=contacts_sizes["reads"]))
        if "xlsx" in only:
            xs = dict(bench_xlsx.QUICK if args.quick else bench_xlsx.FULL)
            res["xlsx"] = asdict(
                await bench_xlsx.run(
                    sm,
                    settings,
                    rows=xs["rows"],
                    bomb_reference_s=xs["bomb_reference_s"],
                    read_rounds=xs["read_rounds"],
                )
            )
        if "compose" in only:
            cs = dict(bench_compose.QUICK if args.quick else bench_compose.FULL)
            log(f"compose: {cs['rounds']} rounds of {cs['n']:,} recipients per step and reference (CPU only)")
            res["compose"] = asdict(bench_compose.run(n=cs["n"], rounds=cs["rounds"]))
        if "console" in only:
            res["console"] = asdict(
                await bench_console.run(
                    sm, settings, contacts=console_sizes["contacts"], reads=console_sizes["reads"], world=world
                )
            )
        if "inbound" in only:  # last: its threading part seeds millions of rows in a database of its own
            ib = dict(bench_inbound.QUICK if args.quick else bench_inbound.FULL)
            for key, value in (
                ("messages", args.inbound_messages),
                ("threading_subtasks", args.inbound_subtasks),
                ("lookups", args.inbound_lookups),
            ):
                if value is not None:
                    ib[key] = value
            res["inbound"] = asdict(await bench_inbound.run(sm, settings, connections=args.inbound_connections, **ib))
        if "scale" in only:  # on demand; a database of its own, dropped afterwards
            sc = dict(bench_scale.QUICK if args.quick else bench_scale.FULL)
            if args.scale_recipients:
                sc["recipients"] = args.scale_recipients
                sc["reference"] = min(sc["reference"], max(1, args.scale_recipients // 10))
            res["scale"] = asdict(await bench_scale.run(**sc))
    finally:
        sink.stop()
        await engine.dispose()
    res["duration_s"] = time.monotonic() - started
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (5,000 recipients, 100,000 generated)")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this part (repeatable)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="`edm worker --concurrency` (dispatch loops)")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=100,
        help="services' max_concurrency (100 = the most allowed; 32 binds, see RESULTS.md)",
    )
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1, 2],
        help="worker counts for the dispatch runs, e.g. 1,2",
    )
    parser.add_argument("--dispatch-recipients", type=int, help="override the dispatch task size")
    parser.add_argument(
        "--batch-esp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also send the dispatch task through the simulated batch ESP (2 fake services, 50 ms, batch 500)",
    )
    parser.add_argument(
        "--batch-workers",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[2],
        help="worker counts for the batch-ESP runs (the target is for 2)",
    )
    parser.add_argument(
        "--untracked-reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the most workers with open/click tracking off (what tracking costs)",
    )
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds before a run is cut short")
    parser.add_argument("--profile", action="store_true", help="py-spy the first worker of each dispatch run")
    parser.add_argument(
        "--webhook-connections",
        type=int,
        default=bench_webhooks.CONNECTIONS,
        help="keep-alive connections of the webhook load client",
    )
    parser.add_argument(
        "--tracking-connections",
        type=int,
        default=bench_tracking.CONNECTIONS,
        help="keep-alive connections of wrk in the tracking section",
    )
    parser.add_argument(
        "--inbound-messages", type=int, help="(l) messages posted (5,000 full, 1,000 quick; 0: no ingest part)"
    )
    parser.add_argument(
        "--inbound-subtasks",
        type=int,
        help="(l) SubTasks of the threading table (10,000,000 full, 200,000 quick; 0: no threading part)",
    )
    parser.add_argument("--inbound-lookups", type=int, help="(l) threading lookups of each kind (1,000 full)")
    parser.add_argument(
        "--inbound-connections",
        type=int,
        default=bench_inbound.CONNECTIONS,
        help="(l) keep-alive connections posting inbound mail",
    )
    parser.add_argument(
        "--scale-recipients",
        type=int,
        help="(m) the large task of --only scale (10,000,000 full; the reference is min(1,000,000, a tenth))",
    )
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    res = asyncio.run(main_async(args))
    others = any(res.get(k) for k in ("dispatch", "generation", "rss"))
    markdown = report(res)
    if others:
        print()
        print(markdown)
    hooks = report_webhooks(res) if res.get("webhooks") else None
    if hooks:
        print()
        print(hooks)
    written: dict[str, tuple[str, str]] = {}  # RESULTS.md block name -> (title, Markdown)
    if res.get("tracking"):
        lines = bench_tracking.report_lines(res["tracking"], res["machine"]["nproc"])
        written["tracking"] = ("Tracking endpoints", report_section(res, lines))
    if res.get("stats"):
        written["stats"] = ("Task statistics", report_section(res, bench_stats.report_lines(res["stats"])))
    if res.get("import"):
        written["import"] = ("Contact import", report_section(res, bench_import.report_lines(res["import"])))
    if res.get("contacts"):
        written["contacts"] = ("Contacts", report_section(res, bench_contacts.report_lines(res["contacts"])))
    if res.get("xlsx"):
        written["xlsx"] = ("XLSX import", report_section(res, bench_xlsx.report_lines(res["xlsx"])))
    if res.get("compose"):
        written["compose"] = ("Compose", report_section(res, bench_compose.report_lines(res["compose"])))
    if res.get("console"):
        written["console"] = ("Console pages", report_section(res, bench_console.report_lines(res["console"])))
    if res.get("inbound"):
        lines = bench_inbound.report_lines(res["inbound"], res["machine"]["nproc"])
        written["inbound"] = ("Inbound mail", report_section(res, lines))
    if res.get("scale"):
        written["scale"] = ("Past a million", report_section(res, bench_scale.report_lines(res["scale"])))
    for _, section in written.values():
        print()
        print(section)
    if not args.no_write:
        if others:
            write_results(markdown, res)
        if hooks:
            write_webhooks_results(hooks, res)
        for name, (title, section) in written.items():
            write_section_results(name, title, section, res)
        log(f"wrote {RESULTS.relative_to(infra.ROOT)}")


if __name__ == "__main__":
    main()
