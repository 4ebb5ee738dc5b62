"""Task reports (docs/statistics.md#reports) and the per-recipient list, detail and CSV export, on both databases.

One small task is sent for real (worker + fake provider) and then driven to known states: its send history is
rewritten to known times and to a failover from service A to service B, and provider and tracking events are
stored and applied through the real events pipeline at known times. Every figure is checked against the
hand-made table below, not against another query.

    recipient          template  service  send        delivery      human opens/clicks  machine  other
    a0@alpha.test      A         A        sent        delivered     2 / 2 (sale ×2)
    a1@alpha.test      A         A        sent        delivered     1 / 1 (sale)                 unsubscribed
    a2@alpha.test      B         A        sent        complained                        1 / 1
    a3@alpha.test      B         A        sent        hard_bounced  (two bounce events)
    =cmd0@gamma.test   A         A        sent        delivered
    b0@beta.test       A         A→B      sent        delivered     1 / 1 (new)                  transient on A first
    b1@beta.test       B         B        sent        delivered                                  replied
    b2@beta.test       B         B        sent        soft_bounced
    x0@bad.invalid     A         A        failed      rejected      (refused at send)
    u0@beta.test       B         –        suppressed  none                                       unsubscribed before

The task's time zone is America/New_York; clocks there went forward on Sunday 2025-03-09 at 07:00 UTC.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.events import apply as event_apply
from edm.events import ingest
from edm.models.contacts import Contact
from edm.models.email_services import EmailService
from edm.models.events import Event
from edm.models.tasks import SendAttempt, SubTask, TaskTemplate
from edm.models.users import Role
from edm.security.tokens import sign_token
from edm.tasks import reports
from edm.tracking.links import link_id
from edm.users.service import create_token
from edm.vocabulary.events import EventType, NormalizedEvent
from tests import factories
from tests.helpers import Account, api_client, make_account
from tests.helpers import run_cli as edm
from tests.integration.dispatch.conftest import DispatchKit

UTC = dt.UTC
T_A = dt.datetime(2025, 3, 8, 14, 10, tzinfo=UTC)  # Saturday 09:10 EST: service A's sends
T_B = dt.datetime(2025, 3, 8, 15, 20, tzinfo=UTC)  # Saturday 10:20 EST: service B's sends
SUN = dt.datetime(2025, 3, 9, tzinfo=UTC)
MON = dt.datetime(2025, 3, 10, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0"
BOT = "python-requests/2.31"
SALE, NEW = "https://shop.example/sale", "https://shop.example/new"
HTML = (
    f'<html><body><p>Hi {{{{ contact.first_name }}}}</p><a href="{SALE}">Sale</a> <a href="{NEW}">New</a>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
)
LABEL_A = 'Main, "EU"\nrelay'  # a label a spreadsheet must get back intact: comma, quotes, newline
TEMPLATE_B = 'Spring, "B"'
TEMPLATE_OF = {"a0": 0, "a1": 0, "b0": 0, "x0": 0, "=cmd0": 0, "a2": 1, "a3": 1, "b1": 1, "b2": 1, "u0": 1}
ON_A = ("a0", "a1", "a2", "a3", "=cmd0")
ON_B = ("b0", "b1", "b2")


@dataclass
class Kit:
    dkit: DispatchKit
    client: httpx.AsyncClient

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.dkit.sessionmaker


@dataclass
class Campaign:
    task_id: int
    alice: Account
    bob: Account
    admin: Account
    reader: Account  # alice with a read-scope token
    service_a: int
    service_b: int
    subtasks: dict[str, SubTask]  # by local part

    def path(self, rest: str = "") -> str:
        return f"/api/v1/tasks/{self.task_id}{rest}"


@pytest.fixture
async def kit(db_url: str, sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine) -> AsyncIterator[Kit]:
    async with api_client(db_url, engine, time_scale=0.05) as client:
        yield Kit(DispatchKit(db_url, sessionmaker), client)


# ---- building the campaign ---------------------------------------------------------------------------------


async def _accounts(kit: Kit) -> tuple[Account, Account, Account, Account]:
    alice = await make_account(kit.sessionmaker, "alice", credit=1000)
    bob = await make_account(kit.sessionmaker, "bob", credit=1000)
    admin = await make_account(kit.sessionmaker, "root", role=Role.ADMIN)
    async with unit_of_work(kit.sessionmaker) as session:
        token, _ = await create_token(session, user_id=alice.id, name="reader", scope="read")
    return alice, bob, admin, Account(alice.id, alice.username, token)


async def _task(kit: Kit, user_id: int) -> tuple[int, int, int]:
    """The task, its contacts and two services (only A mapped: B's share is written as a failover later)."""
    async with unit_of_work(kit.sessionmaker) as session:
        sender = await factories.sender(session, user_id)
        templates = [await factories.template(session, user_id, name, html=HTML) for name in ("Spring A", TEMPLATE_B)]
        for prefix, count, domain in (
            ("a", 4, "alpha.test"),
            ("b", 3, "beta.test"),
            ("=cmd", 1, "gamma.test"),
            ("x", 1, "bad.invalid"),
        ):
            await factories.contacts(session, user_id, count, prefix=prefix, domain=domain)
        [unsubscribed] = await factories.contacts(session, user_id, 1, prefix="u", domain="beta.test")
        await session.execute(
            update(Contact).where(Contact.id == unsubscribed).values(unsubscribed_at=T_A - dt.timedelta(days=30))
        )
        service_a = await factories.service(session, kit.dkit.settings, "esp-a", map_to=[user_id])
        service_b = await factories.service(session, kit.dkit.settings, "esp-b")
        await session.execute(update(EmailService).where(EmailService.id == service_a).values(label=LABEL_A))
        await session.execute(update(EmailService).where(EmailService.id == service_b).values(label="Backup"))
        task_id = await factories.task(
            session,
            user_id,
            sender_id=sender,
            template_ids=templates,
            rule={"type": "all_contacts"},
            timezone="America/New_York",
        )
    return task_id, service_a, service_b


async def _subtasks(kit: Kit, task_id: int) -> dict[str, SubTask]:
    return {s.recipient_email.split("@")[0]: s for s in await kit.dkit.subtasks(task_id)}


async def _assign_templates(kit: Kit, task_id: int) -> None:
    """Generation picks templates by a keyed hash; the table above fixes them instead."""
    subtasks = await _subtasks(kit, task_id)
    async with unit_of_work(kit.sessionmaker) as session:
        ids = list(
            await session.scalars(
                select(TaskTemplate.id).where(TaskTemplate.task_id == task_id).order_by(TaskTemplate.position)
            )
        )
        for name, sub in subtasks.items():
            await session.execute(
                update(SubTask).where(SubTask.id == sub.id).values(task_template_id=ids[TEMPLATE_OF[name]])
            )


async def _rewrite_history(kit: Kit, c: Campaign) -> None:
    """Known send times and latencies, and b* moved to service B after a transient failure of b0 on A."""
    async with unit_of_work(kit.sessionmaker) as session:
        for name, sub in c.subtasks.items():
            row = await session.get(SubTask, sub.id)
            assert row is not None
            at, service, duration = (T_B, c.service_b, 50) if name in ON_B else (T_A, c.service_a, 100)
            if row.send_state == "sent":
                row.sent_at, row.service_id = at, service
            if name == "x0":
                row.failed_at, duration = T_A, 40
            await session.execute(
                update(SendAttempt)
                .where(SendAttempt.subtask_id == row.id)
                .values(
                    service_id=service,
                    started_at=at - dt.timedelta(seconds=1),
                    finished_at=at,
                    duration_ms=duration,
                    attempt_no=2 if name == "b0" else 1,
                )
            )
        b0 = await session.get(SubTask, c.subtasks["b0"].id)
        assert b0 is not None
        b0.attempts, b0.retryable_failures = 2, 1
        session.add(
            SendAttempt(
                subtask_id=b0.id,
                attempt_no=1,
                service_id=c.service_a,
                outcome="transient",
                started_at=T_A - dt.timedelta(minutes=1),
                finished_at=T_A - dt.timedelta(seconds=59),
                duration_ms=220,
                status=503,
                message="simulated service unavailable",
            )
        )


def _event(
    c: Campaign,
    kind: EventType,
    who: str,
    at: dt.datetime,
    *,
    source: str = "fake",
    agent: str = BROWSER,
    machine: bool | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    sub = c.subtasks[who]
    details: dict[str, Any] = {} if machine is None else {"machine": machine}
    if url is not None:
        details["link_id"] = link_id(c.task_id, url)
    event = NormalizedEvent(
        event_type=kind,
        provider_event=str(kind),
        raw={"test": True},
        occurred_at=at,
        subtask_id=str(sub.public_id),
        provider_event_id=f"{kind}:{who}:{at.isoformat()}",
        user_agent=agent if source == "tracking" else None,
        url=url,
        details=details,
    )
    service = None if source == "tracking" else (c.service_b if who in ON_B else c.service_a)
    return ingest.event_row(source, service, event, now=clock.utc_now())


def _events(c: Campaign) -> list[dict[str, Any]]:
    e, track = _event, "tracking"
    return [
        *(e(c, EventType.DELIVERED, who, T_A + dt.timedelta(minutes=1)) for who in ("a0", "a1", "a2", "=cmd0")),
        *(e(c, EventType.DELIVERED, who, T_B + dt.timedelta(minutes=1)) for who in ("b0", "b1")),
        e(c, EventType.HARD_BOUNCED, "a3", T_A + dt.timedelta(minutes=2)),
        e(c, EventType.HARD_BOUNCED, "a3", T_A + dt.timedelta(hours=2)),  # a repeat: the first one counts
        e(c, EventType.SOFT_BOUNCED, "b2", T_B + dt.timedelta(minutes=5)),
        e(c, EventType.OPENED, "a0", SUN.replace(hour=6, minute=30), source=track),  # 01:30 EST
        e(c, EventType.OPENED, "a0", SUN.replace(hour=7, minute=30), source=track),  # 03:30 EDT
        e(c, EventType.OPENED, "a1", SUN.replace(hour=7, minute=40), source=track),  # 03:40 EDT
        e(c, EventType.OPENED, "b0", MON.replace(hour=13, minute=5), source=track),  # Monday 09:05 EDT
        e(c, EventType.OPENED, "a2", SUN.replace(hour=12), source=track, agent=BOT, machine=True),
        e(c, EventType.CLICKED, "a0", SUN.replace(hour=7, minute=35), source=track, url=SALE),
        e(c, EventType.CLICKED, "a0", SUN.replace(hour=8), source=track, url=SALE),  # 04:00 EDT
        e(c, EventType.CLICKED, "a1", SUN.replace(hour=7, minute=45), source=track, url=SALE),
        e(c, EventType.CLICKED, "b0", MON.replace(hour=13, minute=6), source=track, url=NEW),
        e(c, EventType.CLICKED, "a2", SUN.replace(hour=12, second=5), source=track, agent=BOT, machine=True, url=SALE),
        e(c, EventType.UNSUBSCRIBED, "a1", SUN.replace(hour=8, minute=10), source=track),  # 04:10 EDT
        e(c, EventType.COMPLAINED, "a2", SUN.replace(hour=9)),  # 05:00 EDT
        e(c, EventType.REPLIED, "b1", MON.replace(hour=14)),  # Monday 10:00 EDT
    ]


async def apply_events(kit: Kit) -> None:
    await event_apply.drain(kit.sessionmaker, simulated_matches_any=True, batch=50)
    async with kit.sessionmaker() as session:
        statuses = list(await session.scalars(select(Event.match_status)))
    assert statuses and set(statuses) == {"matched"}, statuses


async def generated(kit: Kit) -> Campaign:
    """The task generated (its SubTasks pending, templates assigned), nothing sent yet."""
    alice, bob, admin, reader = await _accounts(kit)
    task_id, service_a, service_b = await _task(kit, alice.id)
    await kit.dkit.generate(task_id)
    await _assign_templates(kit, task_id)
    return Campaign(task_id, alice, bob, admin, reader, service_a, service_b, await _subtasks(kit, task_id))


async def campaign(kit: Kit) -> Campaign:
    """The task sent, its history rewritten and its events applied: the table of the module docstring."""
    c = await generated(kit)

    async def completed() -> bool:
        return await kit.dkit.status(c.task_id) == "completed"

    async with kit.dkit.worker():
        await kit.dkit.wait_for(completed, timeout=30, what="task completed")
    c.subtasks = await _subtasks(kit, c.task_id)
    await _rewrite_history(kit, c)
    async with unit_of_work(kit.sessionmaker) as session:
        await ingest.store(session, _events(c))
    await apply_events(kit)
    c.subtasks = await _subtasks(kit, c.task_id)
    return c


async def get(kit: Kit, c: Campaign, rest: str, who: Account | None = None, **params: Any) -> Any:
    response = await kit.client.get(c.path(rest), headers=(who or c.alice).headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def names(items: list[dict[str, Any]]) -> list[str]:
    return sorted(i["recipient_email"].split("@")[0] for i in items)


# ---- breakdowns --------------------------------------------------------------------------------------------


async def test_services_report_counts_attempts_results_and_latency_per_service(kit: Kit) -> None:
    c = await campaign(kit)
    common_a = {
        "attempts": {"accepted": 5, "permanent": 1, "transient": 1},
        "attempts_total": 7,
        "sent": 5,
        "failed": 1,
        "uncertain": 0,
        "bounced": 2,
        "delivered": 4,
        "avg_latency_ms": round((5 * 100 + 40 + 220) / 7, 1),
    }
    common_b = {
        "attempts": {"accepted": 3},
        "attempts_total": 3,
        "sent": 3,
        "failed": 0,
        "uncertain": 0,
        "bounced": 1,
        "delivered": 2,
        "avg_latency_ms": 50.0,
    }
    user_view = await get(kit, c, "/report/services")
    assert user_view["items"] == [{"label": LABEL_A, **common_a}, {"label": "Backup", **common_b}]
    admin_view = await get(kit, c, "/report/services", c.admin)
    assert admin_view["items"] == [
        {"label": LABEL_A, **common_a, "service_id": c.service_a, "name": "esp-a", "provider": "fake"},
        {"label": "Backup", **common_b, "service_id": c.service_b, "name": "esp-b", "provider": "fake"},
    ]


async def test_template_report_gives_every_rate_per_template_and_sums_to_the_task(kit: Kit) -> None:
    c = await campaign(kit)
    a, b = (await get(kit, c, "/report/templates"))["items"]
    assert (a["name"], b["name"]) == ("Spring A", TEMPLATE_B)
    # x0 was refused at send time (failed, delivery state `rejected`): never sent, so it is neither a bounce of
    # sent mail nor taken out of `reached` (= sent − bounces of sent mail, docs/statistics.md#the-numbers).
    assert {
        k: a[k]
        for k in (
            "recipients",
            "sent",
            "failed",
            "delivered",
            "rejected",
            "reached",
            "opened_human",
            "clicked_human",
            "opens",
            "clicks",
            "unsubscribed",
            "replied",
            "complained",
        )
    } == {
        "recipients": 5,
        "sent": 4,
        "failed": 1,
        "delivered": 4,
        "rejected": 1,
        "reached": 4,
        "opened_human": 3,
        "clicked_human": 3,
        "opens": 4,
        "clicks": 4,
        "unsubscribed": 1,
        "replied": 0,
        "complained": 0,
    }
    assert a["rates"] == {
        "delivery": 1.0,
        "bounce": 0.0,
        "failure": 0.2,
        "open_human": 0.75,
        "open_total": 0.75,
        "click": 0.75,
        "click_to_open": 1.0,
        "complaint": 0.0,
        "unsubscribe": 0.25,
        "reply": 0.0,
    }
    assert {
        k: b[k]
        for k in (
            "recipients",
            "excluded",
            "sent",
            "delivered",
            "hard_bounced",
            "soft_bounced",
            "reached",
            "opened_human",
            "opened_total",
            "machine_opens",
            "machine_clicks",
        )
    } == {
        "recipients": 5,
        "excluded": 1,
        "sent": 4,
        "delivered": 2,
        "hard_bounced": 1,
        "soft_bounced": 1,
        "reached": 2,
        "opened_human": 0,
        "opened_total": 1,
        "machine_opens": 1,
        "machine_clicks": 1,
    }
    assert b["rates"] == {
        "delivery": 0.5,
        "bounce": 0.5,
        "failure": 0.0,
        "open_human": 0.0,
        "open_total": 0.5,
        "click": 0.0,
        "click_to_open": None,
        "complaint": 0.5,
        "unsubscribe": 0.0,
        "reply": 0.5,
    }
    stats = await get(kit, c, "/stats")
    for key in (
        "recipients",
        "excluded",
        "sent",
        "failed",
        "delivered",
        "reached",
        "hard_bounced",
        "soft_bounced",
        "rejected",
        "complained",
        "opened_human",
        "opened_total",
        "clicked_human",
        "clicked_total",
        "opens",
        "clicks",
        "machine_opens",
        "machine_clicks",
        "unsubscribed",
        "replied",
    ):
        assert a[key] + b[key] == stats[key], key


async def test_link_report_separates_human_and_machine_clicks(kit: Kit) -> None:
    c = await campaign(kit)
    # One more click through the real endpoint (today, a browser): recorded with its link id.
    token = sign_token(
        "click", c.subtasks["b1"].public_id, key=kit.dkit.settings.signing_key, link_id=link_id(c.task_id, NEW)
    )
    response = await kit.client.get(f"/t/c/{token}", headers={"User-Agent": BROWSER})
    assert response.status_code == 302 and response.headers["location"] == NEW
    await apply_events(kit)
    report = await get(kit, c, "/report/links")
    assert report["next_cursor"] is None
    assert sorted(report["items"], key=lambda r: r["url"]) == [
        {"id": link_id(c.task_id, NEW), "url": NEW, "clicks_human": 2, "clicks_machine": 0, "unique_human_clickers": 2},
        {
            "id": link_id(c.task_id, SALE),
            "url": SALE,
            "clicks_human": 3,
            "clicks_machine": 1,
            "unique_human_clickers": 2,
        },
    ]
    first = await get(kit, c, "/report/links", limit=1)
    second = await get(kit, c, "/report/links", limit=1, cursor=first["next_cursor"])
    assert [first["items"][0]["id"], second["items"][0]["id"]] == sorted(r["id"] for r in report["items"])
    assert second["next_cursor"] is None


async def test_domain_report_ranks_by_sent_and_folds_the_rest_into_other(kit: Kit) -> None:
    c = await campaign(kit)
    alpha = {"domain": "alpha.test", "recipients": 4, "sent": 4, "bounced": 1, "opened": 2}
    beta = {"domain": "beta.test", "recipients": 4, "sent": 3, "bounced": 1, "opened": 1}
    gamma = {"domain": "gamma.test", "recipients": 1, "sent": 1, "bounced": 0, "opened": 0}
    invalid = {"domain": "bad.invalid", "recipients": 1, "sent": 0, "bounced": 1, "opened": 0}
    assert await get(kit, c, "/report/domains") == {
        "task_id": c.task_id,
        "items": [alpha, beta, gamma, invalid],
        "other": None,
    }
    async with kit.sessionmaker() as session:
        top_two = await reports.by_domain(session, c.task_id, top=2)
    assert top_two == {
        "items": [alpha, beta],
        "other": {"domains": 2, "recipients": 2, "sent": 1, "bounced": 1, "opened": 0},
    }


def _row(start: str, **counts: int) -> dict[str, Any]:
    return {"start": start, **dict.fromkeys(reports.TIMELINE_METRICS, 0), **counts}


async def test_timeline_and_heatmap_are_in_the_task_time_zone_across_the_dst_change(kit: Kit) -> None:
    c = await campaign(kit)
    hourly = await get(kit, c, "/report/timeline", bucket="hour")
    assert (hourly["timezone"], hourly["bucket"]) == ("America/New_York", "hour")
    assert hourly["items"] == [
        _row("2025-03-08T09:00:00-05:00", sent=5, delivered=4, bounced=2),  # a3's first event, x0 at send
        _row("2025-03-08T10:00:00-05:00", sent=3, delivered=2, bounced=1),
        _row("2025-03-09T01:00:00-05:00", opens=1),
        _row("2025-03-09T03:00:00-04:00", opens=2, clicks=2),  # 02:00 never happened that night
        _row("2025-03-09T04:00:00-04:00", clicks=1, unsubscribes=1),
        _row("2025-03-09T05:00:00-04:00", complaints=1),
        _row("2025-03-10T09:00:00-04:00", opens=1, clicks=1),
        _row("2025-03-10T10:00:00-04:00", replies=1),
    ]
    daily = await get(kit, c, "/report/timeline", bucket="day")
    assert daily["items"] == [
        _row("2025-03-08", sent=8, delivered=6, bounced=3),
        _row("2025-03-09", opens=3, clicks=3, unsubscribes=1, complaints=1),
        _row("2025-03-10", opens=1, clicks=1, replies=1),
    ]
    stats = await get(kit, c, "/stats")
    assert (
        daily["totals"]
        == hourly["totals"]
        == {
            "sent": stats["sent"],
            "delivered": stats["delivered"],
            "bounced": stats["hard_bounced"] + stats["soft_bounced"] + stats["rejected"],
            "opens": stats["opens"],
            "clicks": stats["clicks"],
            "unsubscribes": stats["unsubscribed"],
            "complaints": stats["complained"],
            "replies": stats["replied"],
        }
    )
    assert await get(kit, c, "/timeline", bucket="day") == daily  # short alias (docs/statistics.md)
    heat = await get(kit, c, "/report/heatmap")
    assert heat["timezone"] == "America/New_York" and heat["weekdays"][0] == "monday"
    found = {(day, hour): n for day, row in enumerate(heat["cells"]) for hour, n in enumerate(row) if n}
    assert found == {(6, 1): 1, (6, 3): 2, (0, 9): 1}  # Sunday 01h, Sunday 03h (EDT), Monday 09h; no machine
    assert heat["total"] == 4


# ---- per recipient ---------------------------------------------------------------------------------------


async def test_subtask_list_filters(kit: Kit) -> None:
    c = await campaign(kit)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, sorted(TEMPLATE_OF)),
        ({"send_state": "failed"}, ["x0"]),
        ({"display_status": "rejected"}, ["x0"]),
        ({"display_status": "failed"}, []),  # the delivery state `rejected` comes first (docs/states.md)
        ({"send_state": "suppressed"}, ["u0"]),
        ({"delivery_state": "soft_bounced"}, ["b2"]),
        ({"display_status": "clicked"}, ["a0", "b0"]),
        ({"display_status": "replied"}, ["b1"]),
        ({"display_status": "complained"}, ["a2"]),
        ({"display_status": "unsubscribed"}, ["a1"]),
        ({"display_status": "delivered"}, ["=cmd0"]),
        ({"display_status": "hard_bounced"}, ["a3"]),
        ({"engagement": "opened"}, ["a0", "a1", "b0"]),
        ({"engagement": "clicked"}, ["a0", "a1", "b0"]),
        ({"engagement": "unsubscribed"}, ["a1"]),
        ({"engagement": "none"}, ["=cmd0", "a2", "a3", "b2", "u0", "x0"]),
        ({"email": "ALPHA"}, ["a0", "a1", "a2", "a3"]),
        ({"email": "=cmd"}, ["=cmd0"]),
        ({"email": "%"}, []),  # a LIKE wildcard is searched for literally
        ({"service_id": c.service_b}, ["b0", "b1", "b2"]),
        ({"service_id": c.service_a, "display_status": "delivered"}, ["=cmd0"]),
    ]
    for params, expected in cases:
        page = await get(kit, c, "/subtasks", limit=200, include_total="true", **params)
        assert (names(page["items"]), page["total"]) == (expected, len(expected)), params
    statuses = {
        i["recipient_email"].split("@")[0]: (i["display_status"], i["service_label"])
        for i in (await get(kit, c, "/subtasks", limit=200))["items"]
    }
    assert statuses == {
        "a0": ("clicked", LABEL_A),
        "a1": ("unsubscribed", LABEL_A),
        "a2": ("complained", LABEL_A),
        "a3": ("hard_bounced", LABEL_A),
        "=cmd0": ("delivered", LABEL_A),
        "b0": ("clicked", "Backup"),
        "b1": ("replied", "Backup"),
        "b2": ("soft_bounced", "Backup"),
        "x0": ("rejected", LABEL_A),
        "u0": ("suppressed", None),
    }
    seen, cursor = [], None
    while True:
        page = await get(kit, c, "/subtasks", limit=4, engagement="none", **({"cursor": cursor} if cursor else {}))
        seen.extend(page["items"])
        if not (cursor := page["next_cursor"]):
            break
    assert names(seen) == ["=cmd0", "a2", "a3", "b2", "u0", "x0"] and len({i["id"] for i in seen}) == 6


async def test_subtask_detail_tells_who_got_it_and_what_happened_in_time_order(kit: Kit) -> None:
    c = await campaign(kit)
    detail = await get(kit, c, f"/subtasks/{c.subtasks['b0'].id}")
    assert (detail["recipient_email"], detail["display_status"], detail["service_label"]) == (
        "b0@beta.test",
        "clicked",
        "Backup",
    )
    assert [(a["attempt_no"], a["outcome"], a["service_id"]) for a in detail["attempts"]] == [
        (1, "transient", c.service_a),
        (2, "accepted", c.service_b),
    ]
    assert [e["event_type"] for e in detail["events"]] == ["delivered", "opened", "clicked"]
    assert detail["events"][2]["details"]["link_id"] == link_id(c.task_id, NEW)
    assert [(h["kind"], h.get("outcome") or h.get("event_type")) for h in detail["history"]] == [
        ("attempt", "transient"),
        ("attempt", "accepted"),
        ("event", "delivered"),
        ("event", "opened"),
        ("event", "clicked"),
    ]
    times = [dt.datetime.fromisoformat(h["at"]) for h in detail["history"]]
    assert times == sorted(times)
    other_task = await kit.client.get(
        f"/api/v1/tasks/{c.task_id + 1}/subtasks/{c.subtasks['b0'].id}", headers=c.alice.headers
    )
    assert other_task.status_code == 404


# ---- CSV export ------------------------------------------------------------------------------------------


def parse(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body, newline="")))


