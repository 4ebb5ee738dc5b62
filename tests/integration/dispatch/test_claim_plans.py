"""The claim reads SubTasks through the partial indexes made for it, in the plans PostgreSQL really runs
(docs/deploy.md#past-a-million-rows).

asyncpg prepares every statement, and after a few runs PostgreSQL may switch a prepared statement to its generic
plan, built without the parameters' values. A partial index is usable only when the planner can prove its
predicate (`send_state = 'pending' AND attempts = 0` for `ix_subtasks_fresh`, `… attempts > 0` for
`ix_subtasks_retry`) from the query, so the claim writes those conditions as literals: with bound parameters the
retry probe became a sequential scan of the whole table (143 ms per claim at 1,000,000 SubTasks, growing with the
table). The test forces generic plans, has auto_explain send every plan to the client as a notice, claims, and
reads the plans. PostgreSQL only (SQLite has no prepared-plan cache of this kind)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text, update

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.tasks import SubTask
from edm.tasks import generation
from tests import factories
from tests.helpers import settings_for


async def _plans_of_a_claim(sessionmaker: Any, service_id: int) -> list[str]:
    """The plans of every statement one `queue.claim` runs, each forced generic, sequential scans discouraged
    (the test's table is small enough for a scan to win on cost alone)."""
    plans: list[str] = []
    async with unit_of_work(sessionmaker) as session:
        connection = await session.connection()
        raw = (await connection.get_raw_connection()).driver_connection

        def listen(_connection: Any, message: Any) -> None:
            plans.append(message.message)

        raw.add_log_listener(listen)
        for setting in (
            "LOAD 'auto_explain'",
            "SET LOCAL auto_explain.log_min_duration = 0",
            "SET LOCAL auto_explain.log_level = 'notice'",
            "SET LOCAL auto_explain.log_nested_statements = on",
            "SET LOCAL plan_cache_mode = force_generic_plan",
            "SET LOCAL enable_seqscan = off",
        ):
            await session.execute(text(setting))
        try:
            claim = await queue.claim(session, service_id=service_id, worker_id="w", now=utc_now(), max_items=2)
        finally:
            raw.remove_log_listener(listen)
    assert claim is not None and len(claim.items) == 2
    return plans


async def test_the_claim_uses_the_fresh_and_retry_indexes_in_generic_plans(db_url: str, sessionmaker: Any) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's prepared-statement plans")
    w = await factories.world(
        sessionmaker, settings_for(db_url), recipients=6, services_=[{"name": "esp", "max_concurrency": 10}]
    )
    async with unit_of_work(sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
        await generation.generate(session, task_id, now=utc_now())
        # one retry waiting (not due), so the retry probe has an index entry to consider
        await session.execute(
            update(SubTask)
            .where(SubTask.task_id == task_id, SubTask.seq == 1)
            .values(attempts=1, next_attempt_at=utc_now().replace(year=2100))
        )
    plans = "\n".join(await _plans_of_a_claim(sessionmaker, w.service_ids[0]))
    assert "ix_subtasks_fresh" in plans  # the candidate probe and the fresh rows' lock
    assert "ix_subtasks_retry" in plans  # the retries-due probe
    assert "Seq Scan on subtasks" not in plans
