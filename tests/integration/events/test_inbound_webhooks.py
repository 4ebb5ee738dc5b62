"""The inbound-mail routes, `POST /webhooks/{provider}[/{service_id}]/inbound`, through the ASGI app, then the
worker's `inbound` job (`edm.conversations.inbound_queue.drain`, which calls the real `ingest.receive`): each
provider's fixture, authenticated as that provider authenticates, is queued by the request (the whole request in one
transaction) and then stored as mail of the verifying service (a conversation message when it names Alice's sender,
kept unrouted otherwise), each message once (the job's batch is one transaction, each message in a savepoint of
its own); every refusal (401 unverified, 413 too large, 400 malformed, 404 not an endpoint) stores nothing.

What was stored is read back from the database: conversation_messages, conversations, unrouted_inbound and
mail_blobs (the bytes handed over), webhook_nonces (Mailgun's token) and events. On PostgreSQL every row a request
wrote carries the id of the transaction that wrote it (`xmin`): one request, one id.
tests/integration/events/test_inbound_end_to_end.py checks retries and the threading per provider."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.db.dialect import is_postgresql
from edm.db.session import unit_of_work
from edm.email_services import service as services
from edm.providers import ses as ses_provider
from edm.settings import Settings
from tests import factories
from tests.helpers import drain_inbound, settings_for
from tests.integration.events.conftest import SENDGRID_PUBLIC
from tests.unit.providers.inbound_support import (
    MAILGUN_KEY,
    OUR_ID,
    SNS,
    SNS_CERT_URL,
    SNS_TOPIC,
    basic,
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
BODY_LIMIT = 200_000
MESSAGE_LIMIT = 100_000
# The tables an inbound request may write, each with the column that names a row.
TABLES = {
    "inbound_queue": "id",
    "conversation_messages": "id",
    "conversations": "id",
    "unrouted_inbound": "id",
    "mail_blobs": "id",
    "webhook_nonces": "nonce",
    "events": "id",
}

Snapshot = dict[str, dict[str, str | None]]  # table -> row key -> the writing transaction (PostgreSQL), else None


@dataclass(frozen=True)
class StoredMail:
    """One stored mail: a conversation message (`kind` "message") or an unrouted one, with its blob's bytes."""

    kind: str
    message_id: str
    source: str
    service_id: int | None
    from_address: str | None
    to_address: str | None
    raw: bytes
    received_at: dt.datetime


@dataclass
class Written:
    """The rows one request inserted or updated, per table, and the transactions that wrote them."""

    rows: dict[str, set[str]]
    transactions: set[str]  # empty on SQLite

    def count(self, table: str) -> int:
        return len(self.rows[table])


@dataclass
class Kit:
    client: httpx.AsyncClient
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    ids: dict[str, int]
    alice: int
    db_url: str
    outbound: list[str]
    pages: dict[str, bytes]

    async def post(self, path: str, body: bytes, headers: dict[str, str], **query: str) -> httpx.Response:
        return await self.client.post(path, content=body, headers=headers, params=query)

    async def accept(self, path: str, body: bytes, headers: dict[str, str], **query: str) -> httpx.Response:
        """Post, then let the `inbound` job handle what the request queued."""
        response = await self.post(path, body, headers, **query)
        await drain_inbound(self.sessionmaker, self.settings)
        return response

    async def snapshot(self) -> Snapshot:
        async with self.sessionmaker() as session:
            xmin = "xmin::text" if is_postgresql(session) else "NULL"
            return {
                table: {str(key): tx for key, tx in await session.execute(text(f"SELECT {key}, {xmin} FROM {table}"))}
                for table, key in TABLES.items()
            }

    async def written(self, before: Snapshot) -> Written:
        after = await self.snapshot()
        rows: dict[str, set[str]] = {}
        transactions: set[str] = set()
        for table, now in after.items():
            changed = {key for key, tx in now.items() if key not in before[table] or tx != before[table][key]}
            rows[table] = changed
            transactions |= {tx for key, tx in now.items() if key in changed and tx is not None}
        return Written(rows, transactions)

    async def mails(self, written: Written | None = None) -> list[StoredMail]:
        """The mails stored (by the request that wrote `written`, else all), messages first."""
        found: list[StoredMail] = []
        async with self.sessionmaker() as session:
            for kind, table, extra in (
                ("message", "conversation_messages", "AND m.direction = 'inbound'"),
                ("unrouted", "unrouted_inbound", ""),
            ):
                rows = await session.execute(
                    text(
                        "SELECT m.id, m.message_id, m.source, m.service_id, m.from_address, m.to_address, b.data, "
                        "m.received_at "
                        f"FROM {table} m JOIN mail_blobs b ON b.id = m.blob_id WHERE 1 = 1 {extra} ORDER BY m.id"
                    )
                )
                for row_id, *values, raw, received_at in rows:
                    if written is None or str(row_id) in written.rows[table]:
                        found.append(StoredMail(kind, *values, raw=bytes(raw), received_at=received_at))
        return found

    async def nothing_stored(self) -> None:
        """No mail, conversation, blob, token or event in the database."""
        counts = {table: len(rows) for table, rows in (await self.snapshot()).items()}
        assert counts == dict.fromkeys(TABLES, 0)


