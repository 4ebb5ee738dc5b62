"""The inbound sources conversations own (docs/conversations.md#sources): the SMTP endpoint, the mailbox poller (a real
IMAP server on loopback) and EngageLab's `route` events each hand their mail to `ingest.receive`; a reply counts once
whichever of them brings it, and reports still reach the bounce path."""

from __future__ import annotations

import copy
import json
from typing import Any

from sqlalchemy import select

from edm.conversations import sources
from edm.models.conversations import ConversationMessage
from edm.models.events import Event
from edm.tasks import stats
from tests import factories
from tests.integration.conversations.conftest import ConversationKit
from tests.integration.events.conftest import engagelab_headers
from tests.integration.test_mailbox_poller import ImapHandler, Mailbox, serving

TOKEN = "inbound-smtp-token-for-tests"
SAMPLES = "tests/fixtures/provider_samples/engagelab/response_route_inbound_reply.json"


async def smtp_service(ckit: ConversationKit, **options: Any) -> int:
    credentials = {"webhook_secrets": [TOKEN], **options.pop("credentials", {})}
    return await ckit.ekit.add_service("relay", "smtp", credentials=credentials, host="127.0.0.1", port=1, **options)


async def replied(ckit: ConversationKit) -> int:
    async with ckit.sessionmaker() as session:
        return int((await stats.task_stats(session, ckit.task_id))["replied"])


async def events(ckit: ConversationKit) -> list[Event]:
    async with ckit.sessionmaker() as session:
        return list(await session.scalars(select(Event).order_by(Event.id)))


async def test_the_smtp_endpoint_hands_a_reply_to_its_conversation(ckit: ConversationKit) -> None:
    service_id = await smtp_service(ckit)
    raw = ckit.mime("thunderbird_reply.eml")
    url = f"/webhooks/smtp/{service_id}/dsn"
    headers = {"Content-Type": "message/rfc822", "Authorization": f"Bearer {TOKEN}"}
    answer = await ckit.post(url, content=raw, headers=headers, params={"envelope_to": ckit.our_address()})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 1, "stored": 0, "duplicates": 0, "bad": 0, "queued": 1}
    [message] = await ckit.messages()
    assert (message.source, message.service_id, message.subtask_id) == ("smtp", service_id, ckit.subtasks[0].id)
    assert await replied(ckit) == 1
    again = await ckit.post(url, content=raw, headers=headers)
    assert again.json() == {"received": 1, "stored": 0, "duplicates": 0, "bad": 0, "queued": 1}
    assert await replied(ckit) == 1 and len(await ckit.messages()) == 1
    refused = await ckit.post(url, content=raw, headers={**headers, "Authorization": "Bearer wrong"})
    assert refused.status_code == 401
    empty = await ckit.post(url, content=b"  ", headers=headers)
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "malformed_payload"


async def test_the_mailbox_poller_sends_replies_to_conversations_and_reports_to_the_bounce_path(
    ckit: ConversationKit,
) -> None:
    box = Mailbox(
        [ckit.mime("thunderbird_reply.eml"), ckit.mime("dsn.eml", index=1), ckit.mime("unknown_address.eml")],
        user="u",
        password="p",
    )
    with serving(ImapHandler, box) as port:
        service_id = await smtp_service(
            ckit,
            credentials={"bounce_mailbox_password": "p"},
            bounce_mailbox={
                "protocol": "imap",
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "username": "u",
                "timeout_seconds": 5,
            },
        )
        vault = factories.vault_for(ckit.ekit.dkit.settings)
        assert await sources.poll_mailboxes(ckit.sessionmaker, vault) == 3
        assert box.seen == {0, 1, 2}, "each message is marked seen once stored"
        assert await sources.poll_mailboxes(ckit.sessionmaker, vault) == 0
    [message] = await ckit.messages()
    assert (message.source, message.service_id) == ("imap", service_id)
    assert await replied(ckit) == 1
    [unrouted] = await ckit.unrouted()
    assert (unrouted.source, unrouted.reason) == ("imap", "unknown_sender")
    bounces = [e for e in await events(ckit) if e.source == "dsn"]
    assert len(bounces) == 1 and bounces[0].event_type == "hard_bounced"
    assert (await ckit.ekit.apply()).matched == 1
    assert (await ckit.subtask(1)).delivery_state == "hard_bounced"


