"""Inbound mail from SendGrid, Mailgun, Postmark, Brevo and SES: each fixture of tests/fixtures/inbound, as the
provider posts it, becomes InboundMails whose raw RFC 5322 bytes carry the headers (threading included), the
bodies and the attachments; each provider's authentication; the size limits; malformed bodies refused with a 400
that says what is wrong."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edm.providers import registry
from edm.providers.inbound_webhook import (
    REBUILT_HEADER,
    InboundHandler,
    InboundLimits,
    InboundRequest,
    MessageTooLarge,
    NoContent,
    parse_form,
)
from edm.providers.webhook import MalformedPayload, VerifyContext, WebhookError, WebhookRequest, WebhookTarget
from edm.vocabulary.events import BadElement, EventType, NormalizedEvent
from tests.unit.providers.inbound_support import (
    MAILGUN_KEY,
    OUR_ID,
    SNS_CERT_URL,
    SNS_TOPIC,
    basic,
    fixture_json,
    fixture_timestamp,
    form_field,
    parsed,
    posted,
    ses_envelope,
    ses_raw,
    sns_certificate,
    sns_signed,
)

LIMITS = InboundLimits()
NOW = dt.datetime.now(dt.UTC)
# A SendGrid Event Webhook verification key (base64 DER), as SendGrid shows it.
SENDGRID_EVENT_KEY = base64.b64encode(
    ec.derive_private_key(0x5E4D6121D, ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()


def handler(provider: str) -> InboundHandler:
    found = registry.inbound_handler(provider)
    assert found is not None
    return found


def request(name: str, *, service_id: int | None = 7, **query: str) -> InboundRequest:
    headers, body = posted(name)
    return InboundRequest(body, headers, query, service_id=service_id)


def target(provider: str, *secrets: str, **options: Any) -> WebhookTarget:
    return WebhookTarget(service_id=7, provider=provider, secrets=secrets, options=options)


async def no_fetch(url: str) -> bytes:
    raise AssertionError(f"unexpected fetch of {url}")


def ctx(now: dt.datetime = NOW, fetch: Any = no_fetch) -> VerifyContext:
    return VerifyContext(now=now, fetch=fetch)


def attachments(raw: bytes) -> dict[str, tuple[str, bytes]]:
    return {
        str(part.get_filename()): (part.get_content_type(), part.get_payload(decode=True) or b"")
        for part in parsed(raw).iter_attachments()
    }


def inline_parts(raw: bytes) -> dict[str, tuple[str, bytes]]:
    """Content-ID → (type, bytes) of the images beside the HTML (multipart/related)."""
    found = {}
    for part in parsed(raw).walk():
        if part["Content-ID"] and part.get_content_disposition() == "inline":
            found[str(part["Content-ID"])] = (part.get_content_type(), part.get_payload(decode=True) or b"")
    return found


def body_text(raw: bytes, kind: str) -> str:
    part = parsed(raw).get_body((kind,))
    assert part is not None, kind
    return str(part.get_content())


def the_only(name: str, provider: str) -> Any:
    [mail] = handler(provider).parse(request(name), LIMITS).mails
    return mail


# --------------------------------------------------------------------------------------------------------
# SendGrid Inbound Parse
# --------------------------------------------------------------------------------------------------------


def test_sendgrid_parsed_mode_rebuilds_headers_bodies_and_attachments() -> None:
    mail = the_only("sendgrid_parsed_attachment.http", "sendgrid")
    message = parsed(mail.raw)
    assert (mail.source, mail.service_id, mail.recipient, mail.sender) == (
        "sendgrid",
        7,
        "reply-alice@reply.example.com",
        "bob@example.org",
    )
    assert message["Message-ID"] == "<CAF4reply-sendgrid-1@mail.example.org>"
    assert message["In-Reply-To"] == OUR_ID
    assert message["References"] == f"<spring-sale-announcement@mail.example.com> {OUR_ID}"
    assert message["Subject"] == "Re: Spring sale"
    assert message["From"] == "Bob Customer <bob@example.org>"
    assert message[REBUILT_HEADER] == "sendgrid"
    assert len(message.get_all("Received") or []) == 1
    # The text field was posted in ISO-8859-1 (charsets says so): decoded, not mangled.
    assert body_text(mail.raw, "plain").startswith("Café order: please send the quote again.")
    assert "Café order" in body_text(mail.raw, "html")
    _, body = posted("sendgrid_parsed_attachment.http")
    assert attachments(mail.raw) == {"quote.pdf": ("application/pdf", form_field(body, "attachment1"))}
    assert inline_parts(mail.raw) == {"<ii_logo1>": ("image/png", form_field(body, "attachment2"))}
    assert mail.raw.isascii()  # 7-bit clean whatever came in


def test_sendgrid_raw_mode_hands_over_the_message_untouched() -> None:
    """A Chinese subject as RFC 2047 encoded words stays exactly as received and reads back as Chinese."""
    mail = the_only("sendgrid_raw_chinese.http", "sendgrid")
    _, body = posted("sendgrid_raw_chinese.http")
    assert mail.raw == form_field(body, "email")
    assert b"Subject: =?UTF-8?B?5Zue5aSN77ya5pil5a2j5rS75Yqo?=" in mail.raw
    message = parsed(mail.raw)
    assert message["Subject"] == "回复：春季活动"
    assert message["In-Reply-To"] == OUR_ID
    assert body_text(mail.raw, "plain").strip() == "您好，我想了解春季活动的详情。"
    assert (mail.recipient, mail.sender) == ("reply-alice@reply.example.com", "wang@example.cn")
    assert REBUILT_HEADER not in message


async def test_sendgrid_is_authenticated_by_an_inbound_token_never_by_its_event_key() -> None:
    sendgrid = handler("sendgrid")
    configured = target("sendgrid", SENDGRID_EVENT_KEY, "sg-inbound-token-1234", "parse:basic-pass-5678")
    assert sendgrid.usable_secrets(configured) == ("sg-inbound-token-1234", "parse:basic-pass-5678")
    headers, body = posted("sendgrid_raw_chinese.http")

    async def verify(query: dict[str, str], extra: dict[str, str] | None = None) -> bool:
        incoming = InboundRequest(body, {**headers, **(extra or {})}, query)
        return await sendgrid.verify(incoming, configured, ctx())

    assert await verify({"token": "sg-inbound-token-1234"})
    assert await verify({}, basic("parse", "basic-pass-5678"))
    assert not await verify({})
    assert not await verify({"token": "sg-inbound-token-12345"})
    assert not await verify({"token": SENDGRID_EVENT_KEY})  # public-key material is no password
    assert not await verify({}, basic("parse", "wrong"))


def test_sendgrid_envelope_with_two_recipients_gives_two_mails_of_the_same_bytes() -> None:
    headers, body = posted("sendgrid_raw_chinese.http")
    body = body.replace(
        b'{"to":["reply-alice@reply.example.com"]',
        b'{"to":["reply-alice@reply.example.com","Reply-Bob@reply.example.com"]',
    )
    mails = handler("sendgrid").parse(InboundRequest(body, headers, service_id=3), LIMITS).mails
    assert [m.recipient for m in mails] == ["reply-alice@reply.example.com", "Reply-Bob@reply.example.com"]
    assert mails[0].raw is mails[1].raw


# --------------------------------------------------------------------------------------------------------
# Mailgun routes
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mailgun_parsed_attachment.http", "mailgun_mime.http"])
async def test_mailgun_signature_timestamp_and_token(name: str) -> None:
    mailgun = handler("mailgun")
    incoming = request(name)
    signed_at = fixture_timestamp(incoming.body)
    assert await mailgun.verify(incoming, target("mailgun", "other-key", MAILGUN_KEY), ctx(signed_at))
    assert await mailgun.verify(incoming, target("mailgun", MAILGUN_KEY), ctx(signed_at + dt.timedelta(minutes=9)))
    assert not await mailgun.verify(incoming, target("mailgun", MAILGUN_KEY), ctx(signed_at + dt.timedelta(minutes=11)))
    assert not await mailgun.verify(incoming, target("mailgun", "other-key"), ctx(signed_at))
    assert mailgun.replay_nonce(incoming) is not None and len(mailgun.replay_nonce(incoming) or "") == 50
    tampered = InboundRequest(incoming.body.replace(b"1783389717", b"1783389718"), incoming.headers)
    assert not await mailgun.verify(tampered, target("mailgun", MAILGUN_KEY), ctx(signed_at))


async def test_mailgun_without_a_form_does_not_verify() -> None:
    for body, content_type in ((b"{}", "application/json"), (b"--x\r\nbroken", "multipart/form-data; boundary=x")):
        incoming = InboundRequest(body, {"Content-Type": content_type})
        assert not await handler("mailgun").verify(incoming, target("mailgun", MAILGUN_KEY), ctx())
        assert handler("mailgun").replay_nonce(incoming) is None


def test_mailgun_parsed_route_is_rebuilt_with_its_headers_and_attachment() -> None:
    mail = the_only("mailgun_parsed_attachment.http", "mailgun")
    message = parsed(mail.raw)
    assert (mail.recipient, mail.sender) == ("reply-alice@reply.example.com", "carol@example.net")
    assert message["Message-ID"] == "<mg-reply-7f3a@mail.example.net>"
    assert message["In-Reply-To"] == OUR_ID
    assert message["References"] == f"<older@mail.example.com> {OUR_ID}"
    assert message["X-Mailgun-Incoming"] == "Yes"
    assert message.get_content_type() == "multipart/mixed"  # the original's boundary is not reused
    assert "b1_mg" not in message["Content-Type"]
    assert body_text(mail.raw, "plain").startswith("The corrected figures are attached.")
    assert body_text(mail.raw, "html").startswith("<div>The corrected figures")
    content_type, data = attachments(mail.raw)["figures.csv"]
    assert content_type == "text/csv"
    assert data == form_field(posted("mailgun_parsed_attachment.http")[1], "attachment-1")  # byte for byte


def test_mailgun_mime_url_hands_over_body_mime_untouched() -> None:
    mail = the_only("mailgun_mime.http", "mailgun")
    assert mail.raw.startswith(b"Received: from mail.example.net by mxa.mailgun.org")
    assert b"Message-ID: <mg-mime-0001@mail.example.net>\r\n" in mail.raw
    assert parsed(mail.raw)["Subject"] == "Question about the offer"
    assert (mail.recipient, mail.sender) == ("reply-alice@reply.example.com", "dan@example.net")


# --------------------------------------------------------------------------------------------------------
# Postmark
# --------------------------------------------------------------------------------------------------------


def test_postmark_utf8_json_is_rebuilt_with_the_chinese_subject_encoded() -> None:
    mail = the_only("postmark_inbound.json", "postmark")
    record = fixture_json("postmark_inbound.json")
    message = parsed(mail.raw)
    assert mail.raw.isascii() and b"=?utf-8?" in mail.raw.lower()  # RFC 2047 on the wire
    assert message["Subject"] == "回复：春季活动"
    assert message["From"] == "李华 <lihua@example.cn>"
    assert message["To"] == "Alice <reply-alice@reply.example.com>"
    assert message["Message-ID"] == "<CAKpm-reply-zh-42@mail.example.cn>"
    assert message["In-Reply-To"] == OUR_ID
    assert message["References"] == f"<spring-sale-announcement@mail.example.com> {OUR_ID}"
    assert message["Date"].datetime == dt.datetime(2026, 7, 7, 10, 20, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    assert body_text(mail.raw, "plain").startswith("你好，附件是我们的订单。")
    assert '<img src="cid:sig-logo@example.cn">' in body_text(mail.raw, "html")
    pdf, png = (base64.b64decode(a["Content"]) for a in record["Attachments"])
    assert attachments(mail.raw) == {"订单.pdf": ("application/pdf", pdf)}
    assert inline_parts(mail.raw) == {"<sig-logo@example.cn>": ("image/png", png)}
    assert (mail.recipient, mail.sender, mail.provider_message_id) == (
        "reply-alice@reply.example.com",
        "lihua@example.cn",
        "7c5f2a1e-3b4d-4e6f-8a9b-0c1d2e3f4a5b",
    )


def test_postmark_raw_email_is_handed_over_instead_of_a_rebuild() -> None:
    record = fixture_json("postmark_inbound.json")
    raw = "From: x@example.org\r\nSubject: raw\r\nMessage-ID: <raw-1@example.org>\r\n\r\nbody\r\n"
    incoming = InboundRequest(json.dumps({**record, "RawEmail": raw}).encode(), {"Content-Type": "application/json"})
    [mail] = handler("postmark").parse(incoming, LIMITS).mails
    assert mail.raw == raw.encode()


def test_postmark_without_a_message_id_header_gets_one_from_postmarks_id() -> None:
    record = fixture_json("postmark_inbound.json")
    record["Headers"] = [h for h in record["Headers"] if h["Name"] != "Message-ID"]
    incoming = InboundRequest(json.dumps(record).encode(), {"Content-Type": "application/json"})
    [mail] = handler("postmark").parse(incoming, LIMITS).mails
    assert parsed(mail.raw)["Message-ID"] == "<7c5f2a1e-3b4d-4e6f-8a9b-0c1d2e3f4a5b@inbound.postmarkapp.com>"


async def test_postmark_and_brevo_authenticate_as_their_event_webhooks() -> None:
    for provider, name in (("postmark", "postmark_inbound.json"), ("brevo", "brevo_inbound.json")):
        inbound = handler(provider)
        headers, body = posted(name)
        configured = target(provider, "hook:pass-1234", "token-abcdef12")
        ok = [
            basic("hook", "pass-1234"),
            {"Authorization": "Bearer token-abcdef12"},
            {"X-Webhook-Token": "token-abcdef12"},
        ]
        for extra in ok:
            assert await inbound.verify(InboundRequest(body, {**headers, **extra}), configured, ctx()), (
                provider,
                extra,
            )
        assert await inbound.verify(InboundRequest(body, headers, {"token": "token-abcdef12"}), configured, ctx())
        for extra in ({}, basic("hook", "nope"), {"Authorization": "Bearer token-abcdef1"}):
            assert not await inbound.verify(InboundRequest(body, {**headers, **extra}), configured, ctx())


# --------------------------------------------------------------------------------------------------------
# Brevo
# --------------------------------------------------------------------------------------------------------


def test_brevo_items_become_one_mail_per_item_and_recipient() -> None:
    mails = handler("brevo").parse(request("brevo_inbound.json"), LIMITS).mails
    assert [(m.recipient, m.provider_message_id) for m in mails] == [
        ("reply-alice@reply.example.com", "2f8b0c1e-6a7d-4e3f-9b2a-5c4d3e2f1a0b"),
        ("reply-alice@reply.example.com", "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d"),
        ("reply-bob@reply.example.com", "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d"),
    ]
    reply = parsed(mails[0].raw)
    assert reply["Message-ID"] == "<CAGbrevo-reply-1@mail.example.org>"
    assert reply["In-Reply-To"] == OUR_ID
    assert reply["References"] == f"<spring-sale-announcement@mail.example.com> {OUR_ID}"
    assert len(reply.get_all("Received") or []) == 2
    assert body_text(mails[0].raw, "plain").replace("\r\n", "\n") == "Is the *spring sale* on in stores too?\nErin\n"
    assert "<b>spring sale</b>" in body_text(mails[0].raw, "html")
    [attachment] = parsed(mails[0].raw).iter_attachments()
    assert attachment.get_filename() == "photo.jpg"
    assert attachment.get_content_type() == "message/external-body"
    assert attachment.get_param("url") == (
        "https://api.brevo.com/v3/inbound/attachments/eyJmb2xkZXIiOiIyMDI2MDcwNyIsImZpbGVuYW1lIjoicGhvdG8uanBnIn0"
    )
    assert b"Content-Type: image/jpeg" in mails[0].raw and b"Content-Length: 48213" in mails[0].raw
    fresh = parsed(mails[1].raw)
    assert (fresh["Subject"], fresh["From"], fresh["In-Reply-To"]) == (
        "Opening hours",
        "Frank <frank@example.net>",
        None,
    )
    assert mails[1].raw is mails[2].raw


# --------------------------------------------------------------------------------------------------------
# SES through SNS
# --------------------------------------------------------------------------------------------------------


class Fetch:
    def __init__(self) -> None:
        self.urls: list[str] = []
        self.pem = sns_certificate()

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        assert url == SNS_CERT_URL
        return self.pem


@pytest.fixture(autouse=True)
def _fresh_certificates() -> Any:
    from edm.providers import ses

    ses.clear_certificate_cache()
    yield
    ses.clear_certificate_cache()


async def test_ses_sns_notification_is_verified_like_ses_events() -> None:
    ses_inbound = handler("ses")
    body = sns_signed(ses_envelope())
    incoming = InboundRequest(body, {"Content-Type": "text/plain; charset=UTF-8"})
    assert await ses_inbound.verify(incoming, target("ses", sns_topic_arns=[SNS_TOPIC]), ctx(fetch=Fetch()))
    assert not await ses_inbound.verify(incoming, target("ses", sns_topic_arns=["arn:aws:sns:x"]), ctx(fetch=Fetch()))
    tampered = InboundRequest(body.replace(b"Spring sale", b"Spring sail"), incoming.headers)
    assert not await ses_inbound.verify(tampered, target("ses", sns_topic_arns=[SNS_TOPIC]), ctx(fetch=Fetch()))


def test_ses_base64_content_is_the_raw_message() -> None:
    incoming = InboundRequest(sns_signed(ses_envelope()), {"Content-Type": "text/plain"}, service_id=9)
    [mail] = handler("ses").parse(incoming, LIMITS).mails
    assert mail.raw == ses_raw()
    assert (mail.source, mail.service_id, mail.recipient, mail.sender, mail.provider_message_id) == (
        "ses",
        9,
        "reply-alice@reply.example.com",
        "grace@example.org",
        "o5i2pbd3lm9qk2m8ahvuusq0r3bq6n0c8ikp2s01",
    )
    message = parsed(mail.raw)
    assert message["In-Reply-To"] == "<0100018f2c3d4e5f-aaaa-bbbb-cccc-000000000001-000000@email.amazonses.com>"
    assert attachments(mail.raw)["list.csv"][1] == b"sku,qty\r\nA1,3\r\n"


def test_ses_utf8_content_and_other_notifications() -> None:
    utf8 = ses_envelope(
        content="From: a@example.org\r\nSubject: Grüße\r\n\r\nhi\r\n",
        receipt={"recipients": ["x@reply.example.com"], "action": {"type": "SNS", "encoding": "UTF8"}},
    )
    [mail] = handler("ses").parse(InboundRequest(sns_signed(utf8), {}), LIMITS).mails
    assert mail.raw == "From: a@example.org\r\nSubject: Grüße\r\n\r\nhi\r\n".encode()
    event = ses_envelope(notificationType=None, eventType="Delivery")
    assert handler("ses").parse(InboundRequest(sns_signed(event), {}), LIMITS).control == "not_inbound"
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "m",
        "Token": "t",
        "TopicArn": SNS_TOPIC,
        "Message": "You have chosen to subscribe",
        "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=t",
        "Timestamp": "2026-07-07T08:00:00.000Z",
    }
    payload = handler("ses").parse(InboundRequest(sns_signed(confirmation), {}), LIMITS)
    assert (payload.control, payload.confirm_url, payload.mails) == (
        "subscription_confirmation",
        confirmation["SubscribeURL"],
        [],
    )


def test_ses_s3_action_without_content_is_refused_with_what_to_change() -> None:
    s3 = ses_envelope(content=None, receipt={"recipients": ["x@reply.example.com"], "action": {"type": "S3"}})
    with pytest.raises(NoContent) as refused:
        handler("ses").parse(InboundRequest(sns_signed(s3), {}), LIMITS)
    assert refused.value.status == 400 and "SNS action" in refused.value.message


# --------------------------------------------------------------------------------------------------------
# Limits and malformed bodies
# --------------------------------------------------------------------------------------------------------

ALL = [
    ("sendgrid", "sendgrid_parsed_attachment.http"),
    ("sendgrid", "sendgrid_raw_chinese.http"),
    ("mailgun", "mailgun_parsed_attachment.http"),
    ("mailgun", "mailgun_mime.http"),
    ("postmark", "postmark_inbound.json"),
    ("brevo", "brevo_inbound.json"),
    ("ses", "ses_received_sns.json"),
]


@pytest.mark.parametrize(("provider", "name"), ALL)
def test_a_message_above_the_limit_is_refused_with_413(provider: str, name: str) -> None:
    incoming = request(name)
    if provider == "ses":
        incoming = InboundRequest(sns_signed(ses_envelope()), {})
    sizes = [len(m.raw) for m in handler(provider).parse(incoming, LIMITS).mails]
    with pytest.raises(MessageTooLarge) as refused:
        handler(provider).parse(incoming, dataclasses.replace(LIMITS, message_max_bytes=min(sizes) - 1))
    assert refused.value.status == 413 and "limit" in refused.value.message
    exact = handler(provider).parse(incoming, dataclasses.replace(LIMITS, message_max_bytes=max(sizes) + 4096))
    assert exact.mails


MALFORMED: list[tuple[str, bytes, str, str]] = [
    ("sendgrid", b'{"email": "x"}', "application/json", "multipart/form-data"),
    (
        "sendgrid",
        b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n',
        "multipart/form-data; boundary=b",
        "closing boundary",
    ),
    (
        "sendgrid",
        b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
        "neither an email field",
    ),
    (
        "sendgrid",
        b'--b\r\nContent-Disposition: form-data; name="email"\r\n\r\nx\r\n'
        b'--b\r\nContent-Disposition: form-data; name="envelope"\r\n\r\n{not json\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
        "envelope field is not valid JSON",
    ),
    (
        "sendgrid",
        b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
        "multipart/form-data; boundary=b",
        "Content-Disposition",
    ),
    ("sendgrid", b"x", "multipart/form-data", "without a boundary"),
    ("mailgun", b"recipient=a%40b.c", "application/x-www-form-urlencoded", "neither body-mime"),
    (
        "mailgun",
        b"message-headers=%5B1",
        "application/x-www-form-urlencoded",
        "message-headers field is not valid JSON",
    ),
    ("mailgun", b"message-headers=%7B%7D", "application/x-www-form-urlencoded", "not a JSON array"),
    ("mailgun", b"{}", "application/json", "not accepted here"),
    ("mailgun", b"body-mime=", "application/x-www-form-urlencoded", "body-mime field is empty"),
    ("postmark", b"not json", "application/json", "not valid JSON"),
    ("postmark", b"[]", "application/json", "one JSON object"),
    ("postmark", b'{"RecordType": "Bounce"}', "application/json", "events URL"),
    ("postmark", b'{"Subject": "x"}', "application/json", "no FromFull"),
    ("postmark", b'{"From": "a@b.c", "Attachments": [{"Content": "***"}]}', "application/json", "not valid base64"),
    ("postmark", b'{"From": "a@b.c", "Headers": "x"}', "application/json", "Headers is not a list"),
    ("postmark", b"<xml/>", "text/xml", "application/json"),
    ("brevo", b'{"events": []}', "application/json", '{"items": [...]}'),
    ("brevo", b'{"items": [1]}', "application/json", "items[0] is not an object"),
    ("brevo", b'{"items": [{"Subject": "x"}]}', "application/json", "no From and no MessageId"),
    (
        "brevo",
        b'{"items": [{"MessageId": "<a@b>", "Attachments": {}}]}',
        "application/json",
        "Attachments is not a list",
    ),
    ("brevo", b'{"items": [{"MessageId": "<a@b>", "Headers": []}]}', "application/json", "Headers is not an object"),
    ("ses", b"nope", "text/plain", "not valid JSON"),
    ("ses", b'{"Type": "Notification", "Message": 5}', "text/plain", "no Message string"),
    ("ses", b'{"Type": "Notification", "Message": "{x"}', "text/plain", "not JSON"),
    ("ses", b'{"Type": "Notification", "Message": "[]"}', "text/plain", "not a JSON object"),
    ("ses", b'{"Type": "Other"}', "text/plain", "unknown SNS message type"),
]


@pytest.mark.parametrize(("provider", "body", "content_type", "says"), MALFORMED)
def test_malformed_bodies_are_refused_with_what_is_wrong(
    provider: str, body: bytes, content_type: str, says: str
) -> None:
    with pytest.raises(MalformedPayload) as refused:
        handler(provider).parse(InboundRequest(body, {"Content-Type": content_type}), LIMITS)
    assert refused.value.status == 400
    assert says in refused.value.message


def test_ses_base64_that_does_not_decode_is_malformed() -> None:
    bad = ses_envelope(content="@@@", receipt={"action": {"type": "SNS", "encoding": "BASE64"}})
    with pytest.raises(MalformedPayload, match="not valid base64"):
        handler("ses").parse(InboundRequest(sns_signed(bad), {}), LIMITS)


HOSTILE = [
    b"",
    b"\x00\xff" * 50,
    b"[]",
    b"null",
    b'{"items": null}',
    b'{"items": [{"From": {"Address": 5}, "Headers": {"X": [1, null]}, "Attachments": [{}]}]}',
    b'{"FromFull": {"Email": "\\r\\nBcc: x@y"}, "Headers": [{"Name": "Bad\\nName", "Value": "v"}],'
    b' "Subject": "a\\r\\nb"}',
    b'{"Type": "Notification", "Message": "{\\"notificationType\\": \\"Received\\", \\"content\\": 5}"}',
]


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "postmark", "brevo", "ses"])
@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=b", "text/plain", ""])
def test_parsers_raise_only_webhook_errors(provider: str, content_type: str) -> None:
    for body in HOSTILE:
        try:
            handler(provider).parse(InboundRequest(body, {"Content-Type": content_type}), LIMITS)
        except WebhookError:
            pass


def test_hostile_header_values_never_inject_headers() -> None:
    body = json.dumps(
        {
            "FromFull": {"Email": "a@example.org", "Name": 'Evil"\r\nBcc: victim@example.com'},
            "Subject": "hi\r\nX-Injected: yes",
            "Headers": [{"Name": "X-Ok", "Value": "1\r\nX-Injected: yes"}, {"Name": "Bad Name", "Value": "v"}],
            "TextBody": "x",
        }
    ).encode()
    [mail] = handler("postmark").parse(InboundRequest(body, {"Content-Type": "application/json"}), LIMITS).mails
    message = parsed(mail.raw)
    assert "X-Injected" not in message and "Bcc" not in message and "Bad Name" not in message
    assert message["X-Ok"] == "1 X-Injected: yes"


def test_form_parsing_keeps_file_bytes_and_field_charsets() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\nContent-Type: application/zip\r\n\r\n'
        b'\x00\r\n\xff\r\n--b\r\nContent-Disposition: form-data; name="t"\r\n'
        b"Content-Type: text/plain; charset=gb2312\r\n\r\n" + "中文".encode("gb2312") + b"\r\n--b--\r\n"
    )
    form = parse_form(body, "multipart/form-data; boundary=b")
    [(name, value)] = form.files()
    assert (name, value.filename, value.content_type, value.data) == ("f", "a.bin", "application/zip", b"\x00\r\n\xff")
    assert form.text("t") == "中文"


def test_urlencoded_values_keep_every_byte_and_fields_are_bounded() -> None:
    form = parse_form(b"body-mime=Subject%3A+caf%E9%0D%0A&x=1", "application/x-www-form-urlencoded")
    value = form.get("body-mime")
    assert value is not None and value.data == b"Subject: caf\xe9\r\n"
    with pytest.raises(MalformedPayload, match="more than 1000 form fields"):
        parse_form(b"&".join(b"f%d=1" % i for i in range(1001)), "application/x-www-form-urlencoded")
    parts = b"".join(b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\n1\r\n' for _ in range(1001))
    with pytest.raises(MalformedPayload, match="more than 1000 form parts"):
        parse_form(parts + b"--b--\r\n", "multipart/form-data; boundary=b")


# --------------------------------------------------------------------------------------------------------
# Inbound mail posted to the provider's event URL
# --------------------------------------------------------------------------------------------------------


def event_items(provider: str, headers: dict[str, str], body: bytes) -> list[NormalizedEvent]:
    """What the provider's *event* handler makes of a post to the event URL."""
    events = registry.webhook_handler(provider)
    assert events is not None
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    webhook = WebhookRequest(body, {k.lower(): v for k, v in headers.items()}, content_type=content_type)
    items = events.parse(webhook).items
    assert not any(isinstance(item, BadElement) for item in items)
    return [item for item in items if isinstance(item, NormalizedEvent)]


