"""`edm stats verify`: everything a task's pages read from counters, against the task's rows.

On PostgreSQL the statistics, their splits by template and by service, the per-quarter-hour facts and the attempts
per service are read from counters that triggers keep (docs/statistics.md#where-the-numbers-come-from). This
recounts each from the rows — the statistics row by row in Python (`stats.recount`), the rest by the same
aggregates SQLite serves — and reports every figure that differs as (served, recounted). On SQLite the served
figures are the aggregates themselves, so only the statistics' independent recount can differ.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.models.tasks import Task
from edm.tasks import facts, reports, stats


async def verify(session: AsyncSession, task_id: int | None = None) -> list[dict[str, Any]]:
    """Per task (every task, by id, when None): whether what is served agrees with the rows and, where not, each
    differing figure as (served, recounted)."""
    ids = [task_id] if task_id else list(await session.scalars(select(Task.id).order_by(Task.id)))
    report = []
    for tid in ids:
        served, counted = await stats.task_stats(session, tid), await stats.recount(session, tid)
        differences: dict[str, Any] = {k: (served[k], counted[k]) for k in served if served[k] != counted[k]}
        differences.update(await _split_differences(session, tid))
        differences.update(await _quarter_differences(session, tid))
        differences.update(await _attempt_differences(session, tid))
        report.append({"task_id": tid, "ok": not differences, "differences": differences})
    return report


def _differing(name: str, served: dict[Any, Any], counted: dict[Any, Any]) -> dict[str, Any]:
    return {
        f"{name}[{key}]": (served.get(key), counted.get(key))
        for key in sorted(set(served) | set(counted), key=str)
        if served.get(key) != counted.get(key)
    }


async def _split_differences(session: AsyncSession, task_id: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for split in stats.SPLITS:
        served = await stats.stat_groups(session, task_id, by=split)
        counted = await stats._row_groups(session, task_id, split)
        for key in sorted(set(served) | set(counted), key=str):
            a, b = stats._assemble(served.get(key, [])), stats._assemble(counted.get(key, []))
            found.update({f"by_{split}[{key}].{k}": (a[k], b[k]) for k in a if a[k] != b[k]})
    return found


async def _quarter_differences(session: AsyncSession, task_id: int) -> dict[str, Any]:
    served = await facts.fact_quarters(session, task_id, facts.FACTS)
    counted = await facts.from_rows(session, task_id, list(facts.FACTS))
    found: dict[str, Any] = {}
    for fact in facts.FACTS:
        found.update(_differing(f"quarters.{fact}", dict(served[fact]), dict(counted[fact])))
    return found


async def _attempt_differences(session: AsyncSession, task_id: int) -> dict[str, Any]:
    def keyed(rows: Any) -> dict[str, tuple[int, int]]:
        return {f"{sid or None}/{outcome}": (int(n), int(ms or 0)) for sid, outcome, n, ms, _ in rows}

    served = keyed(await reports.attempts_by_service(session, task_id))
    counted = keyed(await reports.attempts_by_service(session, task_id, from_rows=True))
    return _differing("attempts", served, counted)
