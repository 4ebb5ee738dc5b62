"""Where a worker's time goes: the same `Worker` class `edm worker` runs, in-process, with its phases timed
(claim, compose, send, record, idle) and every SQL statement counted and timed; optionally under cProfile.

    .venv/bin/python -m bench.profile_worker [--recipients 20000] [--concurrency 8] [--cprofile]

It builds its own database (`edm_bench_profile`), smtp-sink and data with the same code as run_all, so it can
run beside nothing else. Wrappers are set on the Worker *instance* (nothing in src/ is changed).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("EDM_BENCH_DB", "edm_bench_profile")

from sqlalchemy import event, text  # noqa: E402

from bench import infra, seed  # noqa: E402

OUT_DIR = infra.ROOT / "var" / "bench"


class Phases:
    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.extra: Counter[str] = Counter()

    def wrap(
        self, name: str, fn: Callable[..., Awaitable[Any]], after: Callable[[Any], None] | None = None
    ) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1
            if after is not None:
                after(result)
            return result

        return timed


class Statements:
    """Every SQL statement the worker runs: count and client-observed time, by normalised text."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.rows: Counter[str] = Counter()
        self._started: dict[int, float] = {}

    @staticmethod
    def key(sql: str) -> str:
        sql = " ".join(sql.split())
        sql = re.sub(r"\$\d+(::\w+)?", "?", sql)
        sql = re.sub(r"(\?, )+\?", "?…", sql)
        return sql[:110]

    def attach(self, engine: Any) -> None:
        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
            self._started[id(cursor)] = time.perf_counter()

        @event.listens_for(engine.sync_engine, "after_cursor_execute")
        def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
            k = self.key(statement)
            self.count[k] += 1
            self.seconds[k] += time.perf_counter() - self._started.pop(id(cursor), time.perf_counter())
            if executemany and isinstance(params, (list, tuple)):
                self.rows[k] += len(params)

        @event.listens_for(engine.sync_engine, "commit")
        def commit(conn: Any) -> None:
            self.count["COMMIT"] += 1


