"""Template test sends (docs/templates.md#test-sends, docs/sending.md#the-claim): queued through the API, sent by
the real worker with `[TEST] ` in the subject and no tracking, charged 1 credit per address, limited to 50 recipients
a day, claimed before bulk work, hidden from the task lists; the unsubscribe link of a test mail records nothing."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.models.contacts import Contact
from edm.models.events import Event
from edm.models.suppressions import Suppression
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.models.users import Role
from edm.providers.fake import FakeAdapter
from tests import factories
from tests.helpers import Account, api_client, expect_error, make_account, run_cli_async
from tests.integration.dispatch.conftest import DispatchKit

HTML = (
    '<html><body><p>Hello {{ contact.first_name | default("there", true) }}</p>'
    '<p><a href="https://shop.example.com/new">What is new</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture
def dkit(db_url: str, sessionmaker: async_sessionmaker[AsyncSession]) -> DispatchKit:
    return DispatchKit(db_url, sessionmaker)


async def _setup(
    dkit: DispatchKit,
    *,
    name: str = "ann",
    credit: int = 100,
    service: dict[str, Any] | None = None,
    sender: bool = True,
    role: str = Role.USER,
) -> tuple[Account, dict[str, int]]:
    """A user with a sender, a template, one contact and a fake service (or the given one)."""
    owner = await make_account(dkit.sessionmaker, name, credit=credit, role=role)
    async with unit_of_work(dkit.sessionmaker) as session:
        ids = {
            "template": await factories.template(
                session, owner.id, subject="News for {{ contact.first_name }}", html=HTML
            )
        }
        if sender:
            ids["sender"] = await factories.sender(session, owner.id, local=f"news-{name}")
        [ids["contact"]] = await factories.contacts(session, owner.id, 1, prefix=f"{name}-")
        contact = await session.get(Contact, ids["contact"])
        assert contact is not None
        contact.first_name, contact.name = "Zoë", "Zoë Contact"
        ids["service"] = await factories.service(
            session, dkit.settings, f"esp-{name}", map_to=[owner.id], **(service or {})
        )
    return owner, ids


async def _post(client: httpx.AsyncClient, who: Account, template_id: int, **body: Any) -> httpx.Response:
    return await client.post(f"/api/v1/templates/{template_id}/test-send", headers=who.headers, json=body)


async def _settled(client: httpx.AsyncClient, who: Account, test_send_id: int) -> bool:
    r = await client.get(f"/api/v1/test-sends/{test_send_id}", headers=who.headers)
    assert r.status_code == 200, r.text
    return bool(r.json()["settled"]) and r.json()["status"] == "completed"


# --------------------------------------------------------------------------------------------------------
# Sending


async def test_a_test_send_is_charged_sent_by_the_worker_and_polled(
    db_url: str, engine: Any, dkit: DispatchKit
) -> None:
    owner, ids = await _setup(dkit, credit=10)
    async with api_client(db_url, engine) as client:
        r = await _post(
            client,
            owner,
            ids["template"],
            emails=["Me@Example.org", "me@example.org", "qa@example.org"],
            contact_id=ids["contact"],
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and body["sample_data"] is False and body["sender_id"] == ids["sender"]
        assert [(x["email"], x["state"]) for x in body["recipients"]] == [
            ("me@example.org", "pending"),
            ("qa@example.org", "pending"),
        ]
        test_id = body["id"]
        # Charged when queued: one `charge` entry of 1 credit per (distinct) address, tied to the test send.
        [charge] = await dkit.ledger(owner.id, "charge")
        assert (charge.amount, charge.task_id) == (-2, test_id)
        assert await dkit.credit(owner.id) == (8, 8)

        async with dkit.worker():
            await dkit.wait_for(lambda: _settled(client, owner, test_id), timeout=20, what="test send completed")
        r = await client.get(f"/api/v1/test-sends/{test_id}", headers=owner.headers)
        done = r.json()
        assert done["status"] == "completed" and done["completed_at"] is not None
        for recipient in done["recipients"]:
            assert recipient["state"] == "sent" and recipient["sent_at"] is not None
            assert recipient["service"] == "Channel 1"  # the service's label: what users see of services
            assert recipient["subject_sent"] == "[TEST] News for Zoë"
        delivered = FakeAdapter.deliveries_for(ids["service"])
        assert sorted(d.to_address for d in delivered) == ["me@example.org", "qa@example.org"]
        assert {d.subject for d in delivered} == {"[TEST] News for Zoë"}
        assert await dkit.credit(owner.id) == (8, 8), "no refund for sent test mail"

        listed = await client.get("/api/v1/test-sends", headers=owner.headers)
        assert [t["id"] for t in listed.json()["items"]] == [test_id]


async def test_without_a_contact_the_preview_sample_data_fills_the_variables(
    db_url: str, engine: Any, dkit: DispatchKit
) -> None:
    owner, ids = await _setup(dkit)
    async with api_client(db_url, engine) as client:
        r = await _post(client, owner, ids["template"], emails=["me@example.org"])
        assert r.status_code == 202 and r.json()["sample_data"] is True
        async with dkit.worker():
            await dkit.wait_for(lambda: _settled(client, owner, r.json()["id"]), timeout=20, what="sent")
    [delivery] = FakeAdapter.deliveries_for(ids["service"])
    assert delivery.subject == "[TEST] News for Jane"


async def test_received_mail_has_test_subject_no_tracking_and_an_unsubscribe_link_that_records_nothing(
    db_url: str, engine: Any, dkit: DispatchKit, sink: SmtpSink
) -> None:
    owner, ids = await _setup(
        dkit, service={"provider": "smtp", "options": {"host": sink.host, "port": sink.port, "security": "none"}}
    )
    async with api_client(db_url, engine) as client:
        r = await _post(client, owner, ids["template"], emails=["me@example.org"], contact_id=ids["contact"])
        assert r.status_code == 202, r.text
        async with dkit.worker():
            await dkit.wait_for(lambda: _settled(client, owner, r.json()["id"]), timeout=30, what="sent")
        assert await sink.wait_for_messages(1)
        message = email.message_from_bytes(sink.messages[0].data, policy=email.policy.default)
        assert message["Subject"] == "[TEST] News for Zoë"
        assert message["To"] == "me@example.org", "the data contact's name is not the tester's"
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        base = dkit.settings.effective_tracking_url
        assert "Hello Zoë" in html
        assert f"{base}/t/o/" not in html, "no open pixel"
        assert f"{base}/t/c/" not in html + text, "no rewritten links"
        assert 'href="https://shop.example.com/new"' in html
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        [url] = re.findall(r"<(https?://[^>]+)>", message["List-Unsubscribe"])
        path = url.removeprefix(base)
        assert path.startswith("/u/") and len(path) > 20, "a real signed token, not the admin test link"

        page = await client.get(path)
        assert page.status_code == 200 and "test message" in page.text and "Nothing was recorded" in page.text
        posted = await client.post(
            path, content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert posted.status_code == 200 and "Nothing was recorded" in posted.text
    [subtask] = await dkit.rows(select(SubTask.unsubscribed_at).where(SubTask.task_id == r.json()["id"]))
    assert subtask.unsubscribed_at is None
    assert await dkit.scalar(select(func.count()).select_from(Event)) == 0
    assert await dkit.scalar(select(func.count()).select_from(Suppression)) == 0


# --------------------------------------------------------------------------------------------------------
# Claimed before bulk work (docs/sending.md#the-claim)


async def test_a_test_send_is_claimed_before_the_pending_bulk_work_of_the_same_service(
    db_url: str, engine: Any, dkit: DispatchKit
) -> None:
    # A slow service: one recipient per claim, a new one every 0.25 s; the bulk task needs 15 s for 60.
    world = await factories.world(
        dkit.sessionmaker,
        dkit.settings,
        recipients=60,
        name="ann",
        services_=[{"name": "slow", "max_concurrency": 1, "batch_size": 1, "sending_interval_seconds": 0.25}],
    )
    async with unit_of_work(dkit.sessionmaker) as session:
        bulk = await factories.task(
            session,
            world.user_id,
            sender_id=world.sender_id,
            template_ids=[world.template_id],
            rule={"type": "all_contacts"},
        )
    assert (await dkit.generate(bulk)).sendable == 60  # type: ignore[union-attr]
    from edm.users.service import create_token

    async with unit_of_work(dkit.sessionmaker) as session:
        token, _ = await create_token(session, user_id=world.user_id, name="t", scope="write")
    owner = Account(world.user_id, "ann", token)

    async with api_client(db_url, engine) as client, dkit.worker(concurrency=1):
        await dkit.wait_for(lambda: _sent_at_least(dkit, bulk, 1), timeout=20, what="bulk sending started")
        r = await _post(client, owner, world.template_id, emails=["me@example.org"])
        assert r.status_code == 202, r.text
        posted_after = await _attempts(dkit)
        test_id = r.json()["id"]
        await dkit.wait_for(lambda: _sent_at_least(dkit, test_id, 1), timeout=20, what="test sent")
        assert await dkit.count(bulk, "pending") > 0, "the bulk task is not finished"
    order = [
        row.task_id
        for row in await dkit.rows(
            select(SubTask.task_id).join(SendAttempt, SendAttempt.subtask_id == SubTask.id).order_by(SendAttempt.id)
        )
    ]
    position = order.index(test_id)
    # Only what was sent before the test was queued, plus the one claim that may have been in flight then
    # (max_concurrency 1, batch 1), goes before it: the next claim took the test.
    assert position <= posted_after + 1, (position, posted_after, order)


async def _sent_at_least(dkit: DispatchKit, task_id: int, n: int) -> bool:
    return await dkit.count(task_id, "sent") >= n


async def _attempts(dkit: DispatchKit) -> int:
    return int(await dkit.scalar(select(func.count()).select_from(SendAttempt)) or 0)


# --------------------------------------------------------------------------------------------------------
# Bad input, limits, isolation


async def test_addresses_must_be_one_to_five_valid_ones(db_url: str, engine: Any, dkit: DispatchKit) -> None:
    owner, ids = await _setup(dkit)
    async with api_client(db_url, engine) as client:
        expect_error(await _post(client, owner, ids["template"], emails=[]), 422, "validation_error")
        six = [f"t{i}@example.org" for i in range(6)]
        expect_error(await _post(client, owner, ids["template"], emails=six), 422, "validation_error")
        error = expect_error(
            await _post(client, owner, ids["template"], emails=["ok@example.org", "not-an-address"]),
            422,
            "validation_error",
        )
        assert "not-an-address" in error["message"]
        expect_error(
            await _post(client, owner, ids["template"], emails=["ok@example.org"], extra=1), 422, "validation_error"
        )
    assert await dkit.ledger(owner.id, "charge") == [] and await dkit.credit(owner.id) == (100, 100)


async def test_other_users_objects_and_read_only_users(db_url: str, engine: Any, dkit: DispatchKit) -> None:
    ann, ann_ids = await _setup(dkit, name="ann")
    bob, bob_ids = await _setup(dkit, name="bob")
    reader, reader_ids = await _setup(dkit, name="reader", role=Role.READ_ONLY)
    async with api_client(db_url, engine) as client:
        expect_error(await _post(client, bob, ann_ids["template"], emails=["me@example.org"]), 404, "not_found")
        error = expect_error(
            await _post(client, bob, bob_ids["template"], emails=["me@example.org"], contact_id=ann_ids["contact"]),
            422,
            "validation_error",
        )
        assert "contact_id" in error["message"]
        expect_error(
            await _post(client, bob, bob_ids["template"], emails=["me@example.org"], sender_id=ann_ids["sender"]),
            422,
            "validation_error",
        )
        expect_error(await _post(client, reader, reader_ids["template"], emails=["me@example.org"]), 403, "forbidden")

        mine = await _post(client, ann, ann_ids["template"], emails=["me@example.org"])
        assert mine.status_code == 202
        expect_error(await client.get(f"/api/v1/test-sends/{mine.json()['id']}", headers=bob.headers), 404, "not_found")
        assert (await client.get("/api/v1/test-sends", headers=bob.headers)).json()["items"] == []


async def test_a_user_without_a_sender_or_credit_is_refused(db_url: str, engine: Any, dkit: DispatchKit) -> None:
    lonely, ids = await _setup(dkit, name="lonely", sender=False)
    poor, poor_ids = await _setup(dkit, name="poor", credit=1)
    async with api_client(db_url, engine) as client:
        error = expect_error(
            await _post(client, lonely, ids["template"], emails=["me@example.org"]), 422, "validation_error"
        )
        assert "sender" in error["message"]
        error = expect_error(
            await _post(client, poor, poor_ids["template"], emails=["a@example.org", "b@example.org"]),
            409,
            "insufficient_credit",
        )
        assert error["needed"] == 2 and error["available"] == 1
    assert await dkit.scalar(select(func.count()).select_from(Task).where(Task.kind == "test")) == 0


async def test_fifty_test_recipients_a_day(db_url: str, engine: Any, dkit: DispatchKit) -> None:
    owner, ids = await _setup(dkit, credit=1000)
    five = [f"t{i}@example.org" for i in range(5)]
    async with api_client(db_url, engine) as client:
        for _ in range(9):
            assert (await _post(client, owner, ids["template"], emails=five)).status_code == 202
        # 45 used.
        assert (await _post(client, owner, ids["template"], emails=five[:4])).status_code == 202  # 49
        error = expect_error(await _post(client, owner, ids["template"], emails=five[:2]), 429, "test_send_limit")
        tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
        assert "49 of 50" in error["message"] and tomorrow in error["message"] and tomorrow in error["resets_at"]
        assert (await _post(client, owner, ids["template"], emails=five[:1])).status_code == 202  # 50
        expect_error(await _post(client, owner, ids["template"], emails=five[:1]), 429, "test_send_limit")
    assert await dkit.credit(owner.id) == (950, 950)


async def test_test_sends_are_not_tasks_in_the_task_endpoints(db_url: str, engine: Any, dkit: DispatchKit) -> None:
    owner, ids = await _setup(dkit)
    async with api_client(db_url, engine) as client:
        test_id = (await _post(client, owner, ids["template"], emails=["me@example.org"])).json()["id"]
        assert (await client.get("/api/v1/tasks", headers=owner.headers)).json()["items"] == []
        assert (await client.get("/api/v1/tasks/summary", headers=owner.headers)).json() == {}
        for method, path in (
            ("GET", ""),
            ("GET", "/stats"),
            ("GET", "/subtasks"),
            ("PATCH", ""),
            ("DELETE", ""),
            ("POST", "/pause"),
            ("POST", "/cancel"),
        ):
            r = await client.request(
                method, f"/api/v1/tasks/{test_id}{path}", headers=owner.headers, json={} if method != "GET" else None
            )
            expect_error(r, 404, "not_found")
        by_email = await client.get("/api/v1/subtasks", params={"email": "me@example.org"}, headers=owner.headers)
        assert by_email.json()["items"] == []
        # …and a campaign's id is not a test send.
        async with unit_of_work(dkit.sessionmaker) as session:
            bulk = await factories.task(
                session,
                owner.id,
                sender_id=ids["sender"],
                template_ids=[ids["template"]],
                rule={"type": "all_contacts"},
                schedule=False,
            )
        expect_error(await client.get(f"/api/v1/test-sends/{bulk}", headers=owner.headers), 404, "not_found")
        assert [t["id"] for t in (await client.get("/api/v1/tasks", headers=owner.headers)).json()["items"]] == [bulk]


# --------------------------------------------------------------------------------------------------------
# CLI


async def test_cli_queues_a_test_send_and_waits_for_the_outcome(dkit: DispatchKit) -> None:
    owner, ids = await _setup(dkit)
    async with dkit.worker():
        # On a thread of its own: the command waits for the worker, which runs on this test's event loop.
        done = await run_cli_async(
            dkit.db_url,
            "template",
            "test-send",
            str(ids["template"]),
            "--to",
            "me@example.org",
            "--to",
            "qa@example.org",
            "--contact",
            str(ids["contact"]),
            "--wait",
            "--timeout",
            "60",
        )
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("test send ") and "queued" in lines[0]
    assert lines[1].startswith("me@example.org: sent via ") and lines[2].startswith("qa@example.org: sent via ")
    bad = await run_cli_async(dkit.db_url, "template", "test-send", str(ids["template"]), "--to", "nope")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "'nope'" in bad.stderr
