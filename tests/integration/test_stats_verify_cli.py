"""`edm stats verify`: the statistics served for each task against a row-by-row recount. On PostgreSQL the
served counts come from the trigger-kept counters, so a counter that drifted from the rows is reported
(exit 1) with the served and recounted value of each count that differs."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import update

from edm import clock
from edm.db.session import unit_of_work
from edm.models.tasks import TaskStatCounter
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