async def run(args: argparse.Namespace) -> str:
    from edm.db.engine import make_engine, make_sessionmaker
    from edm.worker.dispatcher import Worker

    sink_bin, _ = infra.ensure_postfix_tools()
    settings, setup_engine, setup = infra.fresh_database()
    sink = infra.Sink(sink_bin).start()
    try:
        world = await seed.seed(
            setup,
            settings,
            contacts=args.recipients,
            sink_port=sink.port,
            max_concurrency=args.max_concurrency,
            tags={"dispatch": args.recipients},
        )
        fake_ids = (
            await seed.fake_services(setup, settings, world, latency_ms=50.0, batch_size=500, max_concurrency=10)
            if args.batch_esp
            else None
        )
        task_id, _ = await seed.create_task(setup, world, name="profile", tag="dispatch", service_ids=fake_ids)
        await seed.generate(setup, task_id)
        async with setup() as session:
            await session.execute(text("ANALYZE subtasks"))
            await session.commit()

        engine = make_engine(settings.database_url)
        statements = Statements()
        statements.attach(engine)
        worker = Worker(settings, make_sessionmaker(engine), concurrency=args.concurrency, run_jobs=False)
        phases = Phases()
        items: list[int] = []

        def claimed(claim: Any) -> None:
            if claim is None:
                phases.extra["claims returning nothing"] += 1
            else:
                items.append(len(claim.items))

        worker._claim_next = phases.wrap("claim (incl. snapshot)", worker._claim_next, claimed)  # type: ignore[method-assign]
        worker.composer.compose = phases.wrap("compose", worker.composer.compose)  # type: ignore[method-assign]
        worker._send_batch = phases.wrap("send (per batch, overlapping)", worker._send_batch)  # type: ignore[method-assign]
        worker._record = phases.wrap("record", worker._record)  # type: ignore[method-assign]
        worker._idle = phases.wrap("idle sleep (nothing claimed)", worker._idle)  # type: ignore[method-assign]
        worker.snapshots = phases.wrap("  of which service snapshot", worker.snapshots)  # type: ignore[method-assign]

        async def until_done() -> float:
            start = time.perf_counter()
            while True:
                await asyncio.sleep(0.25)
                async with setup() as session:
                    open_ = (
                        await session.execute(
                            text(
                                "SELECT count(*) FROM subtasks WHERE task_id = :t"
                                " AND send_state IN ('pending','allocated')"
                            ),
                            {"t": task_id},
                        )
                    ).scalar_one()
                if open_ == 0:
                    worker.request_stop()
                    return time.perf_counter() - start

        profiler = cProfile.Profile() if args.cprofile else None
        cpu0 = time.process_time()
        if profiler:
            profiler.enable()
        runner = asyncio.create_task(worker.run(install_signals=False))
        elapsed = await until_done()
        await runner
        if profiler:
            profiler.disable()
        cpu = time.process_time() - cpu0
        await engine.dispose()
    finally:
        sink.stop()
        await setup_engine.dispose()

    n = args.recipients
    loops = args.concurrency
    out = [
        f"In-process Worker: {n:,} recipients, {loops} dispatch loops, "
        + (
            "the task allowed only 2 fake batch services (50 ms a call, batch 500, max_concurrency 10)"
            if args.batch_esp
            else f"2 SMTP services × max_concurrency {args.max_concurrency} → smtp-sink"
        ),
        "",
        f"wall {elapsed:.1f} s → {n / elapsed:,.0f} msg/s; process CPU {cpu:.1f} s = {1000 * cpu / n:.2f} ms/msg "
        f"({100 * cpu / elapsed:.0f} % of one core; the bench poller and setup engine are included)",
        "",
        f"claims: {len(items)} with items, {phases.extra['claims returning nothing']} empty; items per claim: "
        f"mean {sum(items) / max(1, len(items)):.1f}, max {max(items, default=0)}",
        "",
        "Phase time summed over the dispatch loops (loop-seconds; loops × wall = "
        f"{loops * elapsed:.0f} loop-s available):",
    ]
    for name in (
        "claim (incl. snapshot)",
        "  of which service snapshot",
        "compose",
        "send (per batch, overlapping)",
        "record",
        "idle sleep (nothing claimed)",
    ):
        s, c = phases.seconds[name], phases.calls[name]
        out.append(
            f"  {name:<32} {s:8.1f} s in {c:6,} calls ({1000 * s / max(1, c):7.1f} ms each, "
            f"{1000 * s / n:6.2f} ms per message)"
        )
    total_statements = sum(v for k, v in statements.count.items() if k != "COMMIT")
    out += [
        "",
        f"SQL: {total_statements:,} statements + {statements.count['COMMIT']:,} commits = "
        f"{(total_statements + statements.count['COMMIT']) / n:.2f} round trips per message, "
        f"{(total_statements + statements.count['COMMIT']) / max(1, len(items)):.1f} per claim",
        "",
        "Top statements by client-observed time (count, total s, ms each):",
    ]
    for k, s in sorted(statements.seconds.items(), key=lambda kv: -kv[1])[: args.top]:
        out.append(f"  {statements.count[k]:7,}  {s:6.2f} s  {1000 * s / statements.count[k]:6.2f} ms  {k}")
    by_count: Counter[str] = Counter()
    for k, c in statements.count.items():
        by_count[k.split(" ")[0]] += c
    kinds = sorted(by_count.items(), key=lambda x: -x[1])
    out.append("  statement kinds: " + ", ".join(f"{k} {v:,}" for k, v in kinds))
    if profiler:
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top + 15)
        path = OUT_DIR / "cprofile-worker.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(buf.getvalue())
        profiler.dump_stats(str(OUT_DIR / "cprofile-worker.prof"))
        out += ["", f"cProfile written to {path.relative_to(infra.ROOT)} (and .prof)"]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=32)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument(
        "--batch-esp", action="store_true", help="send through 2 fake batch services (50 ms a call, batch 500) only"
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(report)
    path = OUT_DIR / "profile-worker.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(report + "\n")


if __name__ == "__main__":
    main()
