"""Dispatch throughput over a grid of settings: workers × `--concurrency` (dispatch loops) × the services'
max_concurrency, each a short run of the same dispatch benchmark as run_all (a fresh task per cell).

    .venv/bin/python -m bench.sweep [--recipients 10000] [--workers 1,2] [--concurrency 2,4,8]
                                    [--max-concurrency 32,100]

Writes var/bench/sweep.md. Used to choose run_all's defaults and to show what bounds dispatch.
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("EDM_BENCH_DB", "edm_bench_sweep")

from sqlalchemy import text  # noqa: E402

from bench import infra, seed  # noqa: E402
from bench.run_all import RUN_DIR, run_dispatch  # noqa: E402


def ints(value: str) -> list[int]:
    return [int(x) for x in value.split(",")]


async def main_async(args: argparse.Namespace) -> str:
    sink_bin, source_bin = infra.ensure_postfix_tools()
    settings, engine, sm = infra.fresh_database()
    sink = infra.Sink(sink_bin).start()
    rows = [
        "| workers | --concurrency | max_concurrency | msg/s (DB) | smtp-source -s 1 | ratio | worker CPU ms/msg "
        "| PostgreSQL CPU ms/msg | other CPU ms/msg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    try:
        world = await seed.seed(
            sm, settings, contacts=args.recipients, sink_port=sink.port, tags={"dispatch": args.recipients}
        )
        for mc in args.max_concurrency:
            async with sm() as session:
                await session.execute(text("UPDATE email_services SET max_concurrency = :m"), {"m": mc})
                await session.commit()
            for workers in args.workers:
                for conc in args.concurrency:
                    r = await run_dispatch(
                        sm,
                        world,
                        workers=workers,
                        concurrency=conc,
                        sink=sink,
                        source_bin=source_bin,
                        ref_messages=10_000,
                        timeout=args.timeout,
                    )
                    k = 1000 / max(1, r.sent)
                    rows.append(
                        f"| {workers} | {conc} | {mc} | {r.rate_db:,.0f} | {r.ref_rate:,.0f} | {r.ratio:.2f} "
                        f"| {r.cpu.get('workers', 0) * k:.2f} | {r.cpu.get('postgres', 0) * k:.2f} "
                        f"| {r.cpu.get('other', 0) * k:.2f} |"
                    )
                    print(rows[-1], flush=True)
    finally:
        sink.stop()
        await engine.dispose()
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--workers", type=ints, default=[1, 2])
    parser.add_argument("--concurrency", type=ints, default=[2, 4, 8])
    parser.add_argument("--max-concurrency", type=ints, default=[32, 100])
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    table = asyncio.run(main_async(args))
    print(table)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "sweep.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
