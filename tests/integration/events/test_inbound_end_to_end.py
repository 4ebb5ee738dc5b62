"""Inbound mail end to end: each provider's fixture posted to its inbound URL as the provider posts it, queued, and
handled by the worker's `inbound` job through the real `edm.conversations.ingest.receive`, into conversations, once
per (user, Message-ID), however often the provider retries; mail to an address no user's sender owns is kept for
admins (`unrouted_inbound`). SES, Postmark and Brevo inbound mail posted to the provider's event URL instead goes
the same way, read by the same parsers, and leaves no event behind."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.db.session import unit_of_work
from edm.models.conversations import ConversationMessage, MailBlob, UnroutedInbound
from edm.models.events import Event
from edm.providers import ses as ses_provider
from edm.providers.inbound_webhook import REBUILT_HEADER
from tests import factories
from tests.helpers import drain_inbound, settings_for
from tests.unit.providers.inbound_support import (
    MAILGUN_KEY,
    SNS,
    SNS_CERT_URL,
    SNS_TOPIC,
    basic,
    fixture_json,
    form_field,
    mailgun_resigned,
    posted,
    ses_envelope,
    ses_raw,
    sns_certificate,
    sns_signed,
)

DOMAIN = "reply.example.com"
SENDGRID_TOKEN = "sg-inbound-token-1234"
POSTMARK_SECRET = "postmark:pm-inbound-pass"
BREVO_TOKEN = "brevo-inbound-token"


@dataclass
class Kit:
    client: httpx.AsyncClient
    sessionmaker: async_sessionmaker[AsyncSession]
    ids: dict[str, int]
    alice: int

    async def post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """Post as the provider does, then let the `inbound` job handle what the request queued."""
        response = await self.client.post(path, content=content, headers=headers)
        await drain_inbound(self.sessionmaker)
        return response

    async def inbound(self, message_id: str) -> list[ConversationMessage]:
        async with self.sessionmaker() as session:
            rows = await session.scalars(
                select(ConversationMessage).where(
                    ConversationMessage.direction == "inbound", ConversationMessage.message_id == message_id
                )
            )
            return list(rows)

    async def unrouted(self, message_id: str) -> list[UnroutedInbound]:
        async with self.sessionmaker() as session:
            return list(await session.scalars(select(UnroutedInbound).where(UnroutedInbound.message_id == message_id)))

    async def events(self) -> list[Event]:
        async with self.sessionmaker() as session:
            return list(await session.scalars(select(Event).order_by(Event.id)))

    async def count(self, model: Any) -> int:
        async with self.sessionmaker() as session:
            return len((await session.scalars(select(model.id))).all())

    async def blob(self, blob_id: int | None) -> MailBlob | None:
        async with self.sessionmaker() as session:
            return None if blob_id is None else await session.get(MailBlob, blob_id)


@pytest.fixture
async def kit(db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[Kit]:
    """Alice owns the sender `reply-alice`; every service receives for reply.example.com. Nobody owns `reply-bob`."""
    ses_provider.clear_certificate_cache()
    settings = settings_for(db_url)
    ids: dict[str, int] = {}
    async with unit_of_work(sessionmaker) as session:
        alice = await factories.user(session, "alice", credit=100)
        await factories.sender(session, alice, "reply-alice")
        for provider, credentials, options in (
            ("sendgrid", {"api_key": "SG.x", "webhook_secrets": [SENDGRID_TOKEN]}, {}),
            ("mailgun", {"api_key": "key-x", "webhook_secrets": [MAILGUN_KEY]}, {}),
            ("postmark", {"server_token": "t", "webhook_secrets": [POSTMARK_SECRET]}, {}),
            ("brevo", {"api_key": "k", "webhook_secrets": [BREVO_TOKEN]}, {}),
            (
                "ses",
                {"access_key_id": "AKIA", "secret_access_key": "s"},
                {"region": "us-east-1", "sns_topic_arns": [SNS_TOPIC]},
            ),
        ):
            ids[provider] = await factories.service(
                session,
                settings,
                f"{provider}-in",
                provider=provider,
                credentials=credentials,
                options=options,
                domain=DOMAIN,
                map_to=[alice],
            )

    def serve(request: httpx.Request) -> httpx.Response:
        return (
            httpx.Response(200, content=sns_certificate()) if str(request.url) == SNS_CERT_URL else httpx.Response(404)
        )

    app = create_app(settings, engine=engine, outbound_transport=httpx.MockTransport(serve))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edm.test") as client:
            yield Kit(client, sessionmaker, ids, alice)
    ses_provider.clear_certificate_cache()


def _post(provider: str, name: str) -> tuple[str, dict[str, str], Any]:
    """(path, headers, body maker): a maker, so that each retry of Mailgun's gets a fresh single-use token."""
    headers, body = posted(name)
    if provider == "sendgrid":
        return f"/webhooks/sendgrid/inbound?token={SENDGRID_TOKEN}", headers, lambda: body
    if provider == "mailgun":
        suffix = "/mime" if "mime" in name else ""
        return f"/webhooks/mailgun/inbound{suffix}", headers, lambda: mailgun_resigned(body)
    if provider == "postmark":
        return "/webhooks/postmark/inbound", {**headers, **basic(*POSTMARK_SECRET.split(":"))}, lambda: body
    if provider == "brevo":
        return "/webhooks/brevo/inbound", {**headers, "X-Webhook-Token": BREVO_TOKEN}, lambda: body
    signed = sns_signed(ses_envelope())
    return "/webhooks/ses/inbound", SNS, lambda: signed


