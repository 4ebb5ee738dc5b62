"""Every series of docs/operations.md#metrics, scraped from the web app and from a worker's own port during a real send
(a worker in this process, a real SMTP server), with the value the database holds.

The scenario: contacts arrive by a background import; a campaign goes to them through an SMTP service that
refuses one address; the first message is held in the server's DATA phase, and while it is in flight the state
series (pending, in flight, usage, quota, state, tasks, workers) are compared with the rows; then the campaign
completes, two opens (a person's, a scanner's) and a click come in through the tracking endpoints and a bounce
report through the DSN endpoint, and the flows (sends and their latency, events, tracking hits, webhook requests,
import rows, task timings, HTTP requests) are compared with the rows they wrote.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.models.contacts import Import
from edm.models.email_services import EmailService, ServiceDayUsage
from edm.models.events import Event
from edm.models.system import Worker
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.vocabulary.tasks import SendState
from tests import factories
from tests.helpers import api_client, make_account
from tests.integration.dispatch.conftest import DispatchKit
from tests.integration.events.test_reports import dsn
from tests.integration.metrics.metrics_scrape import Samples, grown, key, labels, of, scrape

TOKEN = "dsn-token-for-the-metrics-test"
REFUSED = "nobody@example.net"
HTML = '<p>Hi {{ contact.first_name }}, see <a href="https://shop.example.com/spring">spring</a>.</p>'
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
SCANNER = "python-requests/2.31"
# Every series of docs/operations.md#metrics (a histogram by its _count).
SERIES = {
    "edm_sends_total",
    "edm_send_latency_seconds_count",
    "edm_subtasks_pending",
    "edm_subtasks_in_flight",
    "edm_subtasks_uncertain",
    "edm_oldest_pending_age_seconds",
    "edm_service_used_today",
    "edm_service_daily_quota",
    "edm_service_state",
    "edm_service_info",
    "edm_webhook_requests_total",
    "edm_events_total",
    "edm_events_pending",
    "edm_tracking_hits_total",
    "edm_tasks",
    "edm_task_schedule_to_first_send_seconds_count",
    "edm_task_schedule_to_completion_seconds_count",
    "edm_worker_heartbeat_age_seconds",
    "edm_workers_alive",
    "edm_import_rows_total",
    "edm_http_requests_total",
    "edm_http_request_duration_seconds_count",
    "edm_sending_paused",
    "edm_metrics_database_up",
}


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        running.reject_addresses[REFUSED] = (550, "5.1.1 no such user")
        yield running
        running.data_held = False  # a test that failed while holding lets its client go


async def test_every_series_has_the_value_the_database_holds_during_and_after_a_send(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession], sink: SmtpSink
) -> None:
    dkit = DispatchKit(db_url, sessionmaker)
    owner = await make_account(sessionmaker, "ann", credit=100)
    # An open or a click right after the send is a person's here; the scanner is told by its user agent.
    await dkit.put_settings(tracking__machine_open_window=0, tracking__machine_click_window=0)
    async with api_client(db_url, engine) as app, dkit.worker(metrics_port=0) as worker:
        assert worker.metrics is not None
        worker_port = httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.metrics.port}")
        before = await scrape(app)

        # Contacts by a background import: 3 rows created, 1 skipped as an error.
        rows = f"email,first_name\nr0@example.net,R0\nr1@example.net,R1\n{REFUSED},No\nbad,X\n"
        answer = await app.post(
            "/api/v1/contacts/imports",
            files={"file": ("c.csv", rows.encode(), "text/csv")},
            headers=owner.headers,
        )
        assert answer.status_code == 202, answer.text
        await dkit.wait_for(lambda: _import_done(dkit), what="import finished")

        # A campaign through one SMTP service; its first message is held in DATA while we look.
        sink.data_held = True
        async with unit_of_work(sessionmaker) as session:
            sender = await factories.sender(session, owner.id)
            template = await factories.template(session, owner.id, html=HTML)
            service_id = await factories.service(
                session,
                dkit.settings,
                "relay",
                provider="smtp",
                map_to=[owner.id],
                options={"host": sink.host, "port": sink.port, "security": "none"},
                credentials={"webhook_secrets": [TOKEN]},
                max_concurrency=1,
                batch_size=1,
            )
            task_id = await factories.task(
                session, owner.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
            )
        await dkit.wait_for(lambda: _first_in_flight(dkit, sink), what="first message in flight")
        beats, scraped_from = await _beats(sessionmaker), clock.utc_now()
        during_app, during_worker = await scrape(app), await scrape(worker_port)
        scraped = Scraped(scraped_from, clock.utc_now(), beats)
        state = await _state(sessionmaker, service_id)
        again = await _state(sessionmaker, service_id)
        assert {**state, "workers": None} == {**again, "workers": None}, "nothing moved while we scraped"
        for during in (during_app, during_worker):
            _check_state(during, state, service_id, scraped)
        sink.data_held = False

        await dkit.wait_for(lambda: _completed(dkit, task_id), timeout=30, what="campaign completed")
        await _engage(app, sink)
        subtasks = {s.recipient_email: s for s in await dkit.subtasks(task_id)}
        report = dsn(subtasks["r1@example.net"], returned_subtask_header=True)
        answer = await app.post(
            f"/webhooks/smtp/{service_id}/dsn",
            content=report,
            headers={"Content-Type": "message/rfc822", "Authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 200, answer.text
        await dkit.wait_for(lambda: _events_applied(dkit, 4), what="events applied")

        beats, scraped_from = await _beats(sessionmaker), clock.utc_now()
        after_app, after_worker = await scrape(app), await scrape(worker_port)
        scraped = Scraped(scraped_from, clock.utc_now(), beats)
        await worker_port.aclose()
        state = await _state(sessionmaker, service_id)
        for after in (after_app, after_worker):
            assert SERIES <= {name for name, _ in after}, SERIES - {name for name, _ in after}
            _check_state(after, state, service_id, scraped)
            await _check_flows(after, before, sessionmaker, service_id, task_id)


# -- the state series ------------------------------------------------------------------------------------------


async def _state(sessionmaker: async_sessionmaker[AsyncSession], service_id: int) -> dict[str, Any]:
    """What the database says right now, by the rows (not through the code under test)."""
    async with sessionmaker() as session:
        service = await session.get(EmailService, service_id)
        assert service is not None
        pending = {(status, kind): n for status, kind, n in (await session.execute(_pending_query())).all()}
        in_flight = await session.scalar(
            select(func.count()).where(SubTask.service_id == service_id, SubTask.send_state == SendState.ALLOCATED)
        )
        uncertain = await session.scalar(
            select(func.count()).where(SubTask.service_id == service_id, SubTask.send_state == SendState.UNCERTAIN)
        )
        usage = await session.scalar(
            select(
                func.coalesce(
                    func.sum(ServiceDayUsage.accepted + ServiceDayUsage.uncertain + ServiceDayUsage.adjustment), 0
                )
            ).where(ServiceDayUsage.service_id == service_id)
        )
        tasks = dict(
            ((status, kind), n)
            for status, kind, n in (
                await session.execute(select(Task.status, Task.kind, func.count()).group_by(Task.status, Task.kind))
            ).all()
        )
        generated = await session.scalar(
            select(func.min(Task.generated_at)).where(
                Task.status.in_(("queued", "sending")),
                select(SubTask.id).where(SubTask.task_id == Task.id, SubTask.send_state == "pending").exists(),
            )
        )
        beats = (await session.execute(select(Worker.id, Worker.last_heartbeat_at))).all()
        unapplied = await session.scalar(select(func.count()).select_from(Event).where(Event.processed_at.is_(None)))
    return {
        "pending": pending,
        "in_flight": int(in_flight or 0),
        "uncertain": int(uncertain or 0),
        "used": int(usage or 0) + int(in_flight or 0),
        "quota": service.daily_quota,
        "name": service.name,
        "tasks": tasks,
        "oldest_pending_at": generated,
        "workers": dict(beats),
        "unapplied": int(unapplied or 0),
    }


def _pending_query() -> Any:
    """Pending SubTasks by their task's status and kind (fresh: never tried; retry: tried before)."""
    kind = case((SubTask.attempts > 0, "retry"), else_="fresh")
    return (
        select(Task.status, kind, func.count())
        .join(Task, Task.id == SubTask.task_id)
        .where(SubTask.send_state == SendState.PENDING)
        .group_by(Task.status, kind)
    )


