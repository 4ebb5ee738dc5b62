"""The exclusion rule's two uses on PostgreSQL, as the suppression list grows: the recipient estimate (the
rule over every candidate of a task, what generation runs too) and a claim of a few recipients (the same
rule over the SubTasks being claimed). Prints figures; writes nothing into RESULTS.md.

    .venv/bin/python -m bench.bench_exclusions [--contacts 200000] [--suppressions 0,10000,100000]
                                                [--reads 5] [--claim-size 100]

1. A fresh database (`EDM_BENCH_DB`, default `edm_bench_exclusions` here) with one user, `--contacts` contacts
   (bench/seed.py) and a task to all of them, generated (pending SubTasks to claim from).
2. For each size of the global suppression list (address entries that match no contact, a tenth of them
   domain entries, so every candidate is looked up and none is excluded): `tasks.recipients.estimate` of the
   task's rule, and `queue.claim` of up to `--claim-size` recipients, rolled back after each read so every
   read claims the same rows; then the claim-time check alone over `--claim-size` SubTasks with each
   `SuppressionLookup` (what the claim uses, PER_ROW, and the other one). Beside `SELECT 1` (the floor).

What to read: the estimate grows slowly with the list (each list is hashed once per query), the claim and
its PER_ROW check stay flat (each claimed row probes the value index), and the HASHED check grows with the
list (it reads every in-force entry for a hundred rows): why the two uses search the lists differently.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

if __name__ == "__main__" and "EDM_BENCH_DB" not in os.environ:
    os.environ["EDM_BENCH_DB"] = "edm_bench_exclusions"  # never the shared edm_bench / edm_test databases

from bench import infra  # noqa: E402
from bench.infra import log  # noqa: E402


async def timed(sessionmaker: Any, fn: Any, reads: int) -> tuple[float, float]:
    """(p50, max) in ms of `fn(session)`, each read in its own session, rolled back."""
    times = []
    for _ in range(reads):
        async with sessionmaker() as session:
            started = time.perf_counter()
            await fn(session)
            times.append((time.perf_counter() - started) * 1000)
            await session.rollback()
    return statistics.median(times), max(times)


async def grow_suppressions(sessionmaker: Any, *, have: int, want: int) -> None:
    """Global entries up to `want`: addresses of a domain no contact has, every tenth a domain entry."""
    from sqlalchemy import text

    from edm.clock import utc_now

    if want <= have:
        return
    async with sessionmaker() as session:
        await session.execute(
            text("""
            INSERT INTO suppressions (scope, user_id, owner_key, kind, value, reason, created_at, updated_at)
            SELECT 'global', NULL, 0,
                   CASE WHEN i % 10 = 0 THEN 'domain' ELSE 'address' END,
                   CASE WHEN i % 10 = 0 THEN 'blocked' || i || '.example' ELSE 'gone' || i || '@elsewhere.example' END,
                   'manual', :now, :now
            FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i
        """),
            {"first": have + 1, "last": want, "now": utc_now()},
        )
        await session.execute(text("ANALYZE suppressions"))
        await session.commit()


async def first_subtasks(sessionmaker: Any, task_id: int, count: int) -> list[int]:
    from sqlalchemy import select

    from edm.models.tasks import SubTask

    async with sessionmaker() as session:
        return list(
            await session.scalars(
                select(SubTask.id).where(SubTask.task_id == task_id).order_by(SubTask.seq).limit(count)
            )
        )


async def claim_check(session: Any, subtask_ids: list[int], *, user_id: int, lookup: Any) -> None:
    """The claim-time exclusion check over these SubTasks, with either lookup (the owner as a constant, so
    HASHED stays uncorrelated, as generation runs it)."""
    from sqlalchemy import func, select

    from edm.clock import utc_now
    from edm.models.contacts import Contact
    from edm.models.tasks import SubTask
    from edm.tasks.exclusions import Recipient, exclusion_reason

    address = SubTask.recipient_email
    recipient = Recipient(address=address, domain=func.split_part(address, "@", 2), user_id=user_id)
    reason = exclusion_reason(recipient, now=utc_now(), lookup=lookup)
    rows = await session.execute(
        select(SubTask.id, reason)
        .outerjoin(Contact, Contact.id == SubTask.contact_id)
        .where(SubTask.id.in_(subtask_ids))
    )
    assert all(r is None for _, r in rows.all())


async def main_async(args: argparse.Namespace) -> None:
    from sqlalchemy import text

    from bench import seed
    from edm.clock import utc_now
    from edm.dispatch import queue
    from edm.tasks.exclusions import SuppressionLookup
    from edm.tasks.recipients import Rule, estimate

    log(f"fresh database {infra.DB_NAME}; edm db upgrade")
    settings, engine, sm = infra.fresh_database(pool_size=2)
    try:
        started = time.perf_counter()
        world = await seed.seed(sm, settings, contacts=args.contacts, tags={}, sink_port=1, max_concurrency=100)
        task_id, _ = await seed.create_task(sm, world, name="exclusions")
        _, sendable = await seed.generate(sm, task_id)
        # As autovacuum would soon after the bulk load: without the visibility map, index-only scans fetch
        # the heap.
        async with sm.kw["bind"].connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
        log(f"seeded {args.contacts:,} contacts, generated {sendable:,} in {time.perf_counter() - started:.1f} s")
        rule = Rule.parse({"type": "all_contacts"})
        service_id = world.service_ids[0]

        async def run_estimate(session: Any) -> None:
            figures = await estimate(session, user_id=world.user_id, rule=rule, now=utc_now())
            assert figures["sendable"] == args.contacts, figures

        async def run_claim(session: Any) -> None:
            claim = await queue.claim(
                session, service_id=service_id, worker_id="bench", now=utc_now(), max_items=args.claim_size
            )
            assert claim is not None and len(claim.items) == args.claim_size and not claim.suppressed, claim

        async def select_one(session: Any) -> None:
            await session.execute(text("SELECT 1"))

        subtask_ids = await first_subtasks(sm, task_id, args.claim_size)

        def check_with(lookup: Any) -> Any:
            async def run_check(session: Any) -> None:
                await claim_check(session, subtask_ids, user_id=world.user_id, lookup=lookup)

            return run_check

        have = 0
        n = args.claim_size
        print(
            f"\n| suppressions | estimate p50 / max (ms) | claim of {n} p50 / max (ms) | check of {n}, PER_ROW "
            f"p50 (ms) | check of {n}, HASHED p50 (ms) | SELECT 1 p50 (ms) |"
        )
        print("|---|---|---|---|---|---|")
        for want in args.suppressions:
            await grow_suppressions(sm, have=have, want=want)
            have = max(have, want)
            est = await timed(sm, run_estimate, args.reads)
            claim = await timed(sm, run_claim, args.reads * 4)
            per_row = await timed(sm, check_with(SuppressionLookup.PER_ROW), args.reads * 4)
            hashed = await timed(sm, check_with(SuppressionLookup.HASHED), args.reads * 4)
            floor = await timed(sm, select_one, args.reads * 4)
            print(
                f"| {want:,} | {est[0]:.0f} / {est[1]:.0f} | {claim[0]:.1f} / {claim[1]:.1f} | {per_row[0]:.1f} "
                f"| {hashed[0]:.1f} | {floor[0]:.2f} |"
            )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--contacts", type=int, default=200_000, help="contacts of the user (all candidates)")
    parser.add_argument(
        "--suppressions",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[0, 10_000, 100_000],
        help="sizes of the global suppression list to measure at, ascending",
    )
    parser.add_argument("--reads", type=int, default=5, help="timed estimates per size (claims: 4 times as many)")
    parser.add_argument("--claim-size", type=int, default=100, help="recipients per claim")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