# provider, fixture, the reply's Message-ID (stored without angle brackets), the raw bytes when the provider posted
# the message as received (else it was rebuilt), messages in the request
CASES = [
    ("sendgrid", "sendgrid_parsed_attachment.http", "CAF4reply-sendgrid-1@mail.example.org", None, 1),
    ("sendgrid", "sendgrid_raw_chinese.http", "20260707100500.zh1@smtp.example.cn", "email", 1),
    ("mailgun", "mailgun_parsed_attachment.http", "mg-reply-7f3a@mail.example.net", None, 1),
    ("mailgun", "mailgun_mime.http", "mg-mime-0001@mail.example.net", "body-mime", 1),
    ("postmark", "postmark_inbound.json", "CAKpm-reply-zh-42@mail.example.cn", None, 1),
    ("brevo", "brevo_inbound.json", "CAGbrevo-reply-1@mail.example.org", None, 3),
    ("ses", "ses_received_sns.json", "ses-reply-grace-1@mail.example.org", "ses", 1),
]


@pytest.mark.parametrize(("provider", "name", "message_id", "raw_from", "count"), CASES)
async def test_a_reply_is_stored_once_for_the_user_whatever_the_retries(
    kit: Kit, provider: str, name: str, message_id: str, raw_from: str | None, count: int
) -> None:
    path, headers, body = _post(provider, name)
    for _ in range(2):  # the provider's retry adds nothing
        response = await kit.post(path, content=body(), headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"received": count, "queued": count}
    [stored] = await kit.inbound(message_id)
    assert (stored.user_id, stored.source, stored.service_id) == (kit.alice, provider, kit.ids[provider])
    assert stored.to_address.lower() == f"reply-alice@{DOMAIN}"
    blob = await kit.blob(stored.blob_id)
    assert blob is not None and blob.size == len(blob.data)
    if raw_from is not None:  # kept byte for byte as the provider posted it
        assert blob.sha256 == hashlib.sha256(_raw(name, raw_from)).hexdigest() == hashlib.sha256(blob.data).hexdigest()
    else:  # rebuilt from the provider's fields, and marked so
        assert f"{REBUILT_HEADER}: {provider}".encode() in blob.data
    assert await kit.unrouted(message_id) == [], "Alice's mail is not kept for the admins too"


def _raw(name: str, field: str) -> bytes:
    if field == "ses":
        return ses_raw()
    body = posted(name)[1]
    if name.endswith(".http") and posted(name)[0]["Content-Type"].startswith("application/x-www-form-urlencoded"):
        values = dict(urllib.parse.parse_qsl(body.decode("latin-1"), encoding="latin-1"))
        return values[field].encode("latin-1")
    return form_field(body, field)


async def test_mail_to_an_address_nobody_owns_is_kept_for_admins(kit: Kit) -> None:
    """No user's sender is `nobody`, and the mail answers none of our Message-IDs: kept unrouted, once."""
    record = fixture_json("postmark_inbound.json")
    record["OriginalRecipient"] = f"nobody@{DOMAIN}"
    record["ToFull"] = [{"Email": f"nobody@{DOMAIN}", "Name": "", "MailboxHash": ""}]
    record["Headers"] = [
        {"Name": "Message-ID", "Value": "<to-nobody-1@mail.example.cn>"} if h["Name"] == "Message-ID" else h
        for h in record["Headers"]
        if h["Name"] not in ("In-Reply-To", "References")
    ]
    path, headers, _ = _post("postmark", "postmark_inbound.json")
    for _ in range(2):
        response = await kit.post(path, content=json.dumps(record).encode(), headers=headers)
        assert response.status_code == 200, response.text
    [unrouted] = await kit.unrouted("to-nobody-1@mail.example.cn")
    assert (unrouted.source, unrouted.service_id) == ("postmark", kit.ids["postmark"])
    assert (unrouted.to_address, unrouted.reason) == (f"nobody@{DOMAIN}", "unknown_sender")
    blob = await kit.blob(unrouted.blob_id)
    assert blob is not None and b"Message-ID: <to-nobody-1@mail.example.cn>" in blob.data
    assert await kit.inbound("to-nobody-1@mail.example.cn") == []