@dataclass
class Scraped:
    """When the two scrapes began and ended, and the workers' heartbeats read just before: an age a scrape computed
    lies between the ages at those moments, however slowly a loaded machine ran them."""

    began: dt.datetime
    ended: dt.datetime
    beats_before: dict[str, dt.datetime]


async def _beats(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, dt.datetime]:
    async with sessionmaker() as session:
        rows = (await session.execute(select(Worker.id, Worker.last_heartbeat_at))).all()
        return {worker_id: beat for worker_id, beat in rows}


def _age_between(age: float, newest: dt.datetime, oldest: dt.datetime, scraped: Scraped) -> bool:
    """`age` of a time the scrape read, no older than `oldest` (read before it) and no newer than `newest` (read
    after it); ±1 s of rounding."""
    return (scraped.began - newest).total_seconds() - 1 <= age <= (scraped.ended - oldest).total_seconds() + 1


def _check_state(samples: Samples, state: dict[str, Any], service_id: int, scraped: Scraped) -> None:
    sid = str(service_id)
    for status in ("queued", "sending", "paused"):
        for kind in ("fresh", "retry"):
            found = samples[key("edm_subtasks_pending", task_status=status, kind=kind)]
            assert found == state["pending"].get((status, kind), 0), (status, kind)
    assert samples[key("edm_subtasks_in_flight", service_id=sid)] == state["in_flight"]
    assert samples[key("edm_subtasks_uncertain", service_id=sid)] == state["uncertain"]
    assert samples[key("edm_service_used_today", service_id=sid)] == state["used"]
    assert samples[key("edm_service_daily_quota", service_id=sid)] == state["quota"]
    states = of(samples, "edm_service_state")
    assert states[labels(service_id=sid, state="available")] == 1
    assert sum(v for ls, v in states.items() if ("service_id", sid) in ls) == 1
    assert samples[key("edm_service_info", service_id=sid, service=state["name"], provider="smtp", backup="false")] == 1
    tasks = of(samples, "edm_tasks")
    assert {ls: v for ls, v in tasks.items() if v} == {
        labels(status=status, kind=kind): n for (status, kind), n in state["tasks"].items()
    }
    oldest = state["oldest_pending_at"]
    age = samples[key("edm_oldest_pending_age_seconds")]
    assert _age_between(age, oldest, oldest, scraped) if oldest is not None else age == 0.0, (age, oldest, scraped)
    ages = of(samples, "edm_worker_heartbeat_age_seconds")
    assert set(ages) == {labels(worker=w) for w in state["workers"]}
    for worker_id, beat in state["workers"].items():
        before = scraped.beats_before.get(worker_id, beat)
        assert _age_between(ages[labels(worker=worker_id)], beat, before, scraped), (ages, beat, scraped)
    assert samples[key("edm_workers_alive")] == len(state["workers"]) == 1
    assert samples[key("edm_events_pending")] == state["unapplied"]
    assert samples[key("edm_sending_paused")] == 0
    assert samples[key("edm_metrics_database_up")] == 1