def route_payload(ckit: ConversationKit) -> dict[str, Any]:
    with open(SAMPLES, encoding="utf-8") as handle:
        document: dict[str, Any] = json.load(handle)
    document = copy.deepcopy(document)
    data = document["response"]["response_data"]
    raw = ckit.mime("thunderbird_reply.eml").decode()
    data["raw_message"] = raw
    data["x_mx_rcptto"] = ckit.our_address()
    document["to"] = ckit.our_address()
    return document


async def test_an_engagelab_route_event_becomes_a_conversation_message_counted_once(ckit: ConversationKit) -> None:
    document = route_payload(ckit)
    body = json.dumps(document).encode()
    answer = await ckit.post("/webhooks/engagelab", content=body, headers=engagelab_headers())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 1, "stored": 0, "duplicates": 0, "bad": 0, "queued": 1}
    [message] = await ckit.messages()
    assert (message.source, message.service_id) == ("engagelab", ckit.ekit.service_ids["engagelab"])
    assert message.subtask_id == ckit.subtasks[0].id
    # No `route` event waits in the event store: the reply is recorded once, by conversations.
    kinds = [(e.source, e.event_type) for e in await events(ckit) if e.event_type == "replied"]
    assert kinds == [("inbound", "replied")]
    assert await replied(ckit) == 1
    # A provider retry, and the same mail through the SMTP endpoint: nothing new.
    retry = await ckit.post("/webhooks/engagelab", content=body, headers=engagelab_headers())
    assert retry.json()["queued"] == 1 and len(await ckit.messages()) == 1
    service_id = await smtp_service(ckit)
    smtp = await ckit.post(
        f"/webhooks/smtp/{service_id}/dsn",
        content=ckit.mime("thunderbird_reply.eml"),
        headers={"Content-Type": "message/rfc822", "Authorization": f"Bearer {TOKEN}"},
    )
    assert smtp.json()["queued"] == 1
    async with ckit.sessionmaker() as session:
        assert len((await session.scalars(select(ConversationMessage))).all()) == 1
    assert await replied(ckit) == 1
    await ckit.ekit.apply()
    assert await replied(ckit) == 1


async def test_an_engagelab_route_without_raw_message_is_rebuilt_from_its_fields(ckit: ConversationKit) -> None:
    document = route_payload(ckit)
    data = document["response"]["response_data"]
    del data["raw_message"]
    data["reference"] = f"<{ckit.message_id()}>"
    data["headers"]["Message-ID"] = "<rebuilt-1@example.org>"
    body = json.dumps(document).encode()
    answer = await ckit.post("/webhooks/engagelab", content=body, headers=engagelab_headers())
    assert answer.status_code == 200 and answer.json()["queued"] == 1, answer.text
    [message] = await ckit.messages()
    assert message.message_id == "rebuilt-1@example.org" and message.subtask_id == ckit.subtasks[0].id
    assert message.text_body is not None and "call me" in message.text_body
    assert await replied(ckit) == 1


async def test_postmark_inbound_on_its_event_url_is_a_reply_counted_once(ckit: ConversationKit) -> None:
    """Postmark's inbound feature pointed at the event URL: the message (its RawEmail here) threads to the SubTask it
    answers; the one `replied` event is conversations' (source `inbound`), matched and counted once."""
    service_id = await ckit.ekit.add_service(
        "pm", "postmark", credentials={"server_token": "t", "webhook_secrets": ["pm-token-for-tests"]}
    )
    record = {
        "FromFull": {"Email": ckit.their_address(), "Name": ""},
        "OriginalRecipient": ckit.our_address(),
        "MessageID": "5d6e7f80-postmark-inbound",
        "Headers": [],
        "RawEmail": ckit.mime("thunderbird_reply.eml").decode(),
    }
    headers = {"Content-Type": "application/json", "X-Webhook-Token": "pm-token-for-tests"}
    body = json.dumps(record).encode()
    answer = await ckit.post(f"/webhooks/postmark/{service_id}", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 1, "stored": 0, "duplicates": 0, "bad": 0, "queued": 1}
    [message] = await ckit.messages()
    assert (message.source, message.service_id, message.subtask_id) == ("postmark", service_id, ckit.subtasks[0].id)
    kinds = [(e.source, e.event_type, e.match_status) for e in await events(ckit) if e.event_type == "replied"]
    assert kinds == [("inbound", "replied", "matched")]
    assert await replied(ckit) == 1
    retry = await ckit.post(f"/webhooks/postmark/{service_id}", content=body, headers=headers)
    assert retry.json() == {"received": 1, "stored": 0, "duplicates": 0, "bad": 0, "queued": 1}
    await ckit.ekit.apply()
    assert await replied(ckit) == 1 and len(await ckit.messages()) == 1
