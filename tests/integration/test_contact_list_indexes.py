"""The contact list's slow shapes at 1,000,000 contacts (text search, attribute filter, sorts) are served by the
indexes of migration 0003: the statement `list_contacts` really sends is captured and EXPLAINed on PostgreSQL.
Sequential scans (and, for the sorts, sorting) are priced out, so a plan names an index exactly when the
query can use it: an
index whose expression drifted from the query's (a search field added, a parameter instead of a literal)
fails here."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.contacts.filters import ContactFilter, Sort
from edm.contacts.service import list_contacts
from edm.db.session import unit_of_work
from edm.paging import Page
from tests import factories

CASES = [
    ("search", ContactFilter(q="person4242@"), Sort(), "ix_contacts_search_trgm"),
    ("attribute", ContactFilter(attributes=(("n", "42"),)), Sort(), "ix_contacts_attributes"),
    ("created", ContactFilter(), Sort("created", True), "ix_contacts_user_id_created_at_id"),
    ("updated", ContactFilter(), Sort("updated", False), "ix_contacts_user_id_updated_at_id"),
    ("name", ContactFilter(), Sort("name", False), "ix_contacts_user_id_name_id"),
]


@pytest.fixture
async def populated(db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    if not db_url.startswith("postgresql"):
        pytest.skip("the GIN, trigram and expression indexes are PostgreSQL's (SQLite lists by scanning)")
    async with unit_of_work(sessionmaker) as session:
        user_id = await factories.user(session, "alice")
        # Enough rows that walking the primary key and filtering (the plan of a small table) costs more than
        # the index a rare match needs.
        await session.execute(
            text(
                "INSERT INTO contacts (user_id, email, email_normalized, email_domain, name, status, custom_attributes,"
                " soft_bounce_streak, created_at, updated_at) SELECT :user_id, 'person' || i || '@example.net',"
                " 'person' || i || '@example.net', 'example.net', 'Name ' || i, 'active',"
                " jsonb_build_object('n', i % 5000), 0, now() - i * interval '1 minute', now()"
                " FROM generate_series(1, 20000) AS i"
            ),
            {"user_id": user_id},
        )
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE contacts"))
        await conn.commit()
    return user_id


@pytest.mark.parametrize(("label", "filters", "sort", "index"), CASES, ids=[c[0] for c in CASES])
async def test_the_list_query_uses_its_index(
    populated: int,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    label: str,
    filters: ContactFilter,
    sort: Sort,
    index: str,
) -> None:
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().startswith("SELECT contacts."):
            sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with sessionmaker() as session:
            rows = await list_contacts(session, user_id=populated, page=Page(50, None), filters=filters, sort=sort)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    assert rows, f"{label}: the query found nothing, so the plan proves little"
    assert len(sent) == 1
    statement, parameters = sent[0]
    async with engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        if sort.key == "id":  # searches are planned per pattern (list_contacts forces custom plans)
            await conn.execute(text("SET plan_cache_mode = force_custom_plan"))
        else:  # a plain list's prepared statement soon runs a generic plan, which cannot see bound values;
            # and its sort index must beat sorting the user's rows
            await conn.execute(text("SET plan_cache_mode = force_generic_plan"))
            await conn.execute(text("SET enable_sort = off"))
        # A named prepared statement, as asyncpg's cache keeps them: its plan is what the settings make it.
        await conn.exec_driver_sql(f"PREPARE listed AS {statement}")
        arguments = ", ".join(_sql_literal(value) for value in parameters)
        explained = await conn.exec_driver_sql(f"EXPLAIN EXECUTE listed({arguments})")
        plan = "\n".join(row[0] for row in explained)
    assert index in plan, plan


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool | int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"