# -- the flows -------------------------------------------------------------------------------------------------


async def _check_flows(
    after: Samples,
    before: Samples,
    sessionmaker: async_sessionmaker[AsyncSession],
    service_id: int,
    task_id: int,
) -> None:
    async with sessionmaker() as session:
        attempts = (
            await session.execute(
                select(SendAttempt.service_id, SendAttempt.outcome, func.count()).group_by(
                    SendAttempt.service_id, SendAttempt.outcome
                )
            )
        ).all()
        timed, total_ms = (
            await session.execute(
                select(func.count(SendAttempt.duration_ms), func.coalesce(func.sum(SendAttempt.duration_ms), 0))
            )
        ).one()
        events = (
            await session.execute(
                select(Event.source, Event.event_type, Event.match_status, func.count())
                .where(Event.processed_at.is_not(None))
                .group_by(Event.source, Event.event_type, Event.match_status)
            )
        ).all()
        hits = (
            await session.scalars(
                select(Event).where(
                    Event.source == "tracking",
                    Event.event_type.in_(("opened", "clicked")),
                    Event.match_status == "matched",
                )
            )
        ).all()
        imported = (
            await session.execute(
                select(
                    Import.kind,
                    func.sum(Import.created),
                    func.sum(Import.updated),
                    func.sum(Import.skipped),
                    func.sum(Import.errors),
                ).group_by(Import.kind)
            )
        ).all()
        task = await session.get(Task, task_id)
        reports = await session.scalar(select(func.count()).select_from(Event).where(Event.source == "dsn"))
    assert task is not None and task.schedule_at and task.first_sent_at and task.completed_at

    assert grown(after, before, "edm_sends_total") == {
        labels(service_id=sid, outcome=outcome): n for sid, outcome, n in attempts
    }
    assert {o for _, o, _ in attempts} == {"accepted", "permanent"}
    assert grown(after, before, "edm_send_latency_seconds_count") == {labels(service_id=service_id): timed}
    latency = grown(after, before, "edm_send_latency_seconds_sum")[labels(service_id=service_id)]
    assert latency == pytest.approx(total_ms / 1000, abs=1e-6)

    assert grown(after, before, "edm_events_total") == {
        labels(source=source, type=event_type, match_status=status): n for source, event_type, status, n in events
    }
    expected_hits: dict[tuple[tuple[str, str], ...], float] = {}
    for hit in hits:
        kind = "open" if hit.event_type == "opened" else "click"
        agent = "machine" if hit.details.get("machine") else "human"
        expected_hits[labels(kind=kind, agent=agent)] = expected_hits.get(labels(kind=kind, agent=agent), 0) + 1
    assert (
        grown(after, before, "edm_tracking_hits_total")
        == expected_hits
        == {
            labels(kind="open", agent="human"): 1,
            labels(kind="open", agent="machine"): 1,
            labels(kind="click", agent="human"): 1,
        }
    )
    assert grown(after, before, "edm_webhook_requests_total") == {
        labels(provider="smtp", kind="dsn", result="accepted"): reports
    }
    assert reports == 1
    assert (
        grown(after, before, "edm_import_rows_total")
        == {
            labels(kind=kind, result=result): n
            for kind, *counts in imported
            for result, n in zip(("created", "updated", "skipped", "error"), counts, strict=True)
            if n
        }
        == {  # a bad row is skipped and reported
            labels(kind="contacts", result="created"): 3,
            labels(kind="contacts", result="skipped"): 1,
            labels(kind="contacts", result="error"): 1,
        }
    )

    first = (task.first_sent_at - task.schedule_at).total_seconds()
    done = (task.completed_at - task.schedule_at).total_seconds()
    assert grown(after, before, "edm_task_schedule_to_first_send_seconds_count") == {(): 1}
    # .get: a sum that did not grow shows as 0.0 beside the expected delay (CI once saw it missing on SQLite)
    first_sum = grown(after, before, "edm_task_schedule_to_first_send_seconds_sum").get((), 0.0)
    assert first_sum == pytest.approx(first, abs=1e-3), (task.schedule_at, task.first_sent_at)
    assert grown(after, before, "edm_task_schedule_to_completion_seconds_count") == {(): 1}
    done_sum = grown(after, before, "edm_task_schedule_to_completion_seconds_sum").get((), 0.0)
    assert done_sum == pytest.approx(done, abs=1e-3), (task.schedule_at, task.completed_at)

    requests = grown(after, before, "edm_http_requests_total")
    opens = sum(1 for h in hits if h.event_type == "opened")
    clicks = sum(1 for h in hits if h.event_type == "clicked")
    assert requests[labels(method="GET", route="/t/o/{token}.gif", status=200)] == opens == 2
    assert requests[labels(method="GET", route="/t/c/{token}", status=302)] == clicks == 1
    assert requests[labels(method="POST", route="/webhooks/smtp/{service_id}/dsn", status=200)] == reports
    timings = grown(after, before, "edm_http_request_duration_seconds_count")
    assert timings[labels(method="GET", route="/t/o/{token}.gif", status=200)] == opens