@pytest.fixture
async def kit(db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[Kit]:
    """Alice owns the sender `reply-alice` at reply.example.com, the domain of every service; nobody owns
    `reply-bob`."""
    ses_provider.clear_certificate_cache()
    settings = settings_for(db_url, inbound_max_bytes=BODY_LIMIT, inbound_message_max_bytes=MESSAGE_LIMIT)
    ids: dict[str, int] = {}
    async with unit_of_work(sessionmaker) as session:
        alice = await factories.user(session, "alice", credit=100)
        await factories.sender(session, alice, "reply-alice")
        for provider, name, credentials, options in (
            ("sendgrid", "sg", {"api_key": "SG.x", "webhook_secrets": [SENDGRID_PUBLIC, SENDGRID_TOKEN]}, {}),
            ("mailgun", "mg", {"api_key": "key-x", "webhook_secrets": [MAILGUN_KEY]}, {}),
            ("postmark", "pm", {"server_token": "t", "webhook_secrets": [POSTMARK_SECRET]}, {}),
            ("brevo", "br", {"api_key": "k", "webhook_secrets": [BREVO_TOKEN]}, {}),
            (
                "ses",
                "ses",
                {"access_key_id": "AKIA", "secret_access_key": "s"},
                {"region": "us-east-1", "sns_topic_arns": [SNS_TOPIC]},
            ),
        ):
            ids[provider] = await factories.service(
                session, settings, name, provider=provider, credentials=credentials, options=options, domain=DOMAIN
            )
        ids["sendgrid_event_key_only"] = await factories.service(
            session,
            settings,
            "sg2",
            provider="sendgrid",
            credentials={"api_key": "x", "webhook_secrets": [SENDGRID_PUBLIC]},
        )
    outbound: list[str] = []
    pages = {SNS_CERT_URL: sns_certificate()}

    def serve(request: httpx.Request) -> httpx.Response:
        outbound.append(str(request.url))
        page = pages.get(str(request.url))
        return httpx.Response(200, content=page) if page is not None else httpx.Response(404)

    app = create_app(settings, engine=engine, outbound_transport=httpx.MockTransport(serve))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edm.test") as client:
            yield Kit(client, settings, sessionmaker, ids, alice, db_url, outbound, pages)
    ses_provider.clear_certificate_cache()


def sendgrid(name: str = "sendgrid_parsed_attachment.http") -> tuple[bytes, dict[str, str]]:
    headers, body = posted(name)
    return body, headers


def signed_ses(**changes: Any) -> bytes:
    return sns_signed(ses_envelope(**changes))


def in_one_transaction(written: Written, db_url: str) -> None:
    """Every row the request wrote, in one transaction (PostgreSQL's `xmin`; SQLite keeps no such id)."""
    assert any(written.rows.values())
    assert len(written.transactions) == (1 if db_url.startswith("postgresql") else 0), written.transactions


# --------------------------------------------------------------------------------------------------------
# Accepted
# --------------------------------------------------------------------------------------------------------


async def test_each_provider_hands_its_mail_to_conversations(kit: Kit) -> None:
    ids = kit.ids
    mg_headers, mg_body = posted("mailgun_parsed_attachment.http")
    mime_headers, mime_body = posted("mailgun_mime.http")
    pm_headers, pm_body = posted("postmark_inbound.json")
    br_headers, br_body = posted("brevo_inbound.json")
    sg_body, sg_headers = sendgrid("sendgrid_raw_chinese.http")
    # provider, path, body, headers, query, (messages stored for Alice, kept unrouted)
    cases = [
        (
            "sendgrid",
            f"/webhooks/sendgrid/{ids['sendgrid']}/inbound",
            sg_body,
            sg_headers,
            {"token": SENDGRID_TOKEN},
            (1, 0),
        ),
        ("mailgun", "/webhooks/mailgun/inbound", mailgun_resigned(mg_body), mg_headers, {}, (1, 0)),
        (
            "mailgun",
            f"/webhooks/mailgun/{ids['mailgun']}/inbound/mime",
            mailgun_resigned(mime_body),
            mime_headers,
            {},
            (1, 0),
        ),
        (
            "postmark",
            "/webhooks/postmark/inbound",
            pm_body,
            {**pm_headers, **basic(*POSTMARK_SECRET.split(":"))},
            {},
            (1, 0),
        ),
        (
            "brevo",
            f"/webhooks/brevo/{ids['brevo']}/inbound",
            br_body,
            {**br_headers, "X-Webhook-Token": BREVO_TOKEN},
            {},
            (2, 1),  # the second item went to reply-alice and reply-bob
        ),
        ("ses", "/webhooks/ses/inbound", signed_ses(), SNS, {}, (1, 0)),
    ]
    stored: dict[str, list[StoredMail]] = {}
    for provider, path, body, headers, query, (messages, unrouted) in cases:
        before = await kit.snapshot()
        response = await kit.post(path, body, headers, **query)
        assert response.status_code == 200, (path, response.text)
        assert response.json() == {"received": messages + unrouted, "queued": messages + unrouted}, path
        accepted = await kit.written(before)
        assert accepted.count("inbound_queue") == messages + unrouted, path
        assert {table for table, rows in accepted.rows.items() if rows} <= {"inbound_queue", "webhook_nonces"}
        in_one_transaction(accepted, kit.db_url)
        counts = await drain_inbound(kit.sessionmaker, kit.settings)
        assert (counts.handled, counts.failed) == (messages + unrouted, 0), path
        written = await kit.written(before)
        assert (await kit.snapshot())["inbound_queue"] == {}, "each queued row deleted once handled"
        mails = await kit.mails(written)
        assert [m.kind for m in mails] == ["message"] * messages + ["unrouted"] * unrouted, path
        assert {(m.source, m.service_id) for m in mails} == {(provider, ids[provider])}, path
        assert written.count("mail_blobs") == len(mails), "each mail's bytes stored once"
        assert written.count("events") == 0, "no event: none of these answers a send of ours"
        assert written.count("webhook_nonces") == (1 if provider == "mailgun" else 0), path
        assert len({m.received_at for m in mails}) == 1, path
        stored.setdefault(path, []).extend(mails)
    every = await kit.mails()
    assert len(every) == 8 and len({(m.kind, m.message_id, m.to_address) for m in every}) == 8, "each stored once"
    assert {m.to_address for m in every if m.kind == "message"} == {f"reply-alice@{DOMAIN}"}
    assert [m.to_address for m in every if m.kind == "unrouted"] == [f"reply-bob@{DOMAIN}"]
    [sendgrid_raw] = stored[f"/webhooks/sendgrid/{ids['sendgrid']}/inbound"]
    assert sendgrid_raw.raw.startswith(b"Received: from smtp.example.cn")  # SendGrid raw, untouched
    [ses_mail] = stored["/webhooks/ses/inbound"]
    assert ses_mail.raw == ses_raw()
    async with kit.sessionmaker() as session:
        conversations = (
            await session.execute(
                text("SELECT their_address, message_count FROM conversations WHERE user_id = :u"), {"u": kit.alice}
            )
        ).all()
    assert {their for their, _ in conversations} == {m.from_address for m in every if m.kind == "message"}
    assert sum(count for _, count in conversations) == sum(m.kind == "message" for m in every) == 7
    assert SNS_CERT_URL in kit.outbound


async def test_the_sendgrid_parsed_mode_posts_through_basic_credentials(kit: Kit) -> None:
    async with unit_of_work(kit.sessionmaker) as session:
        await services.update_service(
            session,
            factories.vault_for(kit.settings),
            kit.ids["sendgrid"],
            values={},
            credentials={"webhook_secrets": [SENDGRID_PUBLIC, "parse:Basic-Pass-99"]},
            fake_allowed=True,
        )
    body, headers = sendgrid()
    path = f"/webhooks/sendgrid/{kit.ids['sendgrid']}/inbound"
    response = await kit.accept(path, body, {**headers, **basic("parse", "Basic-Pass-99")})
    assert response.status_code == 200, response.text
    [mail] = await kit.mails()
    assert (mail.kind, mail.source, mail.service_id) == ("message", "sendgrid", kit.ids["sendgrid"])
    assert f"In-Reply-To: {OUR_ID}".encode() in mail.raw


async def test_a_mailgun_token_is_single_use(kit: Kit) -> None:
    headers, body = posted("mailgun_mime.http")
    body = mailgun_resigned(body)
    before = await kit.snapshot()
    first = await kit.post("/webhooks/mailgun/inbound/mime", body, headers)
    assert first.status_code == 200, first.text
    written = await kit.written(before)
    assert (written.count("webhook_nonces"), written.count("inbound_queue")) == (1, 1)
    in_one_transaction(written, kit.db_url)  # the token with the mail: a retry after a failure is no replay
    await drain_inbound(kit.sessionmaker, kit.settings)
    before = await kit.snapshot()
    again = await kit.accept("/webhooks/mailgun/inbound/mime", body, headers)
    assert again.status_code == 401 and "replay" in again.json()["error"]["message"]
    assert await kit.snapshot() == before
    assert len(await kit.mails()) == 1


async def test_sns_control_messages_on_the_inbound_url(kit: Kit) -> None:
    confirm = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=t"
    kit.pages[confirm] = b"<ConfirmSubscriptionResponse/>"
    subscription = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "0d1e",
        "Token": "t",
        "TopicArn": SNS_TOPIC,
        "Message": "You have chosen to subscribe",
        "SubscribeURL": confirm,
        "Timestamp": "2026-07-07T08:00:00.000Z",
    }
    response = await kit.post(f"/webhooks/ses/{kit.ids['ses']}/inbound", sns_signed(subscription), SNS)
    assert (response.status_code, response.json()) == (200, {"control": "subscription_confirmation"})
    assert confirm in kit.outbound
    event = await kit.post("/webhooks/ses/inbound", signed_ses(notificationType=None, eventType="Delivery"), SNS)
    assert (event.status_code, event.json()) == (200, {"control": "not_inbound"})
    s3 = signed_ses(content=None, receipt={"recipients": [f"reply-alice@{DOMAIN}"], "action": {"type": "S3"}})
    refused = await kit.post("/webhooks/ses/inbound", s3, SNS)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_content"
    await kit.nothing_stored()