def envelope_of(mail: Any) -> tuple[Any, ...]:
    message = parsed(mail.raw)
    return (
        mail.source,
        mail.service_id,
        mail.recipient,
        mail.sender,
        mail.provider_message_id,
        message["Message-ID"],
        message["In-Reply-To"],
        message["Subject"],
        sorted(attachments(mail.raw)),
    )


@pytest.mark.parametrize(
    ("provider", "name"),
    [("postmark", "postmark_inbound.json"), ("brevo", "brevo_inbound.json"), ("ses", "ses_received_sns.json")],
)
def test_inbound_mail_on_the_event_url_is_read_as_the_inbound_url_reads_it(provider: str, name: str) -> None:
    headers, body = posted(name)
    events = event_items(provider, headers, body)
    assert events and all(e.event_type is EventType.REPLIED for e in events)
    from_events = [mail for e in events for mail in handler(provider).event_mails(e, 7, LIMITS) or []]
    from_inbound = handler(provider).parse(request(name), LIMITS).mails
    assert [envelope_of(m) for m in from_events] == [envelope_of(m) for m in from_inbound]
    if provider == "ses":
        assert [m.raw for m in from_events] == [ses_raw()]


def test_event_mails_is_none_for_any_other_event_and_for_providers_without_inbound_events() -> None:
    delivery = fixture_json("postmark_inbound.json") | {"RecordType": "Delivery", "MessageID": "m-1"}
    [event] = event_items("postmark", {"Content-Type": "application/json"}, json.dumps(delivery).encode())
    assert event.event_type is EventType.DELIVERED
    assert handler("postmark").event_mails(event, 7, LIMITS) is None
    sns_headers = posted("ses_received_sns.json")[0]
    delivered = ses_envelope(notificationType=None, eventType="Delivery", delivery={"recipients": ["a@b.example"]})
    [ses_delivery] = event_items("ses", sns_headers, json.dumps(delivered).encode())
    assert ses_delivery.event_type is EventType.DELIVERED
    assert handler("ses").event_mails(ses_delivery, 7, LIMITS) is None
    [postmark_reply] = event_items("postmark", *posted("postmark_inbound.json"))
    for provider in ("sendgrid", "mailgun", "brevo", "ses"):
        assert handler(provider).event_mails(postmark_reply, 7, LIMITS) is None, provider


def test_event_mails_refuses_what_the_inbound_url_refuses() -> None:
    s3 = ses_envelope(content=None, receipt={"recipients": ["a@reply.example.com"], "action": {"type": "S3"}})
    [received] = event_items("ses", posted("ses_received_sns.json")[0], json.dumps(s3).encode())
    with pytest.raises(NoContent):
        handler("ses").event_mails(received, 7, LIMITS)
    [reply, *_] = event_items("brevo", *posted("brevo_inbound.json"))
    with pytest.raises(MessageTooLarge):
        handler("brevo").event_mails(reply, 7, InboundLimits(message_max_bytes=100))
    broken = dataclasses.replace(reply, raw={**reply.raw, "Headers": ["not", "an object"]})
    with pytest.raises(MalformedPayload, match="the inbound item.Headers is not an object"):
        handler("brevo").event_mails(broken, 7, LIMITS)