# -- the steps -------------------------------------------------------------------------------------------------


async def _engage(app: httpx.AsyncClient, sink: SmtpSink) -> None:
    """A person opens the first delivered mail and clicks its link; a scanner fetches the second one's pixel."""
    bodies = [_html(m.data) for m in sink.messages]
    first, second = [re.findall(r"/t/o/[^\"/]+\.gif", body)[0] for body in bodies[:2]]
    click = re.findall(r"/t/c/[^\"/]+", bodies[0])[0]
    for path, agent in ((first, BROWSER), (second, SCANNER), (click, BROWSER)):
        answer = await app.get(path, headers={"User-Agent": agent})
        assert answer.status_code in (200, 302), (path, answer.status_code)


def _html(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


async def _import_done(dkit: DispatchKit) -> bool:
    return bool(await dkit.scalar(select(func.count()).select_from(Import).where(Import.status == "completed")))


async def _first_in_flight(dkit: DispatchKit, sink: SmtpSink) -> bool:
    allocated = await dkit.scalar(select(func.count()).where(SubTask.send_state == SendState.ALLOCATED))
    return bool(sink.messages) and allocated == 1


async def _completed(dkit: DispatchKit, task_id: int) -> bool:
    return await dkit.status(task_id) == "completed"


async def _events_applied(dkit: DispatchKit, count: int) -> bool:
    applied = await dkit.scalar(select(func.count()).select_from(Event).where(Event.processed_at.is_not(None)))
    pending = await dkit.scalar(select(func.count()).select_from(Event).where(Event.processed_at.is_(None)))
    return applied == count and pending == 0
