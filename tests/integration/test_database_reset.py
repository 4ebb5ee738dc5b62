"""The PostgreSQL reset between tests (tests/conftest.py: PgDatabase): whatever a test leaves behind, the next
one starts on empty tables whose ids count from 1 again, on the cheap path and on the big-table path alike."""

from __future__ import annotations

import psycopg
import pytest

from edm.db.engine import make_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.models import metadata
from edm.tasks import generation
from tests import factories
from tests.conftest import PG_URL, PgDatabase
from tests.helpers import settings_for

pytestmark = pytest.mark.skipif(not PG_URL, reason="needs EDM_TEST_DATABASE_URL")


def _leftovers(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        counts = {t.name: conn.execute(f'SELECT count(*) FROM "{t.name}"').fetchone() for t in metadata.sorted_tables}
    return {name: row[0] for name, row in counts.items() if row and row[0]}


def _next_ids(url: str) -> set[int]:
    """The id each sequence would give next (without taking it)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT coalesce(last_value + 1, start_value) FROM pg_sequences WHERE schemaname = current_schema()"
        ).fetchall()
    return {int(row[0]) for row in rows}


async def test_a_campaigns_rows_are_gone_and_ids_restart(pg_database: PgDatabase) -> None:
    pg_database.reset()
    engine = make_engine(pg_database.url)
    try:
        sessionmaker = make_sessionmaker(engine)
        world = await factories.world(
            sessionmaker, settings_for(pg_database.url), recipients=5, services_=[{"name": "svc"}]
        )
        async with unit_of_work(sessionmaker) as session:
            parent = await factories.tag(session, world.user_id, "parent")
            await factories.tag(session, world.user_id, "child", parent_id=parent)  # a self-reference (RESTRICT)
            task_id = await factories.task(
                session,
                world.user_id,
                sender_id=world.sender_id,
                template_ids=[world.template_id],
                rule={"type": "all_contacts"},
            )
        async with unit_of_work(sessionmaker) as session:
            await generation.generate(session, task_id)  # subtasks, and their statistics kept by a trigger
    finally:
        await engine.dispose()
    left = _leftovers(pg_database.url)
    assert {"users", "subtasks", "tags", "task_stat_counters"} <= set(left), left

    pg_database.reset()
    assert _leftovers(pg_database.url) == {}
    assert _next_ids(pg_database.url) == {1}


def test_a_big_table_is_emptied_too(pg_database: PgDatabase) -> None:
    pg_database.reset()
    with psycopg.connect(pg_database.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO login_attempts (username, at, succeeded) SELECT 'u' || g, now(), false"
            " FROM generate_series(1, %s) AS g",
            (PgDatabase.BIG_TABLE_ROWS,),
        )
        conn.execute("INSERT INTO webhook_nonces (nonce, source, seen_at) VALUES ('n', 's', now())")
    pg_database.reset()
    assert _leftovers(pg_database.url) == {}
    assert _next_ids(pg_database.url) == {1}
