"""Human and machine engagement (docs/tracking.md#people-and-machines) through the ASGI app and the `events` job's code:
every rule triggers with its default, and with its admin setting changed it does not; the classification is written
into the event (`details.machine`, `details.machine_reason`); counts in the statistics match the recount."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import select

from edm import clock
from edm.app import create_app
from edm.db.session import unit_of_work
from edm.events import apply as event_apply
from edm.events.machine_hits import machine_reason
from edm.models.events import Event
from edm.security.tokens import sign_token
from edm.system import runtime_settings
from edm.system.runtime_settings import RuntimeSettings
from edm.tracking.links import link_id
from tests.integration.events.conftest import EventKit

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1.15"
LINKS = ("https://shop.example.com/a", "https://shop.example.com/b", "https://shop.example.com/c")
HTML = "<html><body>" + "".join(f'<a href="{url}">{url[-1]}</a> ' for url in LINKS) + "</body></html>"


def open_path(ekit: EventKit, public_id: uuid.UUID) -> str:
    return f"/t/o/{sign_token('open', public_id, key=ekit.dkit.settings.signing_key)}.gif"


def click_path(ekit: EventKit, task_id: int, public_id: uuid.UUID, url: str) -> str:
    token = sign_token("click", public_id, key=ekit.dkit.settings.signing_key, link_id=link_id(task_id, url))
    return f"/t/c/{token}"


async def put(ekit: EventKit, key: str, value: Any) -> None:
    """An admin setting, stored the way the settings API stores it."""
    async with unit_of_work(ekit.sessionmaker) as session:
        await runtime_settings.put(session, key, value)


async def hit(client: httpx.AsyncClient, path: str, agent: str = BROWSER) -> None:
    response = await client.get(path, headers={"User-Agent": agent})
    assert response.status_code in (200, 302), (path, response.status_code)


async def classified(ekit: EventKit) -> list[tuple[str, bool, str | None]]:
    """(event type, machine, reason) of every applied tracking hit, in order."""
    async with ekit.sessionmaker() as session:
        rows = await session.scalars(select(Event).where(Event.source == "tracking").order_by(Event.id))
        return [(e.event_type, e.details["machine"], e.details["machine_reason"]) for e in rows]


@contextlib.asynccontextmanager
async def client_at(ekit: EventKit, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come from `address` (the app over the kit's database)."""
    app = create_app(ekit.dkit.settings, engine=ekit.engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(address, 40123))
        async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
            yield client


async def test_hits_soon_after_the_send_are_machine_until_the_windows_are_shortened(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1, html=HTML)
    st = subtasks[0]
    # 5 s after the send on a stopped clock: inside both default windows (open 60 s, click 10 s) however slowly the
    # machine runs the rest, and outside the 3 s windows set below.
    clock.freeze(clock.utc_now() + dt.timedelta(seconds=5))
    await hit(ekit.client, open_path(ekit, st.public_id))
    await hit(ekit.client, click_path(ekit, task_id, st.public_id, LINKS[0]))
    await ekit.apply()
    await put(ekit, "tracking.machine_open_window", 3)
    await put(ekit, "tracking.machine_click_window", 3)
    await hit(ekit.client, open_path(ekit, st.public_id))
    await hit(ekit.client, click_path(ekit, task_id, st.public_id, LINKS[0]))
    await ekit.apply()
    assert await classified(ekit) == [
        ("opened", True, "too_soon_after_send"),
        ("clicked", True, "too_soon_after_send"),
        ("opened", False, None),
        ("clicked", False, None),
    ]
    row = (await ekit.dkit.subtasks(task_id))[0]
    assert (row.open_count, row.machine_open_count, row.click_count, row.machine_click_count) == (1, 1, 1, 1)
    stats = await ekit.dkit.stats(task_id)  # equals the recount
    assert (stats["opens"], stats["machine_opens"], stats["clicks"], stats["machine_clicks"]) == (1, 1, 1, 1)


