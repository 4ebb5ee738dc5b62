"""Where generation's time goes: every statement `generation.generate` runs for an all-contacts task, timed,
then EXPLAIN (ANALYZE, BUFFERS) of the big INSERT … SELECT and of the estimate it repeats, each in a
rolled-back transaction. Its own database (`edm_bench_explain`).

    .venv/bin/python -m bench.explain_generation [--contacts 1000000] [--experiments]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

os.environ.setdefault("EDM_BENCH_DB", "edm_bench_explain")

from sqlalchemy import event, text  # noqa: E402

from bench import infra, seed  # noqa: E402
from bench.infra import log  # noqa: E402

OUT = infra.ROOT / "var" / "bench" / "explain-generation.txt"


FK_OTHERS = (
    "fk_subtasks_user_id_users",
    "fk_subtasks_task_template_id_task_templates",
    "fk_subtasks_service_id_email_services",
)
NO_FKS = ["ALTER TABLE subtasks DROP CONSTRAINT fk_subtasks_contact_id_contacts"] + [
    f"ALTER TABLE subtasks DROP CONSTRAINT {fk}" for fk in FK_OTHERS
]
SECONDARY = (
    "ix_subtasks_allocated",
    "ix_subtasks_retry",
    "ix_subtasks_service_id_provider_message_id",
    "ix_subtasks_task_id_send_state",
    "ix_subtasks_user_id",
)
EXPERIMENTS: list[tuple[str, list[str]]] = [
    ("as is", []),
    ("SET LOCAL work_mem = '256MB' (the 100 MB sort stays in memory)", ["SET LOCAL work_mem = '256MB'"]),
    (
        "without the FK to contacts (its RI trigger takes FOR KEY SHARE on every contact row)",
        ["ALTER TABLE subtasks DROP CONSTRAINT fk_subtasks_contact_id_contacts"],
    ),
    ("without the FKs to contacts, users, task_templates, email_services (task_id FK kept)", NO_FKS),
    (
        "… and without ix_subtasks_user_id, ix_subtasks_service_id_provider_message_id",
        NO_FKS + ["DROP INDEX ix_subtasks_user_id", "DROP INDEX ix_subtasks_service_id_provider_message_id"],
    ),
    (
        "floor: no FK but task_id; only pk, public_id, (task_id, contact_id), (task_id, recipient_email), fresh",
        NO_FKS + [f"DROP INDEX {ix}" for ix in SECONDARY],
    ),
    ("as is (again: drift check)", []),
]


async def timed_insert(engine: Any, statement: str, params: Any, setup: list[str]) -> tuple[float, float]:
    """(seconds, MB of WAL) of the statement after `setup`, rolled back; then VACUUM so the next variant
    does not wade through this one's dead index entries."""
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        tx = driver.transaction()
        await tx.start()
        try:
            for sql in setup:
                await driver.execute(sql)
            lsn0 = await driver.fetchval("SELECT pg_current_wal_insert_lsn()")
            start = time.perf_counter()
            await driver.execute(statement, *(list(params) if isinstance(params, (list, tuple)) else []))
            seconds = time.perf_counter() - start
            wal = await driver.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1)", lsn0)
            return seconds, float(wal) / 2**20
        finally:
            await tx.rollback()
            await driver.execute("VACUUM subtasks")
            await driver.execute("CHECKPOINT")


async def main_async(args: argparse.Namespace) -> str:
    from edm.clock import utc_now
    from edm.tasks import generation

    settings, engine, sm = infra.fresh_database()
    out: list[str] = []
    try:
        world = await seed.seed(sm, settings, contacts=args.contacts, sink_port=25, tags={})
        task_id, _ = await seed.create_task(sm, world, name="explain")
        captured: list[tuple[str, Any, float]] = []
        started: dict[int, float] = {}

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            started[id(cursor)] = time.perf_counter()

        @event.listens_for(engine.sync_engine, "after_cursor_execute")
        def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            captured.append((statement, params, time.perf_counter() - started.pop(id(cursor), 0.0)))

        async with sm() as session:
            t0 = time.perf_counter()
            result = await generation.generate(session, task_id, now=utc_now())
            t1 = time.perf_counter()
            await session.commit()
            t2 = time.perf_counter()
        assert result is not None
        event.remove(engine.sync_engine, "before_cursor_execute", before)
        event.remove(engine.sync_engine, "after_cursor_execute", after)
        out.append(
            f"generate(): {result.sendable:,} recipients, {t1 - t0:.1f} s in statements + {t2 - t1:.1f} s commit"
        )
        out.append("")
        out.append("Statements (seconds, first 160 chars):")
        for statement, _, seconds in captured:
            out.append(f"  {seconds:7.2f} s  {' '.join(statement.split())[:160]}")
        heavy = sorted(captured, key=lambda c: -c[2])[:2]
        insert = next(c for c in captured if c[0].lstrip().startswith("INSERT INTO subtasks"))
        # Undo the generation so the big statements can be explained against the same data.
        async with sm() as session:
            await session.execute(text("DELETE FROM subtasks WHERE task_id = :t"), {"t": task_id})
            await session.commit()
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("VACUUM ANALYZE subtasks"))
        for statement, params, seconds in heavy:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                tx = driver.transaction()
                await tx.start()
                try:
                    args_ = list(params) if isinstance(params, (list, tuple)) else []
                    plan = await driver.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", *args_)
                finally:
                    await tx.rollback()
            out.append("")
            out.append(f"EXPLAIN ANALYZE of the {seconds:.1f} s statement:")
            out += ["  " + r[0] for r in plan]
        if args.experiments:
            out += ["", "The same INSERT … SELECT under changes (each rolled back, so nothing sticks):"]
            for label, setup in EXPERIMENTS:
                seconds, wal = await timed_insert(engine, insert[0], insert[1], setup)
                out.append(f"  {seconds:6.1f} s  {wal:6,.0f} MB WAL  {label}")
                log(out[-1].strip())
    finally:
        await engine.dispose()
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--experiments", action="store_true", help="time the INSERT without FKs, with work_mem…")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print(report)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(report + "\n")
    log(f"wrote {OUT.relative_to(infra.ROOT)}")


if __name__ == "__main__":
    main()
