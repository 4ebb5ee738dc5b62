"""The campaign page's heat map of opens in Chromium: every shade on the grid passes axe (contrast of the counts on
their cells, the scrolling region's name) in light mode at 1280 px and in dark mode at 390 px, where the grid scrolls
inside its own region and the page itself does not scroll sideways."""

from __future__ import annotations

import datetime as dt
import functools

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.users import User
from tests.browser.conftest import Console
from tests.helpers import Account
from tests.integration.test_console_task_heatmap import campaign_with_opens

MONDAY = dt.datetime(2025, 3, 10, 13, tzinfo=dt.UTC)  # 09:00 in New York
# 8 opens on Monday at 09h, 6 on Tuesday at 09h, 4 on Wednesday, 1 on Thursday: shades 4, 3, 2 and 1.
OPENS = tuple(
    MONDAY + dt.timedelta(days=day, minutes=minute) for day, count in enumerate((8, 6, 4, 1)) for minute in range(count)
)


async def _campaign(sessionmaker: async_sessionmaker[AsyncSession], *, who: Account) -> int:
    return await campaign_with_opens(sessionmaker, who, OPENS)


async def _speak(sessionmaker: async_sessionmaker[AsyncSession], *, who: Account, locale: str | None) -> None:
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(User).where(User.id == who.id).values(locale=locale))


def test_the_heat_map_shades_every_level_readably_in_both_schemes_and_scrolls_in_its_own_region(
    console: Console,
) -> None:
    lea = console.server.account("lea", credit=100)
    task_id = console.server.database(functools.partial(_campaign, who=lea))
    console.sign_in(lea)
    page = console.page
    for locale, name, title in (
        (None, "task-heatmap", "Monday 09:00–10:00 — opens: 8"),
        ("zh_Hans", "task-heatmap-zh", "星期一 09:00–10:00 — 打开：8"),
    ):
        console.server.database(functools.partial(_speak, who=lea, locale=locale))
        console.visit(f"/tasks/{task_id}", name)  # axe: light at 1280 px, dark at 390 px
        assert page.locator("table.heat tbody td").count() == 7 * 24
        assert [page.locator(f"table.heat td.heat-{level}").count() for level in range(5)] == [164, 1, 1, 1, 1]
        assert page.locator("table.heat td.heat-4").get_attribute("title") == title

    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    wrap = page.locator(".heat-wrap")
    assert wrap.evaluate("e => e.scrollWidth > e.clientWidth"), "the grid scrolls inside its region"
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), "the page does not"
    dark = page.locator("table.heat td.heat-4").evaluate("e => getComputedStyle(e).backgroundColor")
    page.emulate_media(color_scheme="light")
    light = page.locator("table.heat td.heat-4").evaluate("e => getComputedStyle(e).backgroundColor")
    assert dark != light, "the dark scheme has shades of its own"
