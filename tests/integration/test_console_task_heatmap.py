"""The campaign page's weekday × hour heat map of opens over the ASGI app: a 7 × 24 grid shaded by count (a CSS
class per level, no inline style), each cell's count in its text and its title, the legend, the busiest hour, the
weekdays in the viewer's language and the campaign's time zone named. tests/browser/test_task_heatmap.py audits
the same page in Chromium."""

from __future__ import annotations

import datetime as dt
import re

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.events import apply as event_apply
from edm.events import ingest
from edm.models.tasks import SubTask
from edm.models.users import User
from edm.tasks import generation
from edm.vocabulary.events import EventType, NormalizedEvent
from tests import factories
from tests.helpers import Account, console_log_in, make_account

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0"
# In America/New_York: three opens on Monday 10 March 2025 at 09:05–09:40 (EDT), one on Sunday 9 March at 01:30 (EST).
OPENS = (
    dt.datetime(2025, 3, 10, 13, 5, tzinfo=dt.UTC),
    dt.datetime(2025, 3, 10, 13, 20, tzinfo=dt.UTC),
    dt.datetime(2025, 3, 10, 13, 40, tzinfo=dt.UTC),
    dt.datetime(2025, 3, 9, 6, 30, tzinfo=dt.UTC),
)


async def campaign_with_opens(
    sessionmaker: async_sessionmaker[AsyncSession], who: Account, opens: tuple[dt.datetime, ...] = OPENS
) -> int:
    """A generated campaign in America/New_York whose recipients opened it at `opens` (tracking hits applied by the
    events job's code, as in production)."""
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, who.id, local=f"news-{who.username}")
        template = await factories.template(session, who.id)
        await factories.contacts(session, who.id, 2, prefix=f"{who.username}-")
        task_id = await factories.task(
            session,
            who.id,
            sender_id=sender,
            template_ids=[template],
            rule={"type": "all_contacts"},
            timezone="America/New_York",
        )
        assert await generation.generate(session, task_id) is not None
    async with unit_of_work(sessionmaker) as session:
        refs = list(await session.scalars(select(SubTask.public_id).where(SubTask.task_id == task_id)))
        rows = [
            ingest.event_row(
                "tracking",
                None,
                NormalizedEvent(
                    event_type=EventType.OPENED,
                    provider_event="opened",
                    raw={"test": True},
                    occurred_at=at,
                    subtask_id=str(refs[n % len(refs)]),
                    provider_event_id=f"open:{n}:{at.isoformat()}",
                    user_agent=BROWSER,
                ),
                now=clock.utc_now(),
            )
            for n, at in enumerate(opens)
        ]
        await ingest.store(session, rows)
    await event_apply.drain(sessionmaker, simulated_matches_any=False)
    return task_id


def _cell(page: str, title: str) -> tuple[str, str]:
    """(shade class, text) of the heat map cell with this title."""
    found = re.search(rf'<td class="(heat-\d)" title="{re.escape(title)}">(.*?)</td>', page)
    assert found is not None, f"no cell titled {title!r}"
    return found.group(1), found.group(2)


async def test_the_heat_map_shades_each_hour_by_its_opens_with_counts_titles_and_a_legend(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=100)
    task_id = await campaign_with_opens(sessionmaker, alice)
    await console_log_in(client, alice, csrf_from="/account")

    page = (await client.get(f"/tasks/{task_id}")).text
    assert "Opens by weekday and hour (America/New_York)" in page, "the campaign's time zone is named"
    heat = page[page.index('<table class="heat"') : page.index("</table>", page.index('<table class="heat"'))]
    assert heat.count("<tr>") == 8 and heat.count("<td ") == 7 * 24, "a header row, then 7 weekdays of 24 hours"
    assert re.findall(r'<abbr title="(\w+)">', heat) == [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    assert _cell(heat, "Monday 09:00–10:00 — opens: 3") == ("heat-4", "3"), "the busiest hour: the darkest shade"
    assert _cell(heat, "Sunday 01:00–02:00 — opens: 1") == ("heat-2", "1"), "a third of it: ceil(4 · 1 / 3) = 2"
    empty = _cell(heat, "Monday 10:00–11:00 — opens: 0")
    assert empty == ("heat-0", '<span class="visually-hidden">0</span>'), "screen readers hear the 0"
    assert heat.count('class="heat-0"') == 7 * 24 - 2
    assert "Most opens: Monday 09:00–10:00 (3)" in page
    legend = re.search(r'<div class="heat-legend">(.*?)</div>', page, re.S)
    assert legend is not None
    swatch = r'<span class="heat-swatch (heat-\d)" aria-hidden="true"></span>([^<]*)</li>'
    swatches = re.findall(swatch, legend.group(1))
    assert swatches == [("heat-0", "0"), ("heat-2", "1"), ("heat-3", "2"), ("heat-4", "3")], "low → high"
    assert 'tabindex="0" role="region" aria-labelledby="heat-title"' in page, "its own focusable scrolling region"
    assert " style=" not in page, "the content security policy forbids inline styles"

    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(User).where(User.id == alice.id).values(locale="zh_Hans"))
    chinese = (await client.get(f"/tasks/{task_id}")).text
    assert _cell(chinese, "星期一 09:00–10:00 — 打开：3") == ("heat-4", "3")
    assert '<abbr title="星期日">周日</abbr>' in chinese and "打开最多：星期一 09:00–10:00（3）" in chinese


async def test_a_campaign_without_opens_says_so_instead_of_an_empty_grid(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice", credit=100)
    task_id = await campaign_with_opens(sessionmaker, alice, opens=())
    await console_log_in(client, alice, csrf_from="/account")
    page = (await client.get(f"/tasks/{task_id}")).text
    assert "No opens yet." in page and '<table class="heat"' not in page and "heat-legend" not in page