async def test_bot_agents_built_in_and_added_by_an_admin(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1)
    st = subtasks[0]
    clock.shift(dt.timedelta(minutes=5))
    custom = "Mozilla/5.0 (compatible; AcmeLinkGuard/2.1)"
    await hit(ekit.client, open_path(ekit, st.public_id), agent="curl/8.5.0")
    await hit(ekit.client, open_path(ekit, st.public_id), agent="")
    await hit(ekit.client, open_path(ekit, st.public_id), agent=custom)  # unknown to the built-in list
    await ekit.apply()
    await put(ekit, "tracking.bot_user_agents", "linkguard, other-scanner")  # a string, as the CLI may give it
    await hit(ekit.client, open_path(ekit, st.public_id), agent=custom)
    await ekit.apply()
    assert await classified(ekit) == [
        ("opened", True, "bot_user_agent"),
        ("opened", True, "empty_user_agent"),
        ("opened", False, None),
        ("opened", True, "bot_user_agent"),
    ]
    row = (await ekit.dkit.subtasks(task_id))[0]
    assert (row.open_count, row.machine_open_count) == (1, 3)
    stats = await ekit.dkit.stats(task_id)
    assert (stats["opened_human"], stats["opened_total"], stats["opens"], stats["machine_opens"]) == (1, 1, 1, 3)


