"""The dashboard's daily series (GET /api/v1/dashboard `daily`, the console's charts): the last 30 days in the
user's time zone, each fact on the local day it happened."""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.models.tasks import SubTask, Task
from edm.models.users import User
from edm.tasks import generation
from tests import factories
from tests.helpers import make_account

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)  # 20:00 in Shanghai (UTC+8)


def _at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=dt.UTC)


async def test_each_fact_counts_on_its_local_day_for_thirty_days(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    clock.freeze(NOW)
    alice = await make_account(sessionmaker, "alice", credit=100)
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(User).where(User.id == alice.id).values(timezone="Asia/Shanghai"))
        sender = await factories.sender(session, alice.id)
        template = await factories.template(session, alice.id)
        await factories.contacts(session, alice.id, 5)
        task_id = await factories.task(
            session, alice.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
        )
    async with unit_of_work(sessionmaker) as session:
        assert await generation.generate(session, task_id, now=NOW) is not None
    async with unit_of_work(sessionmaker) as session:
        st = list(await session.scalars(select(SubTask.id).where(SubTask.task_id == task_id).order_by(SubTask.seq)))
        history = {
            # 17:00 UTC on the 9th is 01:00 on the 10th in Shanghai: a UTC grouping would put it a day early.
            st[0]: {"sent_at": _at(9, 17), "delivered_at": _at(9, 17, 1), "first_opened_at": _at(10, 2)},
            st[1]: {"sent_at": _at(9, 15), "bounced_at": _at(9, 15, 30)},  # 23:00 and 23:30 on the 9th
            st[2]: {"sent_at": _at(9, 15, 50), "first_clicked_at": _at(9, 16, 10), "unsubscribed_at": _at(10, 3)},
            st[3]: {"sent_at": _at(9, 15), "complained_at": _at(10, 11, 59)},
            st[4]: {"sent_at": NOW - dt.timedelta(days=31)},  # before the 30 days
        }
        for subtask_id, values in history.items():
            await session.execute(update(SubTask).where(SubTask.id == subtask_id).values(**values))
        await session.execute(
            update(Task).where(Task.id == task_id).values(first_sent_at=NOW - dt.timedelta(days=31), status="sending")
        )

    board = (await client.get("/api/v1/dashboard", headers=alice.headers)).json()
    daily = board["daily"]
    assert daily["timezone"] == "Asia/Shanghai"
    days = {d["date"]: {k: v for k, v in d.items() if k != "date" and v} for d in daily["days"]}
    assert len(daily["days"]) == 30
    assert daily["days"][0]["date"] == "2026-02-09" and daily["days"][-1]["date"] == "2026-03-10"
    assert days["2026-03-10"] == {
        "sent": 1,
        "delivered": 1,
        "opened": 2,
        "clicked": 1,
        "complained": 1,
        "unsubscribed": 1,
    }
    assert days["2026-03-09"] == {"sent": 3, "bounced": 1}
    assert not any(counts for date, counts in days.items() if date not in ("2026-03-09", "2026-03-10"))
    assert daily["totals"] == {
        "sent": 4,
        "delivered": 1,
        "opened": 2,
        "clicked": 1,
        "bounced": 1,
        "complained": 1,
        "unsubscribed": 1,
    }
