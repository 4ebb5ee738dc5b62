"""The open pixel (docs/tracking.md) through the ASGI app: always a GIF, each hit an event, people
and machines counted apart, and the pixel in every tracked task mail."""

from __future__ import annotations

import datetime as dt
import uuid

from edm import clock
from edm.api.tracking import PIXEL, truncated_ip
from edm.dispatch.compose import with_open_pixel
from edm.models.contacts import Contact
from edm.security.tokens import sign_token
from tests.integration.events.conftest import EventKit

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari/537.36"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"


def pixel_path(ekit: EventKit, public_id: uuid.UUID, purpose: str = "open") -> str:
    return f"/t/o/{sign_token(purpose, public_id, key=ekit.dkit.settings.signing_key)}.gif"


async def test_every_answer_is_the_gif_and_only_valid_tokens_record(ekit: EventKit) -> None:
    _, subtasks = await ekit.send_task(1)
    st = subtasks[0]
    for path in (pixel_path(ekit, st.public_id, "unsubscribe"), "/t/o/garbage.gif", "/t/o/" + "A" * 400 + ".gif"):
        response = await ekit.client.get(path)
        assert response.status_code == 200 and response.content == PIXEL and len(PIXEL) == 43
        assert response.headers["content-type"] == "image/gif" and "no-store" in response.headers["cache-control"]
    assert await ekit.events() == []
    assert (await ekit.client.get(pixel_path(ekit, st.public_id), headers={"User-Agent": BROWSER})).content == PIXEL
    assert [(e.source, e.event_type) for e in await ekit.events()] == [("tracking", "opened")]


async def test_people_and_machines_are_counted_apart(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(2)
    person, scanned = subtasks
    await ekit.client.get(pixel_path(ekit, scanned.public_id), headers={"User-Agent": BROWSER})  # too soon
    clock.shift(dt.timedelta(minutes=5))
    for agent in (BROWSER, GMAIL_PROXY):
        await ekit.client.get(pixel_path(ekit, person.public_id), headers={"User-Agent": agent})
    await ekit.client.get(pixel_path(ekit, scanned.public_id), headers={"User-Agent": "Barracuda Sentinel (EE)"})
    await ekit.client.get(pixel_path(ekit, scanned.public_id), headers={"User-Agent": ""})
    counts = await ekit.apply()
    assert (counts.processed, counts.matched) == (5, 5), "each hit is its own event"
    rows = {s.id: s for s in await ekit.dkit.subtasks(task_id)}
    assert (rows[person.id].open_count, rows[person.id].machine_open_count) == (2, 0)
    assert (rows[scanned.id].open_count, rows[scanned.id].machine_open_count) == (0, 3)
    assert rows[person.id].first_opened_at is not None and rows[scanned.id].first_opened_at is None
    assert rows[person.id].delivery_state == rows[scanned.id].delivery_state == "delivered"
    async with ekit.sessionmaker() as session:
        contact = await session.get(Contact, person.contact_id)
        assert contact is not None and contact.last_opened_at is not None
    stats = await ekit.dkit.stats(task_id)  # checked against the recount
    assert (stats["opened_human"], stats["opened_total"], stats["opens"], stats["machine_opens"]) == (1, 2, 2, 3)


def test_the_pixel_goes_before_the_closing_body_tag_or_at_the_end() -> None:
    url = "https://t.example.com/t/o/tok.gif"
    assert with_open_pixel("<html><body><p>Hi</p></BODY></html>", url).endswith('1px"></BODY></html>')
    assert f'<img src="{url}"' in with_open_pixel("<p>no body tag</p>", url)
    assert with_open_pixel("<p>no body tag</p>", url).startswith("<p>no body tag</p><img")


def test_addresses_are_truncated_to_their_network() -> None:
    assert truncated_ip("203.0.113.77") == "203.0.113.0"
    assert truncated_ip("2001:db8:abcd:12:1:2:3:4") == "2001:db8:abcd::"
    assert truncated_ip("not-an-ip") is None and truncated_ip(None) is None
