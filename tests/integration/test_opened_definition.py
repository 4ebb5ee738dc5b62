"""One definition of "opened": a recipient opened the message (human) when a person opened it or clicked in it,
a click proving the open even when the images, and so the pixel, were blocked. The task statistics, the
reports, both dashboards and `edm dashboard` say the same for a recipient who clicked without a pixel hit."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.events import apply as event_apply
from edm.models.tasks import SubTask, Task
from edm.models.tracking import TrackedLink
from edm.models.users import Role
from edm.security.tokens import sign_token
from edm.tasks import generation
from edm.tasks.stats import recount, task_stats
from tests import factories
from tests.helpers import Account, make_account, run_cli, settings_for

API = "/api/v1"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0"
OFFER = "https://shop.example/offer"


async def _sent_campaign(sessionmaker: async_sessionmaker[AsyncSession], owner: Account) -> tuple[int, list[SubTask]]:
    """A campaign of two recipients, both sent an hour ago (long enough for a click to count as a person's)."""
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, owner.id)
        template = await factories.template(
            session, owner.id, html=f'<p><a href="{OFFER}">Offer</a></p>{{{{ unsubscribe_url }}}}'
        )
        contacts = await factories.contacts(session, owner.id, 2)
        task_id = await factories.task(
            session,
            owner.id,
            sender_id=sender,
            template_ids=[template],
            rule={"type": "specific", "contact_ids": contacts},
        )
    async with unit_of_work(sessionmaker) as session:
        assert await generation.generate(session, task_id) is not None
    an_hour_ago = utc_now() - dt.timedelta(hours=1)
    async with unit_of_work(sessionmaker) as session:
        await session.execute(
            update(SubTask)
            .where(SubTask.task_id == task_id)
            .values(send_state="sent", sent_at=an_hour_ago, attempts=1, charged=True)
        )
        await session.execute(
            update(Task).where(Task.id == task_id).values(status="sending", first_sent_at=an_hour_ago)
        )
        session.add(TrackedLink(id=7001, task_id=task_id, url=OFFER, created_at=an_hour_ago))
    async with sessionmaker() as session:
        rows = list(await session.scalars(select(SubTask).where(SubTask.task_id == task_id).order_by(SubTask.id)))
    return task_id, rows


async def test_a_click_without_a_pixel_hit_is_an_open_everywhere(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    ann = await make_account(sessionmaker, "ann", role=Role.ADMIN, credit=100)
    task_id, (clicker, _) = await _sent_campaign(sessionmaker, ann)

    token = sign_token("click", clicker.public_id, key=settings_for(db_url).signing_key, link_id=7001)
    followed = await client.get(f"/t/c/{token}", headers={"User-Agent": BROWSER})
    assert followed.status_code == 302 and followed.headers["location"] == OFFER
    await event_apply.drain(sessionmaker, simulated_matches_any=True)
    async with sessionmaker() as session:
        row = await session.get(SubTask, clicker.id, populate_existing=True)
        assert row is not None and (row.open_count, row.click_count, row.first_opened_at) == (0, 1, None)

    async def get(path: str, **params: Any) -> Any:
        r = await client.get(f"{API}{path}", params=params, headers=ann.headers)
        assert r.status_code == 200, r.text
        return r.json()

    stats = await get(f"/tasks/{task_id}/stats")
    assert (stats["opened_human"], stats["opened_total"], stats["clicked_human"], stats["opens"]) == (1, 1, 1, 0)
    assert stats["rates"]["open_human"] == 0.5 and stats["rates"]["click_to_open"] == 1.0
    async with sessionmaker() as session:
        assert await recount(session, task_id) == await task_stats(session, task_id)

    [template] = (await get(f"/tasks/{task_id}/report/templates"))["items"]
    assert (template["opened_human"], template["clicked_human"]) == (1, 1)
    [domain] = (await get(f"/tasks/{task_id}/report/domains"))["items"]
    assert domain["opened"] == 1
    opened = (await get(f"/tasks/{task_id}/subtasks", engagement="opened"))["items"]
    assert [s["id"] for s in opened] == [clicker.id]
    assert [s["id"] for s in (await get(f"/tasks/{task_id}/subtasks", engagement="none"))["items"]] != [clicker.id]

    expected = {"sent": 2, "opened": 1, "clicked": 1, "replied": 0}
    assert (await get("/dashboard"))["activity"]["24h"] == expected
    assert (await get("/admin/dashboard"))["activity"]["24h"] == expected
    shown = run_cli(db_url, "dashboard", "--user", "ann", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["activity"]["24h"] == expected


async def test_the_first_open_of_a_person_is_their_earlier_open_or_click(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The dashboard windows place a recipient by their first human open or click, whichever came first."""
    ann = await make_account(sessionmaker, "ann", credit=100)
    _, (early_click, late_click) = await _sent_campaign(sessionmaker, ann)
    now = utc_now()
    async with unit_of_work(sessionmaker) as session:
        # clicked 3 days ago, opened (pixel) 1 hour ago: opened 3 days ago, outside the last 24 h
        await session.execute(
            update(SubTask)
            .where(SubTask.id == early_click.id)
            .values(
                open_count=1,
                first_opened_at=now - dt.timedelta(hours=1),
                click_count=1,
                first_clicked_at=now - dt.timedelta(days=3),
            )
        )
        # opened 2 days ago, clicked 1 hour ago: opened 2 days ago
        await session.execute(
            update(SubTask)
            .where(SubTask.id == late_click.id)
            .values(
                open_count=1,
                first_opened_at=now - dt.timedelta(days=2),
                click_count=1,
                first_clicked_at=now - dt.timedelta(hours=1),
            )
        )
    activity = (await client.get(f"{API}/dashboard", headers=ann.headers)).json()["activity"]
    assert (activity["24h"]["opened"], activity["7d"]["opened"]) == (0, 2)
    assert (activity["24h"]["clicked"], activity["7d"]["clicked"]) == (1, 2)
