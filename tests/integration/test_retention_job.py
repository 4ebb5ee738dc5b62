"""Retention (docs/operations.md#retention), on both databases, with a frozen clock.

For every target the job trims, one row just older than its period (by an hour) and one just younger are stored;
the job, run in batches of two rows, deletes exactly the older ones and leaves every younger one as it was. A small
campaign's events and send attempts straddle their periods: its reports (timeline, heat map, clicks per link,
attempts per service) read the same before and after, and `edm stats verify` still agrees with them. A dry run
counts what a real run deletes and changes nothing; a second run finds nothing left.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.errors import BadInput
from edm.models.contacts import Import, ImportChunk, ImportRowError
from edm.models.conversations import MailBlob, UnroutedInbound
from edm.models.email_services import EmailServiceStatusLog
from edm.models.events import Event, WebhookNonce
from edm.models.system import AuditLog, IdempotencyRecord, Notification, Worker
from edm.models.tasks import ARCHIVED_STRIPE, SendAttempt, SubTask, Task, TaskQuarterCounter
from edm.models.tracking import TrackedLink, UnsubscribeTombstone
from edm.models.users import ConsoleSession, LoginAttempt
from edm.operations import retention
from edm.system import runtime_settings
from edm.system.runtime_settings import RuntimeSettings
from edm.tasks import facts, reports, stats
from edm.tasks.verify import verify
from tests import factories
from tests.helpers import run_cli, settings_for

NOW = dt.datetime(2027, 6, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def old(period: dt.timedelta) -> dt.datetime:
    return NOW - period - HOUR


def young(period: dt.timedelta) -> dt.datetime:
    return NOW - period + HOUR


EVENTS, RAW, ATTEMPTS = 365 * DAY, 90 * DAY, 180 * DAY


class Store:
    """Rows stored for the test, each named, to check which are left."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.named: dict[str, tuple[Any, Any]] = {}  # name → (model, primary key)

    async def add(self, name: str, row: Any) -> Any:
        self.session.add(row)
        await self.session.flush()
        key = tuple(getattr(row, c.key) for c in row.__mapper__.primary_key)
        self.named[name] = (type(row), key[0] if len(key) == 1 else key)
        return row


def _event(
    n: int,
    event_type: str,
    at: dt.datetime,
    *,
    subtask: SubTask | None = None,
    link: int | None = None,
    machine: bool = False,
    matched: bool = True,
) -> Event:
    details: dict[str, Any] = {}
    if link is not None:
        details["link_id"] = link
    if machine:
        details["machine"] = True
    return Event(
        source="tracking" if event_type in ("opened", "clicked") else "fake",
        dedupe_key=f"e{n}",
        event_type=event_type,
        occurred_at=at,
        received_at=at,
        subtask_id=subtask.id if subtask and matched else None,
        task_id=subtask.task_id if subtask and matched else None,
        user_id=subtask.user_id if subtask else None,
        match_status="matched" if matched else "unmatched",
        details=details,
        raw={"payload": n},
        raw_truncated=False,
        processed_at=at,
    )