async def test_probes_answer_200(kit: Kit) -> None:
    for path in (
        "/webhooks/postmark/inbound",
        f"/webhooks/ses/{kit.ids['ses']}/inbound",
        "/webhooks/mailgun/inbound/mime",
    ):
        response = await kit.client.get(path)
        assert (response.status_code, response.content) == (200, b""), path
    await kit.nothing_stored()


# --------------------------------------------------------------------------------------------------------
# Refused: nothing stored
# --------------------------------------------------------------------------------------------------------


async def test_unverified_posts_get_the_uniform_401(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    ids = kit.ids
    caplog.set_level(logging.WARNING, logger="edm.webhooks")
    sg_body, sg_headers = sendgrid()
    mg_headers, mg_body = posted("mailgun_parsed_attachment.http")
    pm_headers, pm_body = posted("postmark_inbound.json")
    br_headers, br_body = posted("brevo_inbound.json")
    wrong_topic = ses_envelope()
    wrong_topic["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:other"
    cases = [
        ("sendgrid: no token", "/webhooks/sendgrid/inbound", sg_body, sg_headers, {}, "invalid_signature"),
        ("sendgrid: wrong token", "/webhooks/sendgrid/inbound", sg_body, sg_headers, {"token": "nope-nope"}, None),
        (
            "sendgrid: the event key as token",
            "/webhooks/sendgrid/inbound",
            sg_body,
            sg_headers,
            {"token": SENDGRID_PUBLIC},
            None,
        ),
        (
            "sendgrid: a service with only its event key",
            f"/webhooks/sendgrid/{ids['sendgrid_event_key_only']}/inbound",
            sg_body,
            sg_headers,
            {"token": SENDGRID_PUBLIC},
            "webhook_secret_missing",
        ),
        (
            "sendgrid: another provider's service",
            f"/webhooks/sendgrid/{ids['postmark']}/inbound",
            sg_body,
            sg_headers,
            {"token": SENDGRID_TOKEN},
            "unknown_service",
        ),
        (
            "sendgrid: no such service",
            "/webhooks/sendgrid/987654321/inbound",
            sg_body,
            sg_headers,
            {"token": SENDGRID_TOKEN},
            "unknown_service",
        ),
        ("mailgun: stale signature", "/webhooks/mailgun/inbound", mg_body, mg_headers, {}, "invalid_signature"),
        (
            "mailgun: wrong key",
            "/webhooks/mailgun/inbound",
            mailgun_resigned(mg_body, key="other-key"),
            mg_headers,
            {},
            None,
        ),
        ("postmark: no credentials", "/webhooks/postmark/inbound", pm_body, pm_headers, {}, None),
        (
            "postmark: wrong password",
            "/webhooks/postmark/inbound",
            pm_body,
            {**pm_headers, **basic("postmark", "x")},
            {},
            None,
        ),
        (
            "brevo: wrong token",
            f"/webhooks/brevo/{ids['brevo']}/inbound",
            br_body,
            {**br_headers, "X-Webhook-Token": "x" * 20},
            {},
            None,
        ),
        ("ses: unsigned", "/webhooks/ses/inbound", posted("ses_received_sns.json")[1], SNS, {}, None),
        ("ses: topic not allowed", "/webhooks/ses/inbound", sns_signed(wrong_topic), SNS, {}, None),
    ]
    for what, path, body, headers, query, reason in cases:
        caplog.clear()
        response = await kit.post(path, body, headers, **query)
        assert response.status_code == 401, (what, response.text)
        error = response.json()["error"]
        assert (error["code"], error["message"]) == ("invalid_signature", "webhook signature missing or invalid"), what
        if reason:
            [record] = [r for r in caplog.records if r.getMessage() == "webhook.rejected"]
            assert record.reason == reason, what  # type: ignore[attr-defined]
    await kit.nothing_stored()


async def test_a_body_above_the_inbound_limit_is_refused_with_413_unread(kit: Kit) -> None:
    body, headers = sendgrid()
    big = body.replace(
        b"--xYzZY--",
        b'--xYzZY\r\nContent-Disposition: form-data; name="pad"\r\n\r\n' + b"x" * BODY_LIMIT + b"\r\n--xYzZY--",
    )
    response = await kit.post("/webhooks/sendgrid/inbound", big, headers, token=SENDGRID_TOKEN)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    await kit.nothing_stored()


async def test_a_message_above_the_message_limit_is_refused_with_413(kit: Kit) -> None:
    """The body fits (200 kB) but the rebuilt message would not (100 kB): nothing is stored, not even the other
    messages of the request."""
    headers, body = posted("brevo_inbound.json")
    body = body.replace(b"Is the *spring sale* on in stores too?", b"y" * (MESSAGE_LIMIT + 10))
    response = await kit.post("/webhooks/brevo/inbound", body, {**headers, "X-Webhook-Token": BREVO_TOKEN})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "message_too_large" and f"{MESSAGE_LIMIT}-byte limit" in error["message"]
    await kit.nothing_stored()


async def test_malformed_but_authentic_posts_get_400_saying_what_is_wrong(kit: Kit) -> None:
    auth = basic(*POSTMARK_SECRET.split(":"))
    cases = [
        ("/webhooks/postmark/inbound", b"{not json", {"Content-Type": "application/json", **auth}, "not valid JSON"),
        (
            "/webhooks/postmark/inbound",
            b'{"RecordType": "Delivery"}',
            {"Content-Type": "application/json", **auth},
            "events URL",
        ),
        (
            "/webhooks/brevo/inbound",
            b'{"items": [7]}',
            {"Content-Type": "application/json", "X-Webhook-Token": BREVO_TOKEN},
            "items[0]",
        ),
        (
            "/webhooks/sendgrid/inbound",
            b"{}",
            {"Content-Type": "application/json", "Authorization": f"Bearer {SENDGRID_TOKEN}"},
            "multipart/form-data",
        ),
    ]
    for path, body, headers, says in cases:
        response = await kit.post(path, body, headers)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "malformed_payload" and says in error["message"], (path, error)
    await kit.nothing_stored()


async def test_urls_that_are_no_inbound_endpoint(kit: Kit) -> None:
    auth = basic(*POSTMARK_SECRET.split(":"))
    pm_headers, pm_body = posted("postmark_inbound.json")
    not_a_number = await kit.post("/webhooks/postmark/abc/inbound", pm_body, {**pm_headers, **auth})
    assert (not_a_number.status_code, not_a_number.json()["error"]["code"]) == (404, "not_found")
    # Providers without an inbound endpoint are left to the event routes (EngageLab's replies are `route` events).
    engagelab = await kit.post("/webhooks/engagelab/inbound", b"{}", {"Content-Type": "application/json"})
    assert engagelab.status_code == 404
    await kit.nothing_stored()
