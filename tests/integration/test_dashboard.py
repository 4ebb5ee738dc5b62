"""Dashboards (docs/admin.md#dashboards-get-dashboard-get-admindashboard): GET /dashboard for every user,
GET /admin/dashboard for admins.

The SubTasks' history (sent, first human open, first click, reply) is written straight into the rows of a
generated campaign, so the windows' edges are exact; sending itself is tested elsewhere."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.models.tasks import SubTask, Task
from edm.models.users import Role, User
from edm.tasks import generation
from tests import factories
from tests.helpers import Account, expect_error, make_account, settings_for
from tests.helpers import run_cli as _edm

API = "/api/v1"


async def _campaign(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: int, recipients: int, prefix: str
) -> tuple[int, list[int]]:
    """A generated campaign of `recipients` contacts: (task id, SubTask ids in order)."""
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, user_id, local=f"news-{prefix}")
        template = await factories.template(session, user_id, name=f"t-{prefix}")
        contact_ids = await factories.contacts(session, user_id, recipients, prefix=prefix)
        task_id = await factories.task(
            session,
            user_id,
            sender_id=sender,
            template_ids=[template],
            rule={"type": "specific", "contact_ids": contact_ids},
            name=prefix,
        )
    async with unit_of_work(sessionmaker) as session:
        assert await generation.generate(session, task_id) is not None
    async with sessionmaker() as session:
        ids = list(await session.scalars(select(SubTask.id).where(SubTask.task_id == task_id).order_by(SubTask.seq)))
    return task_id, ids


async def _history(
    sessionmaker: async_sessionmaker[AsyncSession],
    task_id: int,
    rows: dict[int, dict[str, Any]],
    *,
    first_sent_ago: dt.timedelta,
    **task_values: Any,
) -> None:
    async with unit_of_work(sessionmaker) as session:
        for subtask_id, values in rows.items():
            await session.execute(update(SubTask).where(SubTask.id == subtask_id).values(**values))
        await session.execute(
            update(Task).where(Task.id == task_id).values(first_sent_at=utc_now() - first_sent_ago, **task_values)
        )


async def _alice_with_history(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[Account, int]:
    alice = await make_account(sessionmaker, "alice", credit=400)
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(User).where(User.id == alice.id).values(low_credit_threshold=500))
    now = utc_now()
    ago = {
        name: now - delta
        for name, delta in {
            "30m": dt.timedelta(minutes=30),
            "1h": dt.timedelta(hours=1),
            "3d": dt.timedelta(days=3),
            "20d": dt.timedelta(days=20),
            "40d": dt.timedelta(days=40),
        }.items()
    }
    task_id, st = await _campaign(sessionmaker, alice.id, 6, "alice")
    await _history(
        sessionmaker,
        task_id,
        {
            st[0]: {"sent_at": ago["1h"], "first_opened_at": ago["30m"], "open_count": 1},
            st[1]: {"sent_at": ago["1h"], "first_clicked_at": ago["30m"], "click_count": 1},  # a click is an open
            st[2]: {"sent_at": ago["1h"], "replied_at": ago["30m"], "machine_open_count": 3},  # machine opens only
            st[3]: {"sent_at": ago["3d"], "first_opened_at": ago["3d"], "open_count": 2},
            st[4]: {"sent_at": ago["20d"]},
            st[5]: {"sent_at": ago["40d"]},  # before every window
        },
        first_sent_ago=dt.timedelta(days=40),
        status="sending",
    )
    return alice, task_id


async def test_a_users_dashboard_counts_its_own_campaigns_by_window(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice, _ = await _alice_with_history(sessionmaker)
    # Another user's sends, and alice's own test send, never count in her campaign activity.
    bob = await make_account(sessionmaker, "bob", credit=100)
    bob_task, bob_rows = await _campaign(sessionmaker, bob.id, 2, "bob")
    await _history(
        sessionmaker,
        bob_task,
        {i: {"sent_at": utc_now(), "first_opened_at": utc_now(), "open_count": 1} for i in bob_rows},
        first_sent_ago=dt.timedelta(hours=1),
    )
    test_task, test_rows = await _campaign(sessionmaker, alice.id, 1, "alice-test")
    await _history(
        sessionmaker,
        test_task,
        {test_rows[0]: {"sent_at": utc_now()}},
        first_sent_ago=dt.timedelta(minutes=5),
        kind="test",
    )

    r = await client.get(f"{API}/dashboard", headers=alice.headers)
    assert r.status_code == 200, r.text
    board = r.json()
    assert board["credit"] == {"balance": board["credit"]["balance"], "low_credit_threshold": 500, "low": True}
    assert board["activity"] == {
        "24h": {"sent": 3, "opened": 2, "clicked": 1, "replied": 1},
        "7d": {"sent": 4, "opened": 3, "clicked": 1, "replied": 1},
        "30d": {"sent": 5, "opened": 3, "clicked": 1, "replied": 1},
    }
    assert board["tasks_by_status"] == {"sending": 1}, "the test send is not a campaign"
    bob_board = (await client.get(f"{API}/dashboard", headers=bob.headers)).json()
    assert bob_board["activity"]["24h"] == {"sent": 2, "opened": 2, "clicked": 0, "replied": 0}
    assert bob_board["credit"]["low"] is False and bob_board["credit"]["low_credit_threshold"] is None


async def test_paused_and_waiting_campaigns_are_listed_with_their_reason(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=100)
    paused, _ = await _campaign(sessionmaker, alice.id, 1, "paused")
    waiting, _ = await _campaign(sessionmaker, alice.id, 1, "waiting")
    quiet, _ = await _campaign(sessionmaker, alice.id, 1, "quiet")
    async with unit_of_work(sessionmaker) as session:
        await session.execute(
            update(Task)
            .where(Task.id == paused)
            .values(status="paused", pause_reason="error_threshold", pause_detail="hard bounces 12% over 5%")
        )
        await session.execute(update(Task).where(Task.id == waiting).values(waiting_reason="daily_quota"))
    board = (await client.get(f"{API}/dashboard", headers=alice.headers)).json()
    listed = {t["task_id"]: t for t in board["attention"]}
    assert set(listed) == {paused, waiting}, f"{quiet} runs normally and is not listed"
    assert (listed[paused]["pause_reason"], listed[paused]["pause_detail"]) == (
        "error_threshold",
        "hard bounces 12% over 5%",
    )
    assert listed[waiting]["waiting_reason"] == "daily_quota"


async def test_recent_imports_and_notifications_appear(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    up = await client.post(
        f"{API}/contacts/imports",
        files={"file": ("people.csv", b"email\na@example.org\n", "text/csv")},
        headers=alice.headers,
    )
    assert up.status_code == 202, up.text
    board = (await client.get(f"{API}/dashboard", headers=alice.headers)).json()
    assert [(i["id"], i["filename"]) for i in board["recent_imports"]] == [(up.json()["id"], "people.csv")]
    assert board["unread_notifications"] == 0


async def test_read_only_users_see_their_dashboard_but_not_the_admins(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role=Role.READ_ONLY)
    assert (await client.get(f"{API}/dashboard", headers=reader.headers)).status_code == 200
    expect_error(await client.get(f"{API}/admin/dashboard", headers=reader.headers), 403, "forbidden")
    user = await make_account(sessionmaker, "user")
    expect_error(await client.get(f"{API}/admin/dashboard", headers=user.headers), 403, "forbidden")
    expect_error(await client.get(f"{API}/dashboard"), 401, "unauthenticated")


async def test_the_admin_dashboard_shows_services_queue_credit_and_alerts(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    alice, _ = await _alice_with_history(sessionmaker)
    async with unit_of_work(sessionmaker) as session:
        svc = await factories.service(session, settings_for(db_url), "esp-one", daily_quota=250, map_to=[alice.id])
    assert (await client.post(f"{API}/admin/queue/pause-all", headers=admin.headers)).status_code == 200

    r = await client.get(f"{API}/admin/dashboard", headers=admin.headers)
    assert r.status_code == 200, r.text
    board = r.json()
    [service] = [s for s in board["services"] if s["id"] == svc]
    assert (service["name"], service["daily_quota"], service["quota_left_today"]) == ("esp-one", 250, 250)
    assert "credentials" not in service and "next_reset" in service
    assert board["queue"]["pending"] == 6 and board["queue"]["workers_alive"] == 0
    kinds = [a["kind"] for a in board["alerts"]]
    assert kinds[:2] == ["sending_paused", "no_worker"], kinds
    assert board["credit_per_day"]["totals"]["reserved"] == 6 and len(board["credit_per_day"]["days"]) == 7
    assert board["activity"]["30d"]["sent"] == 0, "the admin's own campaigns (none), not everyone's"


async def test_the_cli_prints_both_dashboards(sessionmaker: async_sessionmaker[AsyncSession], db_url: str) -> None:
    await make_account(sessionmaker, "root", role=Role.ADMIN)
    await _alice_with_history(sessionmaker)
    mine = _edm(db_url, "dashboard", "--user", "alice")
    assert mine.returncode == 0, mine.stderr
    assert "credit 394 (LOW: under 500)" in mine.stdout, "400 granted, 6 reserved by the campaign"
    assert "24h              3          2          1          1" in mine.stdout
    admin = _edm(db_url, "dashboard", "--admin", "--json")
    assert admin.returncode == 0, admin.stderr
    board = json.loads(admin.stdout)
    assert board["queue"]["pending"] == 6 and {a["kind"] for a in board["alerts"]} >= {"no_worker"}
    unknown = _edm(db_url, "dashboard", "--user", "nobody")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1, unknown.stderr