async def _campaign(store: Store, settings: Any) -> tuple[int, dict[str, Any]]:
    """The task whose reports must survive, the targets' rows, and what each target should delete."""
    s = store.session
    uid = await factories.user(s, "alice", credit=100)
    sender_id = await factories.sender(s, uid)
    template_id = await factories.template(s, uid)
    service_id = await factories.service(s, settings, "main", map_to=[uid])
    task_id = await factories.task(
        s, uid, sender_id=sender_id, template_ids=[template_id], rule={"type": "all_contacts"}, schedule=False
    )
    for link in (101, 102):
        s.add(TrackedLink(id=link, task_id=task_id, url=f"https://shop.example/{link}", created_at=old(EVENTS)))
    subtasks = []
    for i in range(4):
        subtasks.append(
            await store.add(
                f"subtask{i}",
                SubTask(
                    task_id=task_id,
                    user_id=uid,
                    recipient_email=f"r{i}@example.net",
                    seq=i,
                    send_state="sent",
                    service_id=service_id,
                    attempts=1,
                    sent_at=old(EVENTS),
                    delivery_state="hard_bounced" if i == 2 else "delivered",
                ),
            )
        )
    s0, s1, s2, s3 = subtasks

    # A finished test send past 30 days goes with its SubTask and event; a younger one and an unfinished one stay.
    tests: list[tuple[str, Any]] = [("test_old", "completed"), ("test_young", "completed"), ("test_queued", "queued")]
    test_events = []
    for name, status in tests:
        created = young(30 * DAY) if name == "test_young" else old(30 * DAY)
        task = await store.add(
            name, Task(user_id=uid, name=name, kind="test", status=status, created_at=created, updated_at=created)
        )
        sub = await store.add(
            f"{name}_subtask",
            SubTask(task_id=task.id, user_id=uid, recipient_email="me@example.com", seq=0, send_state="sent"),
        )
        test_events.append((name, sub))

    # Events, stored in the order they arrived (ids follow time, as in a real deployment).
    events: list[tuple[str, dt.datetime, dict[str, Any]]] = [
        ("open_old", old(EVENTS), {"event_type": "opened", "subtask": s0}),
        ("click_old_s0", old(EVENTS), {"event_type": "clicked", "subtask": s0, "link": 101}),
        ("click_machine_old", old(EVENTS), {"event_type": "clicked", "subtask": s0, "link": 101, "machine": True}),
        ("click_old_s1", old(EVENTS), {"event_type": "clicked", "subtask": s1, "link": 101}),
        ("click_old_s1_l2", old(EVENTS), {"event_type": "clicked", "subtask": s1, "link": 102}),
        ("open_machine_old", old(EVENTS), {"event_type": "opened", "subtask": s1, "machine": True}),
        ("bounce_old", old(EVENTS), {"event_type": "hard_bounced", "subtask": s2}),
        ("unmatched_old", old(EVENTS), {"event_type": "delivered", "subtask": s3, "matched": False}),
        ("open_raw_old", old(RAW), {"event_type": "opened", "subtask": s3}),
        ("open_young", young(EVENTS), {"event_type": "opened", "subtask": s0}),
        ("click_young_s0", young(EVENTS), {"event_type": "clicked", "subtask": s0, "link": 101}),
        ("bounce_young", young(EVENTS), {"event_type": "soft_bounced", "subtask": s3}),
        ("open_raw_young", young(RAW), {"event_type": "opened", "subtask": s1}),
    ]
    for name, sub in test_events:
        events.append((f"{name}_event", old(30 * DAY), {"event_type": "opened", "subtask": sub}))
    events.sort(key=lambda e: e[1])
    for n, (name, at, spec) in enumerate(events):
        await store.add(name, _event(n, spec.pop("event_type"), at, **spec))

    for name, sub, at, outcome, ms in [
        ("attempt_old_s0", s0, old(ATTEMPTS), "accepted", 120),
        ("attempt_old_s1", s1, old(ATTEMPTS), "transient", 50),
        ("attempt_young_s1", s1, young(ATTEMPTS), "accepted", None),
    ]:
        await store.add(
            name,
            SendAttempt(
                subtask_id=sub.id, attempt_no=1, service_id=service_id, finished_at=at, outcome=outcome, duration_ms=ms
            ),
        )

    # Every other target: an older and a younger row.
    for name, finished in (("import_old", old(30 * DAY)), ("import_young", young(30 * DAY))):
        imp = await store.add(
            name,
            Import(user_id=uid, filename="c.csv", format="csv", status="completed", finished_at=finished),
        )
        await store.add(f"{name}_error", ImportRowError(import_id=imp.id, row_number=2, message="bad email"))
    finished_import = store.named["import_young"][1]
    await store.add("chunk_finished", ImportChunk(import_id=finished_import, seq=0, data=b"email\n"))
    running = await store.add("import_running", Import(user_id=uid, filename="d.csv", format="csv", status="running"))
    await store.add("chunk_running", ImportChunk(import_id=running.id, seq=0, data=b"email\n"))

    for name, at in (("audit_old", old(730 * DAY)), ("audit_young", young(730 * DAY))):
        await store.add(name, AuditLog(actor_kind="system", action="settings.update", at=at))
    for name, at in (("notification_old", old(365 * DAY)), ("notification_young", young(365 * DAY))):
        await store.add(name, Notification(user_id=uid, kind="service_frozen", title="t", created_at=at, updated_at=at))
    for name, at in (("status_old", old(365 * DAY)), ("status_young", young(365 * DAY))):
        await store.add(name, EmailServiceStatusLog(service_id=service_id, change="frozen", at=at))

    for name, created in (("blob_old", old(DAY)), ("blob_young", young(DAY)), ("blob_of_unrouted", old(DAY))):
        await store.add(name, MailBlob(size=3, sha256="0" * 64, data=b"raw", created_at=created))
    for name, resolved, blob in (
        ("unrouted_old", old(365 * DAY), "blob_of_unrouted"),
        ("unrouted_young", young(365 * DAY), None),
        ("unrouted_open", None, None),
    ):
        await store.add(
            name,
            UnroutedInbound(
                received_at=old(400 * DAY),
                source="smtp",
                message_id=f"{name}@mail.example.org",
                reason="no_owner",
                resolved_at=resolved,
                resolution="discarded" if resolved else None,
                blob_id=store.named[blob][1] if blob else None,
            ),
        )

    for name, expires in (("session_expired", NOW - HOUR), ("session_live", NOW + DAY)):
        await store.add(
            name,
            ConsoleSession(
                id_hash=uuid.uuid4().hex,
                user_id=uid,
                csrf_secret="x",
                created_at=NOW - 2 * DAY,
                last_seen_at=NOW - HOUR,
                expires_at=expires,
            ),
        )
    for name, at in (("login_old", old(DAY)), ("login_young", young(DAY))):
        await store.add(name, LoginAttempt(username="alice", at=at))
    for name, at in (("nonce_old", old(DAY)), ("nonce_young", young(DAY))):
        await store.add(name, WebhookNonce(source="mailgun", nonce=name, seen_at=at))
    for name, at in (("idempotency_old", old(DAY)), ("idempotency_young", young(DAY))):
        await store.add(
            name,
            IdempotencyRecord(
                user_id=uid, key=name, method="POST", path="/api/v1/tags", request_hash="h", created_at=at
            ),
        )
    for name, expires in (("tombstone_old", NOW - HOUR), ("tombstone_young", NOW + HOUR)):
        await store.add(
            name,
            UnsubscribeTombstone(
                subtask_public_id=uuid.uuid4(), user_id=uid, recipient_email="gone@example.net", expires_at=expires
            ),
        )
    for name, beat in (("worker_old", old(7 * DAY)), ("worker_young", young(7 * DAY))):
        await store.add(
            name, Worker(id=name, hostname="h", pid=1, version="1", started_at=beat, last_heartbeat_at=beat)
        )
    await store.add(
        "archive_of_deleted_task",
        TaskQuarterCounter(task_id=999_999, fact="open_hits", quarter=1, stripe=ARCHIVED_STRIPE, n=3),
    )

    deleted = {
        "test_sends": {"test_old", "test_old_subtask", "test_old_event"},
        "events": {
            "open_old",
            "click_old_s0",
            "click_machine_old",
            "click_old_s1",
            "click_old_s1_l2",
            "open_machine_old",
            "bounce_old",
            "unmatched_old",
        },
        "send_attempts": {"attempt_old_s0", "attempt_old_s1"},
        "import_errors": {"import_old_error"},
        "import_files": {"chunk_finished"},
        "audit_log": {"audit_old"},
        "notifications": {"notification_old"},
        "status_log": {"status_old"},
        "unrouted_inbound": {"unrouted_old"},
        "mail_blobs": {"blob_old", "blob_of_unrouted"},
        "sessions": {"session_expired"},
        "login_attempts": {"login_old"},
        "webhook_nonces": {"nonce_old"},
        "idempotency_keys": {"idempotency_old"},
        "unsubscribe_tombstones": {"tombstone_old"},
        "workers": {"worker_old"},
        "archived_figures": {"archive_of_deleted_task"},
    }
    return task_id, deleted