async def test_csv_export_parses_back_quotes_and_guards_formulas(kit: Kit) -> None:
    c = await campaign(kit)
    response = await kit.client.get(c.path("/subtasks.csv"), headers=c.alice.headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    body = response.text
    assert body.startswith(",".join(reports.CSV_COLUMNS) + "\r\n")
    assert '"Main, ""EU""\nrelay"' in body and '"Spring, ""B"""' in body  # RFC 4180: quoted, quotes doubled
    rows = {r["email"]: r for r in parse(body)}
    assert len(rows) == 10 and "=cmd0@gamma.test" not in rows
    guarded = rows["'=cmd0@gamma.test"]  # would run as a formula in a spreadsheet without the quote
    assert (guarded["service"], guarded["template"], guarded["display_status"]) == (LABEL_A, "Spring A", "delivered")
    a0 = rows["a0@alpha.test"]
    assert {
        k: a0[k]
        for k in (
            "send_state",
            "delivery_state",
            "display_status",
            "attempts",
            "opens",
            "clicks",
            "machine_opens",
            "machine_clicks",
            "sent_at",
        )
    } == {
        "send_state": "sent",
        "delivery_state": "delivered",
        "display_status": "clicked",
        "attempts": "1",
        "opens": "2",
        "clicks": "2",
        "machine_opens": "0",
        "machine_clicks": "0",
        "sent_at": T_A.isoformat(),
    }
    assert rows["a2@alpha.test"]["template"] == TEMPLATE_B
    assert (rows["a2@alpha.test"]["machine_opens"], rows["a2@alpha.test"]["machine_clicks"]) == ("1", "1")
    assert rows["x0@bad.invalid"]["last_error_class"] == "permanent"
    assert rows["b0@beta.test"]["attempts"] == "2" and rows["b0@beta.test"]["service"] == "Backup"
    assert rows["a1@alpha.test"]["unsubscribed_at"] == SUN.replace(hour=8, minute=10).isoformat()
    assert rows["u0@beta.test"]["service"] == "" and rows["u0@beta.test"]["sent_at"] == ""
    filtered = await kit.client.get(
        c.path("/subtasks.csv"), headers=c.alice.headers, params={"display_status": "clicked", "bom": "true"}
    )
    assert filtered.text.startswith("\ufeffemail,")
    assert sorted(r["email"] for r in parse(filtered.text.removeprefix("\ufeff"))) == ["a0@alpha.test", "b0@beta.test"]
    empty = await kit.client.get(c.path("/export"), headers=c.alice.headers, params={"email": "nobody"})
    assert empty.status_code == 200 and empty.text == ",".join(reports.CSV_COLUMNS) + "\r\n"


def test_csv_cells_guard_every_formula_start() -> None:
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert reports.csv_cell(f"{start}SUM(A1)") == f"'{start}SUM(A1)"
    assert reports.csv_cell("plain") == "plain" and reports.csv_cell(None) == "" and reports.csv_cell(3) == "3"
    text = reports.to_csv([["a,b", 'say "hi"', "two\nlines", "cr\rhere", "plain"]])
    assert text == '"a,b","say ""hi""","two\nlines","cr\rhere",plain\r\n'
    assert list(csv.reader(io.StringIO(text, newline=""))) == [["a,b", 'say "hi"', "two\nlines", "cr\rhere", "plain"]]


async def test_csv_export_reads_in_chunks_of_rows(kit: Kit) -> None:
    c = await generated(kit)
    filters = reports.SubtaskFilters()
    chunks = [rows async for rows in reports.export_rows(kit.sessionmaker, c.task_id, filters, chunk=3)]
    assert [len(rows) for rows in chunks] == [3, 3, 3, 1]
    whole = [rows async for rows in reports.export_rows(kit.sessionmaker, c.task_id, filters, chunk=1000)]
    assert [row for rows in chunks for row in rows] == whole[0]
    api = parse((await kit.client.get(c.path("/subtasks.csv"), headers=c.alice.headers)).text)
    assert [list(r.values()) for r in api] == whole[0]


# ---- access and bad input ---------------------------------------------------------------------------------

READS = [
    "/report/services",
    "/report/templates",
    "/report/links",
    "/report/domains",
    "/report/timeline",
    "/report/heatmap",
    "/subtasks",
    "/subtasks.csv",
    "/export",
    "/links",
    "/domains",
    "/timeline",
]


async def test_reports_are_owner_scoped_and_readable_with_a_read_token(kit: Kit) -> None:
    c = await generated(kit)
    for rest in [*READS, f"/subtasks/{c.subtasks['a0'].id}"]:
        foreign = await kit.client.get(c.path(rest), headers=c.bob.headers)
        assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found", rest
        assert (await kit.client.get(c.path(rest), headers=c.reader.headers)).status_code == 200, rest
        assert (await kit.client.get(c.path(rest))).status_code == 401, rest
    missing = await kit.client.get(f"/api/v1/tasks/{c.task_id + 99}/report/services", headers=c.alice.headers)
    assert missing.status_code == 404
    admin_view = await get(kit, c, "/report/templates", c.admin)  # admins may read any task, as for /stats
    assert [t["recipients"] for t in admin_view["items"]] == [5, 5]


BAD_INPUT = [
    ("/subtasks", {"send_state": "bogus"}, "send_state"),
    ("/subtasks", {"delivery_state": "lost"}, "delivery_state"),
    ("/subtasks", {"display_status": "read"}, "display_status"),
    ("/subtasks", {"engagement": "forwarded"}, "engagement"),
    ("/subtasks", {"service_id": "0"}, "service_id"),
    ("/subtasks", {"service_id": "x"}, "service_id"),
    ("/subtasks", {"limit": "500"}, "limit"),
    ("/subtasks", {"email": "x" * 321}, "email"),
    ("/subtasks.csv", {"engagement": "forwarded"}, "engagement"),
    ("/report/timeline", {"bucket": "week"}, "bucket"),
    ("/report/links", {"cursor": "not-a-cursor"}, "cursor"),
]


async def test_bad_filter_values_are_422(kit: Kit) -> None:
    alice = await make_account(kit.sessionmaker, "alice")
    async with unit_of_work(kit.sessionmaker) as session:
        sender = await factories.sender(session, alice.id)
        template = await factories.template(session, alice.id)
        task_id = await factories.task(
            session, alice.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}, schedule=False
        )
    for rest, params, field in BAD_INPUT:
        response = await kit.client.get(f"/api/v1/tasks/{task_id}{rest}", headers=alice.headers, params=params)
        assert response.status_code == 422, (rest, params, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and error["details"][0]["field"] == field, (rest, params)


async def test_reports_of_a_task_without_subtasks_are_empty_not_errors(kit: Kit) -> None:
    alice = await make_account(kit.sessionmaker, "alice")
    async with unit_of_work(kit.sessionmaker) as session:
        sender = await factories.sender(session, alice.id)
        template = await factories.template(session, alice.id)
        task_id = await factories.task(
            session, alice.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}, schedule=False
        )
    path = f"/api/v1/tasks/{task_id}"
    answers = {rest: (await kit.client.get(path + rest, headers=alice.headers)) for rest in READS}
    assert {rest: r.status_code for rest, r in answers.items()} == dict.fromkeys(READS, 200)
    assert answers["/report/services"].json()["items"] == []
    assert answers["/report/templates"].json()["items"][0]["recipients"] == 0
    assert answers["/report/domains"].json() == {"task_id": task_id, "items": [], "other": None}
    assert answers["/report/heatmap"].json()["total"] == 0
    assert answers["/subtasks.csv"].text == ",".join(reports.CSV_COLUMNS) + "\r\n"


