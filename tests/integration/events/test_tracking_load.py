"""Concurrent tracking hits (docs/tracking.md#capacity) share database round trips (`tracking.hits`): many pixel and
click requests in flight at once are each answered correctly — every click to its own SubTask's link, a foreign
link still a 404 — and every hit is stored exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from sqlalchemy import func, select

from edm import clock
from edm.api.tracking import PIXEL
from edm.models.events import Event
from edm.security.tokens import sign_token
from edm.tracking.links import link_id
from tests.integration.events.conftest import EventKit

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
HTML = '<html><body><a href="https://shop.example.com/one">1</a> <a href="https://shop.example.com/two">2</a></body></html>'
URLS = ("https://shop.example.com/one", "https://shop.example.com/two")


async def test_concurrent_hits_are_each_answered_and_stored_once(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(4, html=HTML)
    clock.shift(dt.timedelta(minutes=5))
    key = ekit.dkit.settings.signing_key
    opens = [f"/t/o/{sign_token('open', st.public_id, key=key)}.gif" for st in subtasks] * 6
    clicks: list[tuple[str, str | None]] = []  # (path, where it must redirect; None = 404)
    for n, st in enumerate(subtasks * 4):
        url = URLS[n % 2]
        clicks.append((f"/t/c/{sign_token('click', st.public_id, key=key, link_id=link_id(task_id, url))}", url))
    foreign = link_id(task_id + 1, URLS[0])  # a link id of another task: never a redirect
    clicks += [(f"/t/c/{sign_token('click', st.public_id, key=key, link_id=foreign)}", None) for st in subtasks]
    clicks.append((f"/t/c/{sign_token('click', uuid.uuid4(), key=key, link_id=link_id(task_id, URLS[0]))}", None))

    headers = {"User-Agent": BROWSER}
    answers = await asyncio.gather(
        *(ekit.client.get(path, headers=headers) for path in opens),
        *(ekit.client.get(path, headers=headers) for path, _ in clicks),
    )
    pixels, redirects = answers[: len(opens)], answers[len(opens) :]
    assert all(r.status_code == 200 and r.content == PIXEL for r in pixels)
    for response, (path, url) in zip(redirects, clicks, strict=True):
        if url is None:
            assert response.status_code == 404 and "location" not in response.headers, path
        else:
            assert response.status_code == 302 and response.headers["location"] == url, path

    head = await ekit.client.head(opens[0], headers=headers)
    assert head.status_code == 200, "HEAD of the pixel answers alike…"
    async with ekit.sessionmaker() as session:
        stored = dict((await session.execute(select(Event.event_type, func.count()).group_by(Event.event_type))).all())
    assert stored == {"opened": len(opens), "clicked": len(subtasks) * 4}, "…and records nothing"
    counts = await ekit.apply()
    assert counts.matched == len(opens) + len(subtasks) * 4
    stats = await ekit.dkit.stats(task_id)
    # Two links clicked within 2 s by one SubTask: the burst rule makes the later clicks machine
    # (docs/tracking.md#people-and-machines).
    assert (stats["opens"], stats["clicks"] + stats["machine_clicks"]) == (len(opens), len(subtasks) * 4)
    assert stats["opened_human"] == stats["clicked_human"] == len(subtasks)
