"""A large generation refreshes the planner's statistics of `subtasks` before it commits
(docs/deploy.md#past-a-million-rows): without them the planner takes a new task of millions of rows for a few,
and every claim reads and sorts all the task's pending rows instead of the first k of the claim's partial index
(bench/RESULTS.md, "Past a million").

PostgreSQL only (SQLite keeps no such statistics unless asked, and its claims stay small). The threshold is
lowered to the size of the test's task; a VACUUM holding the table's lock does not fail the generation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from edm import clock
from edm.db.session import unit_of_work
from edm.tasks import generation
from tests import factories
from tests.helpers import settings_for

RECIPIENTS = 30  # below autovacuum's analyze threshold (50 rows): only the generation's ANALYZE counts them


async def _scheduled_task(sessionmaker: Any, db_url: str) -> int:
    """A scheduled task to RECIPIENTS contacts; `subtasks` emptied and analyzed (reltuples 0, no earlier test's)."""
    w = await factories.world(sessionmaker, settings_for(db_url), recipients=RECIPIENTS)
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
        await session.execute(text("DELETE FROM subtasks"))
    async with unit_of_work(sessionmaker) as session:
        await session.execute(text("ANALYZE subtasks"))
    assert (await _planner_rows(sessionmaker, task_id))[0] == 0  # (an empty table's ANALYZE keeps old pg_stats)
    return task_id


async def _planner_rows(sessionmaker: Any, task_id: int) -> tuple[float, list[str]]:
    """(pg_class.reltuples of subtasks, the most common task_ids pg_stats knows)."""
    async with sessionmaker() as session:
        reltuples = float(await session.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'subtasks'")))
        common = await session.scalar(
            text(
                "SELECT most_common_vals::text FROM pg_stats "
                "WHERE tablename = 'subtasks' AND attname = 'task_id' AND schemaname = current_schema()"
            )
        )
    return reltuples, (common or "{}").strip("{}").split(",")


async def test_a_large_generation_leaves_the_planner_statistics_of_its_rows(
    db_url: str, sessionmaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's planner statistics")
    task_id = await _scheduled_task(sessionmaker, db_url)
    monkeypatch.setattr(generation, "ANALYZE_AFTER", RECIPIENTS)
    async with unit_of_work(sessionmaker) as session:
        result = await generation.generate(session, task_id, now=clock.utc_now())
    assert result is not None and result.status == "queued" and result.sendable == RECIPIENTS
    assert await _planner_rows(sessionmaker, task_id) == (RECIPIENTS, [str(task_id)])


async def test_a_small_generation_leaves_the_statistics_to_autovacuum(
    db_url: str, sessionmaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's planner statistics")
    task_id = await _scheduled_task(sessionmaker, db_url)
    monkeypatch.setattr(generation, "ANALYZE_AFTER", RECIPIENTS + 1)
    async with unit_of_work(sessionmaker) as session:
        result = await generation.generate(session, task_id, now=clock.utc_now())
    assert result is not None and result.sendable == RECIPIENTS
    assert (await _planner_rows(sessionmaker, task_id))[0] == 0


async def test_a_vacuum_holding_the_table_does_not_fail_the_generation(
    db_url: str, engine: AsyncEngine, sessionmaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session holds the lock ANALYZE needs (what a VACUUM of `subtasks` holds): the generation waits
    ANALYZE_LOCK_TIMEOUT, then commits its rows without the statistics; its session's lock_timeout is as before."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's table locks")
    task_id = await _scheduled_task(sessionmaker, db_url)
    monkeypatch.setattr(generation, "ANALYZE_AFTER", RECIPIENTS)
    monkeypatch.setattr(generation, "ANALYZE_LOCK_TIMEOUT", "200ms")
    async with engine.connect() as holder:
        await holder.execute(text("LOCK TABLE subtasks IN SHARE UPDATE EXCLUSIVE MODE"))
        async with unit_of_work(sessionmaker) as session:
            await session.execute(text("SET LOCAL lock_timeout = '7s'"))
            result = await asyncio.wait_for(generation.generate(session, task_id, now=clock.utc_now()), timeout=5)
            assert await session.scalar(text("SELECT current_setting('lock_timeout')")) == "7s"
        await holder.rollback()
    assert result is not None and result.status == "queued" and result.sendable == RECIPIENTS
    async with sessionmaker() as session:
        rows = await session.scalar(text("SELECT count(*) FROM subtasks WHERE task_id = :t"), {"t": task_id})
    assert rows == RECIPIENTS
    assert (await _planner_rows(sessionmaker, task_id))[0] == 0