async def _report(session: AsyncSession, task_id: int) -> dict[str, Any]:
    """Every figure of the task that reads events or attempts."""
    task = await session.get(Task, task_id)
    assert task is not None
    quarters = await reports.metric_quarters(session, task_id)
    return {
        "timeline": {metric: sorted(q) for metric, q in quarters.items()},
        "hits": {k: sorted(v) for k, v in (await facts.fact_quarters(session, task_id, facts.FACTS)).items()},
        "heatmap": await reports.heatmap(session, task),
        "links": await reports.by_link(session, task_id, after_id=None, limit=10),
        "services": await reports.by_service(session, task_id, admin=True),
        "attempts": sorted(await reports.attempts_by_service(session, task_id)),
    }


async def _present(sessionmaker: async_sessionmaker[AsyncSession], store: Store) -> set[str]:
    async with sessionmaker() as session:
        return {name for name, (model, key) in store.named.items() if await session.get(model, key) is not None}


async def test_each_table_is_trimmed_past_its_period_and_nothing_younger_is_touched(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    clock.freeze(NOW)
    async with unit_of_work(sessionmaker) as session:
        store = Store(session)
        task_id, deleted = await _campaign(store, settings_for(db_url))
    async with sessionmaker() as session:
        before = await _report(session, task_id)
        raw_old = await session.scalar(select(func.count()).select_from(Event).where(Event.received_at < NOW - RAW))
    assert before["links"][0]["unique_human_clickers"] == 2 and before["links"][0]["clicks_machine"] == 1
    runtime = RuntimeSettings()
    everything = set(store.named)

    dry = {o.target: o.rows for o in await retention.run(sessionmaker, now=NOW, runtime=runtime, dry_run=True)}
    assert await _present(sessionmaker, store) == everything, "a dry run changes nothing"

    outcomes = await retention.run(sessionmaker, now=NOW, runtime=runtime, batch=2)
    done = {o.target: o.rows for o in outcomes}
    assert [o.target for o in outcomes] == list(retention.TARGET_NAMES)
    expected = {name: len(rows) for name, rows in deleted.items()}
    expected["test_sends"] = 1  # tasks; their SubTask and event go with them
    expected["raw_payloads"] = int(raw_old or 0)  # cleared before the events older than a year go
    assert done == expected
    # A dry run counts each table as it is: the raw message of the unrouted mail deleted first is not orphaned yet.
    assert dry == expected | {"mail_blobs": 1}

    gone = set().union(*deleted.values())
    assert await _present(sessionmaker, store) == everything - gone

    async with sessionmaker() as session:
        raws = (await session.execute(select(Event.received_at, Event.raw))).all()
        after = await _report(session, task_id)
        checks = await verify(session, task_id)
    assert {(at < NOW - RAW, raw is None) for at, raw in raws} == {(True, True), (False, False)}, raws
    assert after == before
    assert checks == [{"task_id": task_id, "ok": True, "differences": {}}]
    async with unit_of_work(sessionmaker) as session:  # the `stats` job folds stripes, never the archived one
        await stats.fold_counter_stripes(session)
    async with sessionmaker() as session:
        assert await _report(session, task_id) == before

    again = await retention.run(sessionmaker, now=NOW, runtime=runtime, batch=2)
    assert all(o.rows == 0 for o in again), again


async def test_a_period_of_zero_keeps_rows_for_ever_and_the_cli_reports_per_table(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    clock.freeze(NOW)
    async with unit_of_work(sessionmaker) as session:
        store = Store(session)
        await _campaign(store, settings_for(db_url))
        await runtime_settings.put(session, "retention.audit_log_days", 0)
        await runtime_settings.put(session, "retention.events_days", 0)
        with pytest.raises(BadInput, match="0 \\(keep for ever\\) or at least 8 days"):
            await runtime_settings.put(session, "retention.send_attempts_days", 3)  # the 7-day health history

    # `run_cli` runs the command in this process: it reads the same frozen clock.
    dry = run_cli(db_url, "retention", "run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = {line.split()[0]: line for line in dry.stdout.splitlines() if line.strip()}
    assert "kept for ever" in lines["audit_log"] and "kept for ever" in lines["events"]
    assert "would delete" in dry.stdout.lower() or "dry run" in dry.stdout.lower()
    real = run_cli(db_url, "retention", "run", "--json")
    assert real.returncode == 0, real.stderr
    assert '"target": "audit_log"' in real.stdout
    assert await _present(sessionmaker, store) >= {"audit_old", "open_old", "click_old_s0"}

    bad = run_cli(db_url, "retention", "run", "--only", "nonsense")
    assert bad.returncode == 2 and "nonsense" in bad.stderr
