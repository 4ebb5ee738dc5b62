"""Concurrent tracking hits (docs/tracking.md#capacity) share database round trips (`tracking.hits`): many pixel and
click requests in flight at once are each answered correctly — every click to its own SubTask's link, a foreign
link still a 404 — and every hit is stored exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from edm import clock
from edm.api.tracking import PIXEL
from edm.events import ingest
from edm.models.events import Event
from edm.security.tokens import sign_token
from edm.tracking import hits
from edm.tracking.links import link_id
from edm.vocabulary.events import EventType, NormalizedEvent
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
    by_id = {link_id(task_id, url): url for url in URLS}
    stored_clicks = [e for e in await ekit.events() if e.event_type == "clicked"]
    assert all(e.details["url"] == by_id[e.details["link_id"]] for e in stored_clicks), "each with its link's URL"
    counts = await ekit.apply()
    assert counts.matched == len(opens) + len(subtasks) * 4
    stats = await ekit.dkit.stats(task_id)
    # Two links clicked within 2 s by one SubTask: the burst rule makes the later clicks machine
    # (docs/tracking.md#people-and-machines).
    assert (stats["opens"], stats["clicks"] + stats["machine_clicks"]) == (len(opens), len(subtasks) * 4)
    assert stats["opened_human"] == stats["clicked_human"] == len(subtasks)


@pytest.mark.parametrize("synchronous", [False, True])
async def test_the_commit_mode_is_the_hit_statements_own(ekit: EventKit, synchronous: bool) -> None:
    """Without EDM_TRACKING_SYNCHRONOUS_COMMIT the hit statements turn `synchronous_commit` off for their own
    transaction (docs/tracking.md#capacity): set inside it, gone after it, so the held connection's next
    statements — and PgBouncer's next client — wait for their flush as before. The hits are stored either way."""
    task_id, subtasks = await ekit.send_task(1, html=HTML)
    st = subtasks[0]
    now = clock.utc_now()
    opened = NormalizedEvent(
        event_type=EventType.OPENED, provider_event="pixel", raw={}, occurred_at=now, subtask_id=str(st.public_id),
        provider_event_id=f"open:{uuid.uuid4().hex}",
    )  # fmt: skip
    clicked = dataclasses.replace(opened, event_type=EventType.CLICKED, provider_event_id=f"click:{uuid.uuid4().hex}")
    link = link_id(task_id, URLS[1])
    postgres = ekit.engine.dialect.name == "postgresql"
    async with ekit.engine.connect() as connection:
        if postgres:  # production's default: the test databases commit without waiting for the flush (conftest)
            await connection.execute(text("SET synchronous_commit = on"))
            await connection.commit()
        async with connection.begin():
            await hits._store_hits(
                connection, [ingest.event_row("tracking", None, opened, now=now)], synchronous_commit=synchronous
            )
            if postgres:
                assert await _commit_mode(connection) == ("on" if synchronous else "off")
        async with connection.begin():
            click = hits.Click(ingest.event_row("tracking", None, clicked, now=now), st.public_id, link)
            urls = await hits._store_clicks(connection, [click], synchronous_commit=synchronous)
            if postgres:
                assert await _commit_mode(connection) == ("on" if synchronous else "off")
        if postgres:
            assert await _commit_mode(connection) == "on"
    assert urls == [URLS[1]]
    stored = [(e.event_type, e.subtask_ref, e.details.get("url")) for e in await ekit.events()]
    assert stored == [("opened", str(st.public_id), None), ("clicked", str(st.public_id), URLS[1])]


async def _commit_mode(connection: AsyncConnection) -> str:
    return str(await connection.scalar(text("SELECT current_setting('synchronous_commit')")))
