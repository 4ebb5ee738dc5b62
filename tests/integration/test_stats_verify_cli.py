"""`edm stats verify`: the statistics served for each task against a row-by-row recount. On PostgreSQL the
served counts come from the trigger-kept counters, so a counter that drifted from the rows is reported
(exit 1) with the served and recounted value of each count that differs."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import select, update

from edm import clock
from edm.db.session import unit_of_work
from edm.models.tasks import SubTask, TaskQuarterCounter, TaskStatCounter
from edm.tasks import generation
from tests import factories
from tests.helpers import run_cli, settings_for


async def _generated_task(sessionmaker: Any, w: factories.World) -> int:
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    async with unit_of_work(sessionmaker) as session:
        assert await generation.generate(session, task_id, now=clock.utc_now()) is not None
    return task_id


async def test_every_task_agrees_with_its_recount(db_url: str, sessionmaker: Any) -> None:
    w = await factories.world(sessionmaker, settings_for(db_url), recipients=4)
    first, second = await _generated_task(sessionmaker, w), await _generated_task(sessionmaker, w)

    every = run_cli(db_url, "stats", "verify")
    assert (every.returncode, every.stdout) == (0, f"task {first}: ok\ntask {second}: ok\n"), every.stderr
    one = run_cli(db_url, "stats", "verify", str(second), "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == [{"task_id": second, "ok": True, "differences": {}}]


async def test_a_drifted_counter_is_reported_on_postgresql(db_url: str, sessionmaker: Any) -> None:
    if not db_url.startswith("postgresql"):
        return  # SQLite serves the statistics from the rows themselves: nothing can drift
    w = await factories.world(sessionmaker, settings_for(db_url), recipients=4)
    task_id = await _generated_task(sessionmaker, w)
    async with unit_of_work(sessionmaker) as session:
        await session.execute(
            update(TaskStatCounter).where(TaskStatCounter.task_id == task_id).values(n=TaskStatCounter.n + 1)
        )

    r = run_cli(db_url, "stats", "verify", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    [report] = json.loads(r.stdout)
    assert report["task_id"] == task_id and report["ok"] is False
    assert report["differences"]["recipients"] == [5, 4]


async def test_drifted_breakdown_counters_are_reported_on_postgresql(db_url: str, sessionmaker: Any) -> None:
    """The per-quarter-hour facts and the per-template split are counters on PostgreSQL too (migration 0007)."""
    if not db_url.startswith("postgresql"):
        return  # SQLite serves the breakdowns from the rows themselves: nothing can drift
    w = await factories.world(sessionmaker, settings_for(db_url), recipients=3)
    task_id = await _generated_task(sessionmaker, w)
    sent_at = dt.datetime(2026, 3, 1, 9, 7, tzinfo=dt.UTC)
    async with unit_of_work(sessionmaker) as session:
        first = await session.scalar(select(SubTask.id).where(SubTask.task_id == task_id).order_by(SubTask.id))
        await session.execute(update(SubTask).where(SubTask.id == first).values(sent_at=sent_at))
    assert run_cli(db_url, "stats", "verify", str(task_id)).returncode == 0, "the triggers kept up"
    async with unit_of_work(sessionmaker) as session:
        await session.execute(
            update(TaskQuarterCounter).where(TaskQuarterCounter.task_id == task_id).values(n=TaskQuarterCounter.n + 2)
        )
        await session.execute(
            update(TaskStatCounter)
            .where(TaskStatCounter.task_id == task_id)
            .values(task_template_id=TaskStatCounter.task_template_id + 1000)
        )

    r = run_cli(db_url, "stats", "verify", str(task_id), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    [report] = json.loads(r.stdout)
    quarter = int(sent_at.timestamp()) // 900
    assert report["differences"][f"quarters.sent[{quarter}]"] == [3, 1]
    assert any(k.startswith("by_task_template_id[") for k in report["differences"]), report["differences"]
    assert "recipients" not in report["differences"], "the statistics themselves still agree"
