"""Routing an inbound mail is index lookups (docs/conversations.md#threading-and-owner): the statements `match_thread`
and `owner_by_address` really send are captured and EXPLAINed on PostgreSQL with sequential scans priced out, so the
plan names the index exactly when the query can use it. (A timed measurement belongs in bench/.)"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from edm.conversations.threading import match_thread, owner_by_address
from tests.integration.conversations.conftest import ConversationKit


async def explained(engine: AsyncEngine, ckit: ConversationKit, call: Any, table: str) -> str:
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if f"FROM {table}" in statement:
            sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with ckit.sessionmaker() as session:
            assert await call(session)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    statement, parameters = sent[0]
    async with engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        await conn.exec_driver_sql(f"PREPARE routed AS {statement}")
        arguments = ", ".join("'" + str(value).replace("'", "''") + "'" for value in parameters)
        rows = await conn.exec_driver_sql(f"EXPLAIN EXECUTE routed({arguments})")
        return "\n".join(row[0] for row in rows)


async def test_threading_and_the_sender_lookup_use_unique_indexes(
    ckit: ConversationKit, db_url: str, engine: AsyncEngine
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("plans are checked on PostgreSQL")
    ids = ["CAF=other@mail.gmail.com", ckit.message_id(1), ckit.message_id(0)]
    plan = await explained(engine, ckit, lambda session: match_thread(session, ids), "subtasks")
    assert "uq_subtasks_public_id" in plan, plan
    plan = await explained(
        engine, ckit, lambda session: owner_by_address(session, "news@fake-esp.example.com"), "senders"
    )
    assert "uq_senders_local_part_lower" in plan, plan
