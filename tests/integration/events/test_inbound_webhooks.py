"""The inbound-mail routes, `POST /webhooks/{provider}[/{service_id}]/inbound`, through the ASGI app: each provider's
fixture, authenticated as that provider authenticates, reaches conversations as InboundMails of the verifying service,
all in one transaction; every refusal (401 unverified, 413 too large, 400 malformed, 404 not an endpoint) happens
before anything is handed over.

Conversations' `edm.conversations.ingest.receive` is replaced here by a recorder (put in `sys.modules`, where the
route imports it from), so these tests check the route's side of the contract whatever conversations does with the
mail; tests/integration/events/test_inbound_end_to_end.py checks the stored result."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
import types
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.db.session import unit_of_work
from edm.email_services import service as services
from edm.providers import ses as ses_provider
from edm.providers.inbound import InboundMail
from edm.settings import Settings
from tests import factories
from tests.helpers import settings_for
from tests.integration.events.conftest import SENDGRID_PUBLIC
from tests.unit.providers.inbound_support import (
    MAILGUN_KEY,
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

SENDGRID_TOKEN = "sg-inbound-token-1234"
POSTMARK_SECRET = "postmark:pm-inbound-pass"
BREVO_TOKEN = "brevo-inbound-token"
BODY_LIMIT = 200_000
MESSAGE_LIMIT = 100_000


@dataclasses.dataclass
class Handed:
    mail: InboundMail
    session: AsyncSession
    now: dt.datetime


@dataclasses.dataclass
class Kit:
    client: httpx.AsyncClient
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    ids: dict[str, int]
    handed: list[Handed]
    outbound: list[str]
    pages: dict[str, bytes]

    async def post(self, path: str, body: bytes, headers: dict[str, str], **query: str) -> httpx.Response:
        return await self.client.post(path, content=body, headers=headers, params=query)


@pytest.fixture
async def kit(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Kit]:
    handed: list[Handed] = []

    async def receive(session: AsyncSession, mail: InboundMail, *, now: dt.datetime) -> object:
        await session.execute(text("SELECT 1"))  # a live session of the request's transaction
        handed.append(Handed(mail, session, now))
        return object()

    recorder = types.ModuleType("edm.conversations.ingest")
    recorder.receive = receive  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edm.conversations.ingest", recorder)
    ses_provider.clear_certificate_cache()
    settings = settings_for(db_url, inbound_max_bytes=BODY_LIMIT, inbound_message_max_bytes=MESSAGE_LIMIT)
    ids: dict[str, int] = {}
    async with unit_of_work(sessionmaker) as session:
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
                session, settings, name, provider=provider, credentials=credentials, options=options
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
            yield Kit(client, settings, sessionmaker, ids, handed, outbound, pages)
    ses_provider.clear_certificate_cache()


def sendgrid(name: str = "sendgrid_parsed_attachment.http") -> tuple[bytes, dict[str, str]]:
    headers, body = posted(name)
    return body, headers


def signed_ses(**changes: Any) -> bytes:
    return sns_signed(ses_envelope(**changes))


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
    cases = [
        (
            "sendgrid",
            f"/webhooks/sendgrid/{ids['sendgrid']}/inbound",
            sg_body,
            sg_headers,
            {"token": SENDGRID_TOKEN},
            1,
        ),
        ("mailgun", "/webhooks/mailgun/inbound", mailgun_resigned(mg_body), mg_headers, {}, 1),
        (
            "mailgun",
            f"/webhooks/mailgun/{ids['mailgun']}/inbound/mime",
            mailgun_resigned(mime_body),
            mime_headers,
            {},
            1,
        ),
        (
            "postmark",
            "/webhooks/postmark/inbound",
            pm_body,
            {**pm_headers, **basic(*POSTMARK_SECRET.split(":"))},
            {},
            1,
        ),
        (
            "brevo",
            f"/webhooks/brevo/{ids['brevo']}/inbound",
            br_body,
            {**br_headers, "X-Webhook-Token": BREVO_TOKEN},
            {},
            3,
        ),
        ("ses", "/webhooks/ses/inbound", signed_ses(), SNS, {}, 1),
    ]
    for provider, path, body, headers, query, count in cases:
        before = len(kit.handed)
        response = await kit.post(path, body, headers, **query)
        assert response.status_code == 200, (path, response.text)
        assert response.json() == {"received": count}, path
        handed = kit.handed[before:]
        assert len(handed) == count, path
        assert {(h.mail.source, h.mail.service_id) for h in handed} == {(provider, ids[provider])}, path
        assert len({id(h.session) for h in handed}) == 1, "one transaction for the whole request"
    assert kit.handed[0].mail.raw.startswith(b"Received: from smtp.example.cn")  # SendGrid raw, untouched
    assert kit.handed[-1].mail.raw == ses_raw()
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
    response = await kit.post(path, body, {**headers, **basic("parse", "Basic-Pass-99")})
    assert response.status_code == 200, response.text
    [handed] = kit.handed
    assert b"In-Reply-To: <00000000-0000-4000-8000-000000000001@mail.example.com>" in handed.mail.raw


async def test_a_mailgun_token_is_single_use(kit: Kit) -> None:
    headers, body = posted("mailgun_mime.http")
    body = mailgun_resigned(body)
    first = await kit.post("/webhooks/mailgun/inbound/mime", body, headers)
    assert first.status_code == 200, first.text
    again = await kit.post("/webhooks/mailgun/inbound/mime", body, headers)
    assert again.status_code == 401 and "replay" in again.json()["error"]["message"]
    assert len(kit.handed) == 1


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
    s3 = signed_ses(content=None, receipt={"recipients": ["a@reply.example.com"], "action": {"type": "S3"}})
    refused = await kit.post("/webhooks/ses/inbound", s3, SNS)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_content"
    assert kit.handed == []


async def test_probes_answer_200(kit: Kit) -> None:
    for path in (
        "/webhooks/postmark/inbound",
        f"/webhooks/ses/{kit.ids['ses']}/inbound",
        "/webhooks/mailgun/inbound/mime",
    ):
        response = await kit.client.get(path)
        assert (response.status_code, response.content) == (200, b""), path


# --------------------------------------------------------------------------------------------------------
# Refused, before anything is handed over
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
    assert kit.handed == []


async def test_a_body_above_the_inbound_limit_is_refused_with_413_unread(kit: Kit) -> None:
    body, headers = sendgrid()
    big = body.replace(
        b"--xYzZY--",
        b'--xYzZY\r\nContent-Disposition: form-data; name="pad"\r\n\r\n' + b"x" * BODY_LIMIT + b"\r\n--xYzZY--",
    )
    response = await kit.post("/webhooks/sendgrid/inbound", big, headers, token=SENDGRID_TOKEN)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert kit.handed == []


async def test_a_message_above_the_message_limit_is_refused_with_413(kit: Kit) -> None:
    """The body fits (200 kB) but the rebuilt message would not (100 kB): nothing is handed over, even the other
    messages of the request."""
    headers, body = posted("brevo_inbound.json")
    body = body.replace(b"Is the *spring sale* on in stores too?", b"y" * (MESSAGE_LIMIT + 10))
    response = await kit.post("/webhooks/brevo/inbound", body, {**headers, "X-Webhook-Token": BREVO_TOKEN})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "message_too_large" and f"{MESSAGE_LIMIT}-byte limit" in error["message"]
    assert kit.handed == []


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
    assert kit.handed == []


async def test_urls_that_are_no_inbound_endpoint(kit: Kit) -> None:
    auth = basic(*POSTMARK_SECRET.split(":"))
    pm_headers, pm_body = posted("postmark_inbound.json")
    not_a_number = await kit.post("/webhooks/postmark/abc/inbound", pm_body, {**pm_headers, **auth})
    assert (not_a_number.status_code, not_a_number.json()["error"]["code"]) == (404, "not_found")
    # Providers without an inbound endpoint are left to the event routes (EngageLab's replies are `route` events).
    engagelab = await kit.post("/webhooks/engagelab/inbound", b"{}", {"Content-Type": "application/json"})
    assert engagelab.status_code == 404
    assert kit.handed == []