async def test_brevo_items_are_stored_each_for_its_recipient(kit: Kit) -> None:
    path, headers, body = _post("brevo", "brevo_inbound.json")
    response = await kit.post(path, content=body(), headers=headers)
    assert (response.status_code, response.json()) == (200, {"received": 3, "queued": 3})
    [reply] = await kit.inbound("CAGbrevo-reply-1@mail.example.org")
    assert reply.user_id == kit.alice
    assert reply.in_reply_to == "00000000-0000-4000-8000-000000000001@mail.example.com"
    [to_alice] = await kit.inbound("new-thread-77@mail.example.net")
    assert (to_alice.user_id, to_alice.to_address) == (kit.alice, f"reply-alice@{DOMAIN}")
    [to_bob] = await kit.unrouted("new-thread-77@mail.example.net")  # the same item was also for reply-bob
    assert (to_bob.to_address, to_bob.reason, to_bob.source) == (f"reply-bob@{DOMAIN}", "unknown_sender", "brevo")


# --------------------------------------------------------------------------------------------------------
# Inbound mail posted to the provider's event URL
# --------------------------------------------------------------------------------------------------------

# provider, fixture, the Message-IDs stored for Alice, mails kept unrouted
EVENT_URL_CASES = [
    ("postmark", "postmark_inbound.json", ["CAKpm-reply-zh-42@mail.example.cn"], 0),
    ("brevo", "brevo_inbound.json", ["CAGbrevo-reply-1@mail.example.org", "new-thread-77@mail.example.net"], 1),
    ("ses", "ses_received_sns.json", ["ses-reply-grace-1@mail.example.org"], 0),
]


@pytest.mark.parametrize(("provider", "name", "message_ids", "unrouted"), EVENT_URL_CASES)
async def test_inbound_mail_posted_to_the_event_url_goes_to_conversations(
    kit: Kit, provider: str, name: str, message_ids: list[str], unrouted: int
) -> None:
    """An operator who pointed the provider's inbound feature at the event URL still gets conversations: the mail is
    stored as the `…/inbound` URL stores it (the same mail through that URL afterwards adds nothing), and no
    `replied` event waits unmatched in the event store."""
    inbound_path, headers, body = _post(provider, name)
    event_path = inbound_path.split("?")[0].removesuffix("/inbound")
    count = len(message_ids) + unrouted
    first = await kit.post(event_path, content=body(), headers=headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"received": count, "stored": 0, "duplicates": 0, "bad": 0, "queued": count}
    retry = await kit.post(event_path, content=body(), headers=headers)
    assert retry.json() == {"received": count, "stored": 0, "duplicates": 0, "bad": 0, "queued": count}
    for message_id in message_ids:
        [stored] = await kit.inbound(message_id)
        assert (stored.user_id, stored.source, stored.service_id) == (kit.alice, provider, kit.ids[provider])
        assert stored.to_address == f"reply-alice@{DOMAIN}"
        if provider == "ses":
            blob = await kit.blob(stored.blob_id)
            assert blob is not None and blob.data == ses_raw()
    assert await kit.count(UnroutedInbound) == unrouted
    assert await kit.events() == []
    counts = (await kit.count(ConversationMessage), await kit.count(MailBlob))
    assert counts == (len(message_ids), count)
    again = await kit.post(inbound_path, content=body(), headers=headers)
    assert (again.status_code, again.json()) == (200, {"received": count, "queued": count})
    assert (await kit.count(ConversationMessage), await kit.count(MailBlob)) == counts


async def test_inbound_mail_on_the_event_url_that_cannot_be_read_is_kept_as_a_bad_element(kit: Kit) -> None:
    """What the `…/inbound` URL refuses with 400 or 413 is, on the event URL, one bad element with the reason (200:
    the provider does not retry it forever), never a `replied` event; the rest of the batch is taken."""
    s3 = ses_envelope(content=None, receipt={"recipients": [f"reply-alice@{DOMAIN}"], "action": {"type": "S3"}})
    answer = await kit.post("/webhooks/ses", content=sns_signed(s3), headers=SNS)
    assert answer.json() == {"received": 1, "stored": 1, "duplicates": 0, "bad": 1, "queued": 0}
    items = fixture_json("brevo_inbound.json")["items"]
    broken = {**items[1], "MessageId": "<broken-1@mail.example.net>", "Headers": "not an object"}
    document = {"items": [items[0], broken]}
    path, headers, _ = _post("brevo", "brevo_inbound.json")
    answer = await kit.post(path.removesuffix("/inbound"), content=json.dumps(document).encode(), headers=headers)
    assert answer.json() == {"received": 2, "stored": 1, "duplicates": 0, "bad": 1, "queued": 1}
    events = await kit.events()
    assert [(e.source, e.event_type, e.match_reason) for e in events] == [
        ("ses", "unknown", "bad_element"),
        ("brevo", "unknown", "bad_element"),
    ]
    assert "no_content" in (events[0].processing_error or "") and "S3" in (events[0].processing_error or "")
    assert "Headers is not an object" in (events[1].processing_error or "")
    [reply] = await kit.inbound("CAGbrevo-reply-1@mail.example.org")
    assert reply.source == "brevo"
    assert await kit.inbound("broken-1@mail.example.net") == []
