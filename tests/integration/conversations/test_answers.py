"""Answering from EDM (docs/conversations-answers.md): an answer is queued through the API, sent by the real worker
before bulk work, threaded (Subject `Re: …`, In-Reply-To, References), from the conversation's address with the
sender's display name, without tracking or List-Unsubscribe, for 1 credit; its outcome reaches the thread; a failed
answer is sent again through another service; a frozen preferred service does not strand it; starting a conversation
sends a real mail. Conversations are stored directly (tests/factories.py): the inbound side is built separately."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.conversations import answers
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.email_services import service as services
from edm.events import apply as event_apply
from edm.models.contacts import Contact
from edm.models.content import Sender
from edm.models.conversations import Conversation, ConversationMessage
from edm.models.events import Event
from edm.models.tasks import SendAttempt, SubTask, Task
from edm.models.users import Role
from edm.providers.fake import FakeAdapter
from edm.system.service import CLI
from tests import factories
from tests.helpers import Account, api_client, expect_error, make_account, run_cli_async
from tests.integration.dispatch.conftest import DispatchKit


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture
def sink2() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture
def dkit(db_url: str, sessionmaker: async_sessionmaker[AsyncSession]) -> DispatchKit:
    return DispatchKit(db_url, sessionmaker)


def smtp(sink: SmtpSink, name: str, **values: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "smtp",
        "options": {"host": sink.host, "port": sink.port, "security": "none"},
        **values,
    }


async def _setup(
    dkit: DispatchKit,
    *,
    name: str = "ann",
    credit: int = 10,
    services_: list[dict[str, Any]] | None = None,
    role: str = Role.USER,
    inbound: list[dict[str, Any]] | None = None,
    subject: str = "Re: RE: Question about my order",
    last: int | None = 0,
) -> tuple[Account, dict[str, Any]]:
    """A user with a sender `support-<name>` ("Ann's Shop"), a contact, the given services (a fake one by default)
    mapped to it, and a conversation between support-<name>@<first service's domain> and the contact, whose last
    service is services_[last]."""
    owner = await make_account(dkit.sessionmaker, name, credit=credit, role=role)
    async with unit_of_work(dkit.sessionmaker) as session:
        ids: dict[str, Any] = {}
        ids["sender"] = await factories.sender(session, owner.id, local=f"support-{name}")
        sender = await session.get(Sender, ids["sender"])
        assert sender is not None
        sender.display_name = "Ann's Shop"
        [ids["contact"]] = await factories.contacts(session, owner.id, 1, prefix=f"{name}-cust")
        contact = await session.get(Contact, ids["contact"])
        assert contact is not None
        contact.name = "Zoë Customer"
        ids["services"] = [
            await factories.service(session, dkit.settings, map_to=[owner.id], **spec)
            for spec in (services_ or [{"name": f"esp-{name}"}])
        ]
        first = await services.get_service(session, ids["services"][0])
        ids["our_address"] = f"support-{name}@{first.domain}"
        ids["their_address"] = contact.email
        ids["conversation"], ids["inbound"] = await factories.conversation(
            session,
            owner.id,
            our_address=ids["our_address"],
            their_address=contact.email,
            their_name="Zoë Customer",
            subject=subject,
            contact_id=contact.id,
            last_service_id=ids["services"][last] if last is not None else None,
            inbound=inbound if inbound is not None else [{"message_id": "q1@customer.example"}],
        )
    return owner, ids


async def _reply(client: httpx.AsyncClient, who: Account, conversation_id: int, **body: Any) -> httpx.Response:
    return await client.post(f"/api/v1/conversations/{conversation_id}/reply", headers=who.headers, json=body)


async def _message(dkit: DispatchKit, message_id: int) -> dict[str, Any]:
    async with dkit.sessionmaker() as session:
        row = await session.get(ConversationMessage, message_id)
        assert row is not None
        return await answers.describe(session, row)


async def _conversation(dkit: DispatchKit, conversation_id: int) -> Conversation:
    async with dkit.sessionmaker() as session:
        found = await session.get(Conversation, conversation_id)
        assert found is not None
        return found


def _settled(dkit: DispatchKit, message_id: int) -> Any:
    async def check() -> bool:
        return bool((await _message(dkit, message_id))["settled"])

    return check


def _in_state(dkit: DispatchKit, message_id: int, state: str) -> Any:
    async def check() -> bool:
        return (await _message(dkit, message_id))["state"] == state

    return check


# --------------------------------------------------------------------------------------------------------
# The mail as received


async def test_a_reply_is_received_threaded_from_our_address_without_tracking_and_costs_one_credit(
    db_url: str, engine: Any, dkit: DispatchKit, sink: SmtpSink
) -> None:
    # A long thread: the customer's last mail names 12 earlier ids; ours keeps the first and the last 10.
    earlier = [f"m{i}@thread.example" for i in range(12)]
    owner, ids = await _setup(
        dkit,
        services_=[smtp(sink, "relay")],
        inbound=[
            {"message_id": "first@customer.example"},
            {"message_id": "q2@customer.example", "references": " ".join(f"<{m}>" for m in earlier)},
        ],
    )
    async with api_client(db_url, engine) as client:
        text = "Hello Zoë,\n\nyour parcel left today: https://shop.example.com/track?id=1 <b>\nAnn"
        r = await _reply(client, owner, ids["conversation"], text=text)
        assert r.status_code == 202, r.text
        queued = r.json()
        assert queued["state"] == "pending" and queued["subject"] == "Re: Question about my order"
        assert queued["route"]["tier"] == "last_service" and queued["route"]["same_domain"] is True
        assert queued["route"]["warning"] is None and queued["from_domain_changed"] is False
        [charge] = await dkit.ledger(owner.id, "charge")
        assert (charge.amount, charge.task_id) == (-1, queued["task_id"])
        assert await dkit.credit(owner.id) == (9, 9)
        # Hidden from the campaign lists like a test send.
        listed = await client.get("/api/v1/tasks", headers=owner.headers)
        assert listed.json()["items"] == []
        assert (await client.get(f"/api/v1/tasks/{queued['task_id']}", headers=owner.headers)).status_code == 404

        async with dkit.worker():
            await dkit.wait_for(_settled(dkit, queued["id"]), timeout=20, what="answer sent")
    assert await sink.wait_for_messages(1)
    [captured] = sink.messages
    mail = email.message_from_bytes(captured.data, policy=email.policy.default)
    [subtask] = await dkit.subtasks(queued["task_id"])
    domain = "relay.example.com"
    assert mail["Subject"] == "Re: Question about my order"
    assert mail["From"] == f"Ann's Shop <support-ann@{domain}>"
    assert mail["To"] == f"Zoë Customer <{ids['their_address']}>"
    assert mail["Message-ID"] == f"<{subtask.public_id}@{domain}>"
    assert mail["In-Reply-To"] == "<q2@customer.example>"
    chain = [*earlier, "q2@customer.example"]
    assert mail["References"].split() == [f"<{m}>" for m in [chain[0], *chain[-10:]]]
    assert mail["List-Unsubscribe"] is None and mail["List-Unsubscribe-Post"] is None
    assert mail["Reply-To"] is None
    plain = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert plain.replace("\r\n", "\n").strip() == text
    assert "https://shop.example.com/track?id=1 &lt;b&gt;<br>" in html, "the text, escaped, with its line breaks"
    base = dkit.settings.effective_tracking_url
    assert f"{base}/t/o/" not in html and f"{base}/t/c/" not in html + plain, "no pixel, no rewritten link"
    assert "[TEST]" not in mail["Subject"]

    done = await _message(dkit, queued["id"])
    assert done["state"] == "sent" and done["sent_at"] is not None and done["service"] == "Channel 1"
    assert done["message_id"] == f"{subtask.public_id}@{domain}" and done["retryable"] is False
    conversation = await _conversation(dkit, ids["conversation"])
    assert conversation.last_service_id == ids["services"][0]
    assert conversation.message_count == 3 and conversation.last_message_at == done["sent_at"]
    assert await dkit.credit(owner.id) == (9, 9), "not refunded: it was sent"
    assert await dkit.status(queued["task_id"]) in ("sending", "completed")


async def test_an_html_answer_is_sent_as_written_to_a_given_message(
    db_url: str, engine: Any, dkit: DispatchKit, sink: SmtpSink
) -> None:
    owner, ids = await _setup(
        dkit,
        services_=[smtp(sink, "relay")],
        inbound=[{"message_id": "a@customer.example"}, {"message_id": "b@customer.example"}],
    )
    html = '<p>See <a href="https://shop.example.com/faq">the FAQ</a> {{ contact.name }}</p>'
    async with api_client(db_url, engine) as client:
        r = await _reply(
            client, owner, ids["conversation"], text="See the FAQ", html=html, message_id=ids["inbound"][0]
        )
        assert r.status_code == 202, r.text
        assert r.json()["in_reply_to"] == "a@customer.example"
        assert r.json()["references"] == ["a@customer.example"]
        async with dkit.worker():
            await dkit.wait_for(_settled(dkit, r.json()["id"]), timeout=20, what="answer sent")
    assert await sink.wait_for_messages(1)
    mail = email.message_from_bytes(sink.messages[0].data, policy=email.policy.default)
    sent_html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert sent_html.strip() == html, "not rendered as a template, no tracking, no footer"
    assert mail.get_body(("plain",)).get_content().strip() == "See the FAQ"  # type: ignore[union-attr]
    assert mail["In-Reply-To"] == "<a@customer.example>" and mail["References"] == "<a@customer.example>"
    assert mail["List-Unsubscribe"] is None


# --------------------------------------------------------------------------------------------------------
# Claimed before bulk work


async def test_an_answer_is_claimed_before_the_pending_bulk_work_of_the_same_service(
    db_url: str, engine: Any, dkit: DispatchKit
) -> None:
    slow = {"name": "slow", "max_concurrency": 1, "batch_size": 1, "sending_interval_seconds": 0.25}
    owner, ids = await _setup(dkit, credit=1000, services_=[slow])
    async with unit_of_work(dkit.sessionmaker) as session:
        template = await factories.template(session, owner.id)
        await factories.contacts(session, owner.id, 60, prefix="bulk-")
        bulk = await factories.task(
            session, owner.id, sender_id=ids["sender"], template_ids=[template], rule={"type": "all_contacts"}
        )
    assert (await dkit.generate(bulk)).sendable == 61  # type: ignore[union-attr]
    async with api_client(db_url, engine) as client, dkit.worker(concurrency=1):
        await dkit.wait_for(lambda: _sent_at_least(dkit, bulk, 1), timeout=20, what="bulk sending started")
        r = await _reply(client, owner, ids["conversation"], text="Thanks!")
        assert r.status_code == 202, r.text
        posted_after = int(await dkit.scalar(select(func.count()).select_from(SendAttempt)) or 0)
        await dkit.wait_for(_settled(dkit, r.json()["id"]), timeout=20, what="answer sent")
        assert await dkit.count(bulk, "pending") > 0, "the bulk task is not finished"
    order = [
        row.task_id
        for row in await dkit.rows(
            select(SubTask.task_id).join(SendAttempt, SendAttempt.subtask_id == SubTask.id).order_by(SendAttempt.id)
        )
    ]
    assert order.index(r.json()["task_id"]) <= posted_after + 1, (order, posted_after)


async def _sent_at_least(dkit: DispatchKit, task_id: int, n: int) -> bool:
    return await dkit.count(task_id, "sent") >= n


# --------------------------------------------------------------------------------------------------------
# Failure, retry, failover


async def test_a_refused_answer_shows_its_failure_and_a_retry_goes_through_another_service(
    db_url: str, engine: Any, dkit: DispatchKit, sink: SmtpSink, sink2: SmtpSink
) -> None:
    sink.data_reply = (554, "5.6.0 message refused")
    same = "mail.ann.example"
    owner, ids = await _setup(
        dkit, services_=[smtp(sink, "refuses", domain=same), smtp(sink2, "works", domain=same)], last=0
    )
    refusing, working = ids["services"]
    async with api_client(db_url, engine) as client:
        r = await _reply(client, owner, ids["conversation"], text="Here is the answer")
        assert r.status_code == 202, r.text
        first = r.json()
        assert first["route"]["service_id"] == refusing
        async with dkit.worker():
            await dkit.wait_for(_settled(dkit, first["id"]), timeout=20, what="answer failed")
        failed = await _message(dkit, first["id"])
        assert failed["state"] == "failed" and failed["retryable"] is True and failed["sent_at"] is None
        assert failed["error"] and "refused" in failed["error"] and failed["service_id"] == refusing
        assert (await _conversation(dkit, ids["conversation"])).message_count == 1, "a failed answer is not counted"

        url = f"/api/v1/conversations/{ids['conversation']}/messages/{first['id']}/retry"
        again = await client.post(url, headers=owner.headers)
        assert again.status_code == 202, again.text
        retried = again.json()
        assert retried["id"] == first["id"] and retried["state"] == "pending"
        assert retried["task_id"] != first["task_id"] and retried["message_id"] != first["message_id"]
        assert retried["route"]["service_id"] == working and retried["route"]["same_domain"] is True
        expect_error(await client.post(url, headers=owner.headers), 409, "conflict")  # already queued again
        assert await dkit.credit(owner.id) == (8, 8), "each attempt costs 1 credit"

        async with dkit.worker():
            await dkit.wait_for(_settled(dkit, first["id"]), timeout=20, what="answer sent on retry")
        done = await _message(dkit, first["id"])
        assert done["state"] == "sent" and done["service_id"] == working and done["from_domain_changed"] is False
        error = expect_error(await client.post(url, headers=owner.headers), 409, "conflict")
        assert "was sent" in error["message"], "never sent twice"
    assert await sink2.wait_for_messages(1)
    assert len(sink2.messages) == 1 and sink.messages == []  # the refusing sink kept nothing
    assert (await _conversation(dkit, ids["conversation"])).last_service_id == working


async def test_a_frozen_preferred_service_does_not_strand_the_answer(
    db_url: str, engine: Any, dkit: DispatchKit
) -> None:
    same = "mail.ann.example"
    owner, ids = await _setup(
        dkit, services_=[{"name": "preferred", "domain": same}, {"name": "sibling", "domain": same}], last=0
    )
    preferred, sibling = ids["services"]
    async with api_client(db_url, engine) as client:
        r = await _reply(client, owner, ids["conversation"], text="On its way")
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        assert (await dkit.task(task_id)).allowed_service_ids == [preferred]
        async with unit_of_work(dkit.sessionmaker) as session:  # frozen after the answer was queued for it
            await services.freeze(session, preferred, reason="test", actor=CLI)
        async with dkit.worker():
            await dkit.wait_for(_settled(dkit, r.json()["id"]), timeout=20, what="answer sent elsewhere")
    done = await _message(dkit, r.json()["id"])
    assert done["state"] == "sent" and done["service_id"] == sibling and done["from_domain_changed"] is False
    assert (await dkit.task(task_id)).allowed_service_ids == [sibling]
    assert FakeAdapter.deliveries_for(preferred) == []


async def test_without_a_usable_service_of_its_domain_the_answer_changes_domain_with_a_warning(
    db_url: str, engine: Any, dkit: DispatchKit
) -> None:
    owner, ids = await _setup(dkit, services_=[{"name": "home"}, {"name": "elsewhere"}], last=0)
    home, elsewhere = ids["services"]
    async with api_client(db_url, engine) as client:
        route = await client.get(f"/api/v1/conversations/{ids['conversation']}/route", headers=owner.headers)
        assert route.status_code == 200, route.text
        assert route.json()["tier"] == "last_service" and route.json()["warning"] is None
        r = await _reply(client, owner, ids["conversation"], text="Answer one")
        assert r.status_code == 202
        async with unit_of_work(dkit.sessionmaker) as session:
            await services.freeze(session, home, reason="test", actor=CLI)
        route = (await client.get(f"/api/v1/conversations/{ids['conversation']}/route", headers=owner.headers)).json()
        assert route["tier"] == "other_domain" and route["same_domain"] is False
        assert route["service_id"] == elsewhere and route["from_address"] == "support-ann@elsewhere.example.com"
        assert "elsewhere.example.com" in route["warning"] and "changes domain" in route["warning"]
        second = await _reply(client, owner, ids["conversation"], text="Answer two")
        assert second.json()["route"]["warning"] == route["warning"]
        async with dkit.worker():
            for message in (r.json(), second.json()):
                await dkit.wait_for(_settled(dkit, message["id"]), timeout=20, what="answers sent")
    for message in (r.json(), second.json()):
        done = await _message(dkit, message["id"])
        assert done["state"] == "sent" and done["service_id"] == elsewhere
        assert done["from_address"] == "support-ann@elsewhere.example.com" and done["from_domain_changed"] is True
    assert len(FakeAdapter.deliveries_for(elsewhere)) == 2 and FakeAdapter.deliveries_for(home) == []


async def test_an_uncertain_answer_proven_sent_by_an_event_reaches_the_thread(
    db_url: str, engine: Any, dkit: DispatchKit
) -> None:
    owner, ids = await _setup(dkit, services_=[{"name": "doubtful", "options": {"maybe_sent_pct": 100}}])
    async with api_client(db_url, engine) as client:
        r = await _reply(client, owner, ids["conversation"], text="Did it leave?")
        assert r.status_code == 202, r.text
        async with dkit.worker():
            await dkit.wait_for(_in_state(dkit, r.json()["id"], "uncertain"), timeout=20, what="answer uncertain")
        doubtful = await _message(dkit, r.json()["id"])
        assert doubtful["state"] == "uncertain" and doubtful["retryable"] is False and doubtful["sent_at"] is None
        url = f"/api/v1/conversations/{ids['conversation']}/messages/{r.json()['id']}/retry"
        error = expect_error(await client.post(url, headers=owner.headers), 409, "conflict")
        assert "may have been sent" in error["message"]
    [subtask] = await dkit.subtasks(r.json()["task_id"])
    async with unit_of_work(dkit.sessionmaker) as session:
        session.add(
            Event(
                source="fake",
                service_id=ids["services"][0],
                dedupe_key="proof-1",
                event_type="delivered",
                occurred_at=clock.utc_now(),
                subtask_ref=str(subtask.public_id),
                raw={},
            )
        )
    assert (await event_apply.drain(dkit.sessionmaker, simulated_matches_any=True, batch=50)).reconciled == 1
    done = await _message(dkit, r.json()["id"])
    assert done["state"] == "delivered" and done["sent_at"] is not None
    conversation = await _conversation(dkit, ids["conversation"])
    assert conversation.message_count == 2 and conversation.last_service_id == ids["services"][0]
    async with dkit.sessionmaker() as session:
        row = await session.get(ConversationMessage, r.json()["id"])
        assert row is not None and row.sent_at is not None and row.service_id == ids["services"][0]


# --------------------------------------------------------------------------------------------------------
# Starting a conversation


async def test_starting_a_conversation_sends_a_real_mail_and_reuses_the_conversation(
    db_url: str, engine: Any, dkit: DispatchKit, sink: SmtpSink
) -> None:
    owner, ids = await _setup(dkit, name="cat", services_=[smtp(sink, "relay")], inbound=[], last=None)
    async with unit_of_work(dkit.sessionmaker) as session:  # a contact without a conversation yet
        [fresh] = await factories.contacts(session, owner.id, 1, prefix="newcomer-")
    body = {"contact_id": fresh, "sender_id": ids["sender"], "subject": "Welcome aboard", "text": "Hi!"}
    async with api_client(db_url, engine) as client:
        r = await client.post("/api/v1/conversations", headers=owner.headers, json={**body, "html": "<p>Hi!</p>"})
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["subject"] == "Welcome aboard" and started["in_reply_to"] is None
        conversation = await _conversation(dkit, started["conversation_id"])
        assert conversation.our_address == "support-cat@relay.example.com"
        assert conversation.their_address == "newcomer-0@example.net" and conversation.contact_id == fresh
        async with dkit.worker():
            await dkit.wait_for(_settled(dkit, started["id"]), timeout=20, what="first message sent")
        assert await sink.wait_for_messages(1)
        mail = email.message_from_bytes(sink.messages[0].data, policy=email.policy.default)
        assert mail["Subject"] == "Welcome aboard" and mail["In-Reply-To"] is None
        assert mail["From"] == "Ann's Shop <support-cat@relay.example.com>"
        assert mail.get_body(("html",)).get_content().strip() == "<p>Hi!</p>"  # type: ignore[union-attr]
        assert (await _message(dkit, started["id"]))["state"] == "sent"
        assert (await _conversation(dkit, started["conversation_id"])).message_count == 1

        again = await client.post("/api/v1/conversations", headers=owner.headers, json=body)
        assert again.status_code == 202 and again.json()["conversation_id"] == started["conversation_id"]

        async with unit_of_work(dkit.sessionmaker) as session:
            await session.execute(update(Contact).where(Contact.id == fresh).values(unsubscribed_at=clock.utc_now()))
        error = expect_error(
            await client.post("/api/v1/conversations", headers=owner.headers, json=body), 422, "validation_error"
        )
        assert "unsubscribed" in error["message"]
    assert await dkit.credit(owner.id) == (8, 8)


# --------------------------------------------------------------------------------------------------------
# Refusals


async def test_short_credit_is_refused_and_writes_nothing(db_url: str, engine: Any, dkit: DispatchKit) -> None:
    owner, ids = await _setup(dkit, credit=0)
    async with api_client(db_url, engine) as client:
        error = expect_error(await _reply(client, owner, ids["conversation"], text="Hi"), 409, "insufficient_credit")
        assert error["needed"] == 1 and error["available"] == 0
    assert await dkit.scalar(select(func.count()).select_from(Task)) == 0
    assert (
        await dkit.scalar(
            select(func.count()).select_from(ConversationMessage).where(ConversationMessage.direction == "outbound")
        )
        == 0
    )


async def test_another_users_conversation_is_404_and_read_only_users_are_refused(
    db_url: str, engine: Any, dkit: DispatchKit
) -> None:
    ann, ann_ids = await _setup(dkit, name="ann")
    bob, bob_ids = await _setup(dkit, name="bob")
    reader, reader_ids = await _setup(dkit, name="reader", role=Role.READ_ONLY)
    async with api_client(db_url, engine) as client:
        expect_error(await _reply(client, bob, ann_ids["conversation"], text="Hi"), 404, "not_found")
        expect_error(
            await client.get(f"/api/v1/conversations/{ann_ids['conversation']}/route", headers=bob.headers),
            404,
            "not_found",
        )
        mine = await _reply(client, ann, ann_ids["conversation"], text="Hi")
        assert mine.status_code == 202
        retry = f"/api/v1/conversations/{ann_ids['conversation']}/messages/{mine.json()['id']}/retry"
        expect_error(await client.post(retry, headers=bob.headers), 404, "not_found")
        wrong_thread = f"/api/v1/conversations/{bob_ids['conversation']}/messages/{mine.json()['id']}/retry"
        expect_error(await client.post(wrong_thread, headers=bob.headers), 404, "not_found")
        expect_error(await client.post(retry, headers=ann.headers), 409, "conflict")  # pending: not failed
        start = {"contact_id": ann_ids["contact"], "sender_id": bob_ids["sender"], "subject": "Hi", "text": "Hi"}
        error = expect_error(
            await client.post("/api/v1/conversations", headers=bob.headers, json=start), 422, "validation_error"
        )
        assert "contact_id" in error["message"]

        expect_error(await _reply(client, reader, reader_ids["conversation"], text="Hi"), 403, "forbidden")
        body = {**start, "contact_id": reader_ids["contact"], "sender_id": reader_ids["sender"]}
        expect_error(await client.post("/api/v1/conversations", headers=reader.headers, json=body), 403, "forbidden")
        route = await client.get(f"/api/v1/conversations/{reader_ids['conversation']}/route", headers=reader.headers)
        assert route.status_code == 200, "reading the route is not a write"
        expect_error(await _reply(client, ann, ann_ids["conversation"], text="   "), 422, "validation_error")
        expect_error(await _reply(client, ann, ann_ids["conversation"], text="Hi", bcc="x"), 422, "validation_error")
    assert await dkit.credit(bob.id) == (10, 10) and await dkit.credit(reader.id) == (10, 10)


async def test_an_idempotency_key_queues_one_answer(db_url: str, engine: Any, dkit: DispatchKit) -> None:
    owner, ids = await _setup(dkit)
    async with api_client(db_url, engine) as client:
        headers = {**owner.headers, "Idempotency-Key": "answer-1"}
        url = f"/api/v1/conversations/{ids['conversation']}/reply"
        first = await client.post(url, headers=headers, json={"text": "Once"})
        second = await client.post(url, headers=headers, json={"text": "Once"})
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
    assert len(await dkit.ledger(owner.id, "charge")) == 1
    assert await dkit.scalar(select(func.count()).select_from(Task)) == 1


# --------------------------------------------------------------------------------------------------------
# CLI


async def test_cli_answers_starts_and_shows_the_route(dkit: DispatchKit) -> None:
    owner, ids = await _setup(dkit, name="cli")
    conversation = str(ids["conversation"])
    route = await run_cli_async(dkit.db_url, "conversations", "route", conversation)
    assert route.returncode == 0, route.stderr
    assert route.stdout.strip() == "support-cli@esp-cli.example.com via Channel 1 (last_service)"

    done = await run_cli_async(dkit.db_url, "conversations", "reply", conversation, "--text", "Thanks, Zoë")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("message ") and f"in conversation {conversation}: pending" in done.stdout
    assert "via Channel 1 from support-cli@esp-cli.example.com" in done.stdout

    async with unit_of_work(dkit.sessionmaker) as session:
        [fresh] = await factories.contacts(session, owner.id, 1, prefix="cli-new-")
    started = await run_cli_async(
        dkit.db_url,
        "conversations",
        "start",
        "--contact",
        str(fresh),
        "--sender",
        str(ids["sender"]),
        "--subject",
        "Hello",
        "--text",
        "First words",
        "--json",
    )
    assert started.returncode == 0, started.stderr
    body = json.loads(started.stdout)
    assert body["subject"] == "Hello" and body["to_address"] == "cli-new-0@example.net" and body["state"] == "pending"
    async with dkit.worker():
        for message_id in (body["id"],):
            await dkit.wait_for(_settled(dkit, message_id), timeout=20, what="sent")
    assert await dkit.credit(owner.id) == (8, 8)

    bad = await run_cli_async(dkit.db_url, "conversations", "reply", "999999", "--text", "x")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "not found" in bad.stderr
    sent = await run_cli_async(dkit.db_url, "conversations", "retry", str(body["id"]))
    assert sent.returncode == 2 and "only a failed answer" in sent.stderr