async def test_hits_from_an_admin_listed_network_are_a_privacy_proxy(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(2)
    proxied, person = subtasks
    clock.shift(dt.timedelta(minutes=5))
    async with client_at(ekit, "66.102.8.77") as proxy_client, client_at(ekit, "198.51.100.9") as home:
        await hit(proxy_client, open_path(ekit, proxied.public_id))  # no list yet: a person
        await ekit.apply()
        await put(ekit, "tracking.proxy_cidrs", ["66.102.0.0/20", "2001:db8::/32"])
        await hit(proxy_client, open_path(ekit, proxied.public_id))
        await hit(home, open_path(ekit, person.public_id))
        await ekit.apply()
        # An entry narrower than the stored /24 matches the /24 it lies in: all that is kept of the hit.
        await put(ekit, "tracking.proxy_cidrs", ["198.51.100.9/32"])
        await hit(home, open_path(ekit, person.public_id))
        await hit(proxy_client, open_path(ekit, proxied.public_id))  # no longer listed
        await ekit.apply()
    assert await classified(ekit) == [
        ("opened", False, None),
        ("opened", True, "privacy_proxy"),
        ("opened", False, None),
        ("opened", True, "privacy_proxy"),
        ("opened", False, None),
    ]
    async with ekit.sessionmaker() as session:
        ips = list(
            await session.scalars(
                select(Event.details["ip"].as_string()).where(Event.source == "tracking").order_by(Event.id)
            )
        )
    assert ips == ["66.102.8.0", "66.102.8.0", "198.51.100.0", "198.51.100.0", "66.102.8.0"], "stored truncated"
    stats = await ekit.dkit.stats(task_id)
    assert (stats["opened_human"], stats["opens"], stats["machine_opens"]) == (2, 3, 2)


async def test_a_burst_of_different_links_is_machine_after_the_second_link(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(2, html=HTML)
    scanned, person = subtasks
    clock.shift(dt.timedelta(minutes=5))
    a, b, c = LINKS
    # A scanner following every link of the mail at once: a, a, b, a, c within a few milliseconds.
    for url in (a, a, b, a, c):
        await hit(ekit.client, click_path(ekit, task_id, scanned.public_id, url))
    # A person clicking one link, then another a while later.
    await hit(ekit.client, click_path(ekit, task_id, person.public_id, a))
    clock.shift(dt.timedelta(seconds=3))
    await hit(ekit.client, click_path(ekit, task_id, person.public_id, b))
    await ekit.apply()
    assert [m for _, m, _ in await classified(ekit)] == [False, False, True, True, True, False, False]
    assert {r for _, _, r in await classified(ekit)} == {None, "link_burst"}
    rows = {s.id: s for s in await ekit.dkit.subtasks(task_id)}
    assert (rows[scanned.id].click_count, rows[scanned.id].machine_click_count) == (2, 3)
    assert (rows[person.id].click_count, rows[person.id].machine_click_count) == (2, 0)

    await put(ekit, "tracking.click_burst_window", 0)  # the rule off
    await hit(ekit.client, click_path(ekit, task_id, person.public_id, c))
    await hit(ekit.client, click_path(ekit, task_id, person.public_id, a))
    await ekit.apply()
    assert [m for _, m, _ in (await classified(ekit))[-2:]] == [False, False]
    stats = await ekit.dkit.stats(task_id)
    assert (stats["clicked_human"], stats["clicks"], stats["machine_clicks"]) == (2, 6, 3)


async def test_the_burst_sees_clicks_another_worker_holds_and_clicks_applied_earlier(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(1, html=HTML)
    st = subtasks[0]
    clock.shift(dt.timedelta(minutes=5))
    a, b, c = LINKS
    await hit(ekit.client, click_path(ekit, task_id, st.public_id, b))
    await hit(ekit.client, click_path(ekit, task_id, st.public_id, c))
    async with ekit.sessionmaker() as session:
        pending = list(await session.scalars(select(Event.id).where(Event.processed_at.is_(None)).order_by(Event.id)))
    assert len(pending) == 2
    # The second click alone, as a second worker takes it while the first still holds the click before it.
    async with unit_of_work(ekit.sessionmaker) as session:
        await event_apply.apply_pending(session, now=clock.utc_now(), simulated_matches_any=True, only_ids=[pending[1]])
    await ekit.apply()  # the held click: nothing recorded before it, a person's
    await hit(ekit.client, click_path(ekit, task_id, st.public_id, a))
    await ekit.apply()  # alone in its batch: compared with the clicks applied before
    assert await classified(ekit) == [
        ("clicked", False, None),
        ("clicked", True, "link_burst"),
        ("clicked", True, "link_burst"),
    ]


async def test_a_human_click_without_a_recorded_open_counts_as_opened(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(3, html=HTML)
    clicked_only, machine_only, untouched = subtasks
    clock.shift(dt.timedelta(minutes=5))
    await hit(ekit.client, click_path(ekit, task_id, clicked_only.public_id, LINKS[1]))  # images blocked: no open
    await hit(ekit.client, open_path(ekit, machine_only.public_id), agent="python-requests/2.31")
    await ekit.apply()
    stats = await ekit.dkit.stats(task_id)  # checked against the recount
    assert (stats["opens"], stats["clicks"]) == (0, 1)
    assert (stats["opened_human"], stats["clicked_human"], stats["opened_total"]) == (1, 1, 2)
    assert stats["rates"]["open_human"] == round(1 / 3, 4) and stats["rates"]["click_to_open"] == 1.0
    assert untouched.id not in {s.id for s in await ekit.dkit.subtasks(task_id) if s.open_count or s.click_count}


class _Hit:
    """A stored hit as the events job reads it."""

    def __init__(self, event_id: int, kind: str, at: dt.datetime, **details: Any) -> None:
        self.id, self.event_type, self.occurred_at, self.details = event_id, kind, at, details


class _Sent:
    def __init__(self, sent_at: dt.datetime, recent_clicks: list[tuple[int, dt.datetime, str]] | None = None) -> None:
        self.sent_at, self.recent_clicks = sent_at, recent_clicks or []


def test_the_first_rule_that_holds_names_the_reason() -> None:
    sent = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    soon, later = sent + dt.timedelta(seconds=5), sent + dt.timedelta(hours=1)
    runtime = RuntimeSettings(tracking_bot_user_agents=("linkguard",), tracking_proxy_cidrs=("203.0.113.0/24",))
    reason = machine_reason
    assert reason(_Hit(1, "opened", soon, user_agent=" "), _Sent(sent), runtime) == "empty_user_agent"
    assert (
        reason(_Hit(1, "opened", soon, user_agent="LinkGuard", ip="203.0.113.0"), _Sent(sent), runtime)
        == "bot_user_agent"
    )
    assert (
        reason(_Hit(1, "opened", soon, user_agent=BROWSER, ip="203.0.113.0"), _Sent(sent), runtime) == "privacy_proxy"
    )
    assert (
        reason(_Hit(1, "opened", soon, user_agent=BROWSER, ip="192.0.2.0"), _Sent(sent), runtime)
        == "too_soon_after_send"
    )
    burst = _Sent(sent, [(1, later, "1"), (2, later, "2")])
    assert reason(_Hit(2, "clicked", later, user_agent=BROWSER, link_id=2), burst, runtime) == "link_burst"
    assert reason(_Hit(1, "clicked", later, user_agent=BROWSER, link_id=1), burst, runtime) is None, (
        "the first click of a burst stays a person's"
    )
    assert reason(_Hit(3, "opened", later, user_agent=BROWSER, ip="not-an-ip"), _Sent(sent), runtime) is None