# ---- CLI -------------------------------------------------------------------------------------------------


async def test_cli_report_and_export(kit: Kit, tmp_path: Path) -> None:
    c = await campaign(kit)
    tables = edm(kit.dkit.db_url, "task", "report", str(c.task_id))
    assert tables.returncode == 0, tables.stderr
    for title in ("Services", "Templates", "Links", "Recipient domains", "Timeline by day", "Human opens"):
        assert title in tables.stdout, title
    assert "alpha.test" in tables.stdout and "2025-03-09" in tables.stdout and SALE in tables.stdout
    as_json = edm(kit.dkit.db_url, "task", "report", str(c.task_id), "--section", "domains", "--json")
    assert as_json.returncode == 0 and '"domain": "alpha.test"' in as_json.stdout
    out = tmp_path / "recipients.csv"
    exported = edm(kit.dkit.db_url, "task", "export", str(c.task_id), "--out", str(out), "--engagement", "opened")
    assert exported.returncode == 0 and "wrote 3 recipients" in exported.stdout, exported.stderr
    assert sorted(r["email"] for r in parse(out.read_text(encoding="utf-8"))) == [
        "a0@alpha.test",
        "a1@alpha.test",
        "b0@beta.test",
    ]
    for args, message in (
        (["export", str(c.task_id), "--out", str(out), "--engagement", "x"], "engagement"),
        (["report", str(c.task_id + 99)], "not found"),
    ):
        bad = edm(kit.dkit.db_url, "task", *args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad
