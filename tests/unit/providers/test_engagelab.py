"""EngageLab: the send request, every error class, webhook verification and the parse of every event."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest

from edm.providers.base import Outcome, SendResult
from edm.providers.engagelab import EngageLabAdapter, EngageLabWebhook
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import BadElement, BounceClass, EventType, NormalizedEvent
from tests.unit.providers.support import (
    Recorder,
    answer,
    config,
    context,
    outbound,
    raising,
    sample,
    sample_bytes,
    target,
    webhook_request,
)

CREDENTIALS = {"api_user": "edm_trigger_user", "api_key": "s3cret-api-key"}
SUBTASK = "4f1c2e9a-5b7d-4c3e-9a21-0d6f1b2c3d4e"
TASK = "9b8a7c6d-0000-4000-8000-000000000042"
EMAIL_ID = "1676615711309_104117_18546_8821.sc-10_43_7_16-inbound0$recipient@example.com"
SECRET = "engagelab-app-key"
WEBHOOK = EngageLabWebhook()


def adapter(recorder: Recorder, **options: Any) -> EngageLabAdapter:
    return EngageLabAdapter(config("engagelab", credentials=CREDENTIALS, **options), transport=recorder.transport)


async def send_one(reply: Any, **options: Any) -> tuple[SendResult, Recorder]:
    recorder = Recorder(reply)
    engagelab = adapter(recorder, **options)
    try:
        [result] = await engagelab.send([outbound(1)])
    finally:
        await engagelab.aclose()
    return result, recorder


# --------------------------------------------------------------------------------------------------------
# Send: the request
# --------------------------------------------------------------------------------------------------------


async def test_send_posts_one_message_with_basic_auth_our_ids_headers_and_tracking_off() -> None:
    result, recorder = await send_one(answer(200, sample("engagelab", "api_mail_send_response_200.json")))
    request = recorder.last
    assert str(request.url) == "https://email.api.engagelab.cc/v1/mail/send"
    assert request.method == "POST"
    expected_auth = base64.b64encode(b"edm_trigger_user:s3cret-api-key").decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    assert request.headers["content-type"].startswith("application/json")
    sent = recorder.last_json()
    message = outbound(1)
    assert sent["from"] == "Example News <news@mail.example.com>"
    assert sent["to"] == ["user1@example.org"]
    assert sent["custom_args"] == {"subtask_id": message.key, "task_id": "7"}  # top level, not inside body
    assert sent["request_id"] == message.key  # EngageLab's 1 h idempotency
    body = sent["body"]
    assert body["subject"] == "Hello 1"
    assert body["content"] == {"html": "<p>Hello 1</p>", "text": "Hello 1"}
    assert body["reply_to"] == ["support@example.com"]
    assert body["headers"] == {
        "List-Unsubscribe": "<https://edm.example.com/u/tok1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-EDM-SubTask-Id": message.key,
        "Feedback-ID": "7:3:edm",
    }
    assert body["settings"] == {
        "send_mode": 0,
        "return_email_id": True,
        "open_tracking": False,
        "click_tracking": False,
        "unsubscribe_tracking": False,
    }
    assert result.outcome is Outcome.ACCEPTED and result.status == 200
    assert result.provider_message_id == (
        "1447054895514_15555555_32350_1350.sc-10_10_126_221-inbound0$recipient@example.com"
    )


def test_capabilities_declare_single_sends_and_the_one_hour_request_id_window() -> None:
    capabilities = EngageLabAdapter.capabilities
    assert capabilities.max_batch == 1 and not capabilities.needs_mime
    assert capabilities.honours_idempotency and capabilities.idempotency_window_seconds == 3600


@pytest.mark.parametrize(
    ("options", "base"),
    [
        ({}, "https://email.api.engagelab.cc"),
        ({"data_centre": "sg"}, "https://email.api.engagelab.cc"),
        ({"data_centre": "tr"}, "https://emailapi-tr.engagelab.com"),
        ({"region": "tr"}, "https://emailapi-tr.engagelab.com"),
        ({"data_centre": "tr", "base_url": "https://proxy.example.net/"}, "https://proxy.example.net"),
    ],
)
async def test_data_centre_option_picks_the_base_url(options: dict[str, Any], base: str) -> None:
    _, recorder = await send_one(answer(200, {"email_ids": ["x0$user1@example.org"]}), **options)
    assert str(recorder.last.url) == f"{base}/v1/mail/send"


def test_unknown_data_centre_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown region"):
        EngageLabAdapter(config("engagelab", credentials=CREDENTIALS, data_centre="us"))


async def test_display_names_with_specials_are_quoted_and_line_breaks_removed() -> None:
    recorder = Recorder(answer(200, {"email_ids": ["x0$user1@example.org"]}))
    engagelab = adapter(recorder)
    odd = dataclasses.replace(outbound(1), from_name='News, "Daily"', subject="Hi\r\nBcc: x@example.com")
    await engagelab.send([odd])
    await engagelab.aclose()
    sent = recorder.last_json()
    assert sent["from"] == '"News, \\"Daily\\"" <news@mail.example.com>'
    assert sent["body"]["subject"] == "Hi Bcc: x@example.com"


async def test_missing_credentials_fail_auth_config_without_calling_the_provider() -> None:
    recorder = Recorder(answer(200, {"email_ids": ["x"]}))
    engagelab = EngageLabAdapter(config("engagelab", credentials={"api_user": "u"}), transport=recorder.transport)
    [result] = await engagelab.send([outbound(1)])
    await engagelab.aclose()
    assert result.outcome is Outcome.AUTH_CONFIG and result.provider_code == "missing_credentials"
    assert recorder.requests == []


# --------------------------------------------------------------------------------------------------------
# Send: error classes
# --------------------------------------------------------------------------------------------------------


async def test_401_code_30000_is_auth_config_hinting_at_the_data_centre() -> None:
    result, _ = await send_one(answer(401, {"code": 30000, "message": "Authentication failed"}))
    assert result.outcome is Outcome.AUTH_CONFIG and result.status == 401
    assert result.provider_code == "30000"
    assert "data centre" in result.message
    assert "s3cret-api-key" not in result.message


@pytest.mark.parametrize("status", [401, 403])
async def test_other_401_and_403_are_auth_config(status: int) -> None:
    result, _ = await send_one(answer(status, {"code": 30001, "message": "forbidden"}))
    assert result.outcome is Outcome.AUTH_CONFIG and result.provider_code == "30001"


@pytest.mark.parametrize(
    ("name", "code"),
    [("api_mail_send_response_400_from_empty.json", "30801"), ("api_mail_send_response_400_custom_args.json", "30893")],
)
async def test_documented_400_codes_are_permanent(name: str, code: str) -> None:
    result, _ = await send_one(answer(400, sample("engagelab", name)))
    assert result.outcome is Outcome.PERMANENT and result.status == 400
    assert result.provider_code == code
    assert sample("engagelab", name)["message"] in result.message


async def test_other_4xx_is_permanent_for_the_message() -> None:
    result, _ = await send_one(answer(422, {"code": 30999, "message": "subject too long"}))
    assert result.outcome is Outcome.PERMANENT


async def test_429_is_throttled_with_retry_after() -> None:
    result, _ = await send_one(answer(429, {"code": 429, "message": "too many"}, headers={"Retry-After": "12"}))
    assert result.outcome is Outcome.THROTTLED and result.retry_after == 12.0


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient(status: int) -> None:
    result, _ = await send_one(answer(status, "upstream error"))
    assert result.outcome is Outcome.TRANSIENT and result.status == status


@pytest.mark.parametrize(
    "reply",
    [
        answer(402, {"code": 1, "message": "payment required"}),
        answer(400, {"code": 30990, "message": "Daily quota exceeded"}),
    ],
)
async def test_quota_answers_are_quota_exhausted(reply: Any) -> None:
    result, _ = await send_one(reply)
    assert result.outcome is Outcome.QUOTA_EXHAUSTED


@pytest.mark.parametrize(
    "reply",
    [answer(200, {"request_id": "r"}), answer(200, {"email_ids": []}), answer(200, "<html>captive portal</html>")],
)
async def test_200_without_email_ids_is_auth_config(reply: Any) -> None:
    result, _ = await send_one(reply)
    assert result.outcome is Outcome.AUTH_CONFIG and result.provider_code == "unexpected_response"


async def test_connect_error_is_transient_and_read_timeout_maybe_sent() -> None:
    refused, _ = await send_one(raising(httpx.ConnectError("connection refused")))
    timed_out, _ = await send_one(raising(httpx.ReadTimeout("read timed out")))
    assert refused.outcome is Outcome.TRANSIENT
    assert timed_out.outcome is Outcome.MAYBE_SENT


# --------------------------------------------------------------------------------------------------------
# Webhook: verification
# --------------------------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 7, 7, 12, 0, tzinfo=dt.UTC)
TS_SECONDS = str(int(NOW.timestamp()))
TS_MILLIS = str(int(NOW.timestamp() * 1000))


def md5_signature(timestamp: str, app_key_header: str = "email", secret: str = SECRET) -> str:
    return hashlib.md5(f"{timestamp}{app_key_header}{secret}".encode()).hexdigest()


def hmac_signature(timestamp: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), timestamp.encode(), hashlib.sha256).hexdigest()


def signed(signature: str, timestamp: str = TS_SECONDS, body: bytes | None = None, **query: str) -> Any:
    return webhook_request(
        body if body is not None else sample_bytes("engagelab", "status_delivered.json"),
        headers={"X-WebHook-Timestamp": timestamp, "X-WebHook-AppKey": "email", "X-WebHook-Signature": signature},
        query=query,
    )


async def verify(request: Any, *secrets: str, now: dt.datetime = NOW) -> bool:
    return await WEBHOOK.verify(request, target("engagelab", *secrets), context(now))


@pytest.mark.parametrize("timestamp", [TS_SECONDS, TS_MILLIS])
async def test_md5_signature_verifies_with_seconds_or_milliseconds(timestamp: str) -> None:
    assert await verify(signed(md5_signature(timestamp), timestamp), SECRET)


async def test_hmac_sha256_signature_verifies_and_hex_case_is_ignored() -> None:
    assert await verify(signed(hmac_signature(TS_SECONDS)), SECRET)
    assert await verify(signed(hmac_signature(TS_SECONDS).upper()), SECRET)


async def test_any_secret_of_a_rotation_verifies() -> None:
    assert await verify(signed(md5_signature(TS_SECONDS)), "new-key", SECRET)


async def test_wrong_secret_fails() -> None:
    assert not await verify(signed(md5_signature(TS_SECONDS, secret="other")), SECRET)


async def test_tampered_signature_fails() -> None:
    good = md5_signature(TS_SECONDS)
    tampered = ("0" if good[0] != "0" else "1") + good[1:]
    assert not await verify(signed(tampered), SECRET)


async def test_stale_or_future_timestamp_fails_outside_ten_minutes() -> None:
    request = signed(md5_signature(TS_SECONDS))
    assert await verify(request, SECRET, now=NOW + dt.timedelta(minutes=9))
    assert not await verify(request, SECRET, now=NOW + dt.timedelta(minutes=11))
    assert not await verify(request, SECRET, now=NOW - dt.timedelta(minutes=11))


async def test_missing_headers_or_no_secret_fail() -> None:
    body = sample_bytes("engagelab", "status_delivered.json")
    assert not await verify(webhook_request(body), SECRET)
    assert not await verify(signed(md5_signature(TS_SECONDS)))


async def test_url_token_verifies_without_signature_headers() -> None:
    body = sample_bytes("engagelab", "status_delivered.json")
    assert await verify(webhook_request(body, query={"token": "url-token-123"}), SECRET, "url-token-123")
    assert not await verify(webhook_request(body, query={"token": "guess"}), SECRET, "url-token-123")


async def test_signature_covers_only_the_timestamp_not_the_body() -> None:
    # Documented weakness of EngageLab's scheme (docs/providers.md#webhooks-where-events-come-back): why the URL token
    # is recommended.
    other_body = sample_bytes("engagelab", "status_invalid_email_hard_bounce.json")
    assert await verify(signed(md5_signature(TS_SECONDS), body=other_body), SECRET)


def test_no_replay_nonce_because_the_signature_repeats_within_a_second() -> None:
    assert WEBHOOK.replay_nonce(signed(md5_signature(TS_SECONDS))) is None


# --------------------------------------------------------------------------------------------------------
# Webhook: parsing the samples
# --------------------------------------------------------------------------------------------------------


def parse_sample(name: str) -> list[NormalizedEvent]:
    payload = WEBHOOK.parse(webhook_request(sample_bytes("engagelab", name)))
    assert not payload.batch
    assert all(isinstance(item, NormalizedEvent) for item in payload.items)
    return [item for item in payload.items if isinstance(item, NormalizedEvent)]


def at_ms(millis: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC)


def assert_ours(event: NormalizedEvent) -> None:
    assert event.subtask_id == SUBTASK and event.task_id == TASK
    assert event.provider_message_id == EMAIL_ID
    assert event.recipient == "recipient@example.com"
    assert event.provider_event_id is None  # EngageLab sends none: the pipeline hashes
    assert isinstance(event.raw, dict)


def test_status_target_is_accepted_per_email_id() -> None:
    [event] = parse_sample("status_target.json")
    assert event.event_type is EventType.ACCEPTED and event.provider_event == "target"
    assert event.occurred_at == at_ms(1676615711325)
    assert_ours(event)
    assert event.raw == sample("engagelab", "status_target.json")


def test_status_sent_is_accepted() -> None:
    [event] = parse_sample("status_sent.json")
    assert event.event_type is EventType.ACCEPTED and event.provider_event == "sent"
    assert event.occurred_at == at_ms(1676615712410)
    assert event.reason == "Successfully sent"
    assert_ours(event)


def test_status_delivered_is_delivered_with_the_smtp_answer() -> None:
    [event] = parse_sample("status_delivered.json")
    assert event.event_type is EventType.DELIVERED and event.provider_event == "delivered"
    assert event.occurred_at == at_ms(1676615715020)
    assert event.smtp_code == 250 and event.enhanced_code == "2.0.0"
    assert event.bounce_class is None
    assert_ours(event)


def test_invalid_email_406_is_a_hard_bounce_keeping_its_sub_code() -> None:
    [event] = parse_sample("status_invalid_email_hard_bounce.json")
    assert event.event_type is EventType.HARD_BOUNCED and event.provider_event == "invalid_email"
    assert event.bounce_class is BounceClass.INVALID
    assert event.smtp_code == 550 and event.enhanced_code == "5.1.1"
    assert event.reason is not None and "User unknown" in event.reason
    assert event.details["sub_stat"] == 406 and event.details["sub_stat_desc"] == "Invalid Email-Not Exist"
    assert event.occurred_at == at_ms(1676615716100)
    assert_ours(event)


def test_response_open_keeps_ip_and_user_agent() -> None:
    [event] = parse_sample("response_open.json")
    assert event.event_type is EventType.OPENED and event.provider_event == "open"
    assert event.ip == "203.0.113.10" and event.user_agent is not None and event.user_agent.startswith("Mozilla")
    assert event.occurred_at == at_ms(1676620370426)
    assert_ours(event)


def test_response_click_keeps_the_url() -> None:
    [event] = parse_sample("response_click.json")
    assert event.event_type is EventType.CLICKED and event.provider_event == "click"
    assert event.url == "https://example.com/landing?utm_source=edm"
    assert event.occurred_at == at_ms(1676620390111)
    assert_ours(event)


def test_route_is_a_reply_without_our_ids_keeping_sender_subject_and_threading() -> None:
    [event] = parse_sample("response_route_inbound_reply.json")
    assert event.event_type is EventType.REPLIED and event.provider_event == "route"
    assert event.subtask_id is None and event.task_id is None
    assert event.recipient == "customer@example.org"
    assert event.details["from"] == "customer@example.org"
    assert event.details["subject"] == "Re: Spring campaign"
    assert event.details["in_reply_to"] == "<1676615711309_104117_18546_8821.sc-10_43_7_16-inbound@mail.example.com>"
    assert event.occurred_at == at_ms(1783401717715)
    assert "raw_message" in event.raw["response"]["response_data"]  # conversations (planned) parse the MIME from raw


# --------------------------------------------------------------------------------------------------------
# Webhook: documented events without a sample file, and odd shapes
# --------------------------------------------------------------------------------------------------------


def envelope(
    *,
    status: str | None = None,
    response: str | None = None,
    data: dict[str, Any] | None = None,
    custom_args: Any = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "server": "email",
        "message_id": "m1",
        "to": "recipient@example.com",
        "itime": 1676615716100,
        "custom_args": {"subtask_id": SUBTASK, "task_id": TASK} if custom_args is None else custom_args,
    }
    fields = {"email_id": EMAIL_ID, **(data or {})}
    if status is not None:
        document["status"] = {"message_status": status, "status_data": fields}
    if response is not None:
        document["response"] = {"event": response, "response_data": fields}
    return document


def parse_document(document: Any) -> list[NormalizedEvent | BadElement]:
    return WEBHOOK.parse(webhook_request(json.dumps(document).encode())).items


def parse_one(document: Any) -> NormalizedEvent:
    [event] = parse_document(document)
    assert isinstance(event, NormalizedEvent)
    return event


@pytest.mark.parametrize(
    ("name", "event_type"), [("unsubscribe", EventType.UNSUBSCRIBED), ("report_spam", EventType.COMPLAINED)]
)
def test_unsubscribe_and_report_spam_responses(name: str, event_type: EventType) -> None:
    event = parse_one(envelope(response=name))
    assert event.event_type is event_type and event.provider_event == name
    assert_ours(event)


def test_soft_bounce_is_soft_bounced_with_its_sub_code() -> None:
    event = parse_one(envelope(status="soft_bounce", data={"message": "452 4.2.2 Mailbox full", "sub_stat": "503"}))
    assert event.event_type is EventType.SOFT_BOUNCED and event.bounce_class is BounceClass.SOFT
    assert event.details["sub_stat"] == 503 and event.enhanced_code == "4.2.2"


@pytest.mark.parametrize(
    ("sub_stat", "event_type", "bounce_class"),
    [
        (401, EventType.REJECTED, BounceClass.SUPPRESSED),  # EngageLab blacklist
        (402, EventType.REJECTED, BounceClass.SUPPRESSED),  # unsubscribed at EngageLab
        (404, EventType.HARD_BOUNCED, BounceClass.INVALID),
        (406, EventType.HARD_BOUNCED, BounceClass.INVALID),
        (407, EventType.HARD_BOUNCED, BounceClass.BLOCK),
        (None, EventType.HARD_BOUNCED, BounceClass.HARD),
        ("garbage", EventType.HARD_BOUNCED, BounceClass.HARD),
    ],
)
def test_invalid_email_sub_codes_refine_the_bounce(
    sub_stat: Any, event_type: EventType, bounce_class: BounceClass
) -> None:
    data = {} if sub_stat is None else {"sub_stat": sub_stat}
    event = parse_one(envelope(status="invalid_email", data=data))
    assert event.event_type is event_type and event.bounce_class is bounce_class


def test_unknown_event_names_parse_as_unknown() -> None:
    assert parse_one(envelope(status="queued_somewhere")).event_type is EventType.UNKNOWN
    assert parse_one(envelope(response="forward")).event_type is EventType.UNKNOWN


def test_custom_args_as_a_json_string_is_tolerated() -> None:
    event = parse_one(envelope(status="delivered", custom_args=json.dumps({"subtask_id": SUBTASK, "task_id": 42})))
    assert event.subtask_id == SUBTASK and event.task_id == "42"


def test_missing_custom_args_still_parses_with_the_email_id() -> None:
    event = parse_one(envelope(status="delivered", custom_args={}))
    assert event.subtask_id is None and event.provider_message_id == EMAIL_ID and event.has_lookup_id


def test_target_with_several_recipients_yields_one_event_each() -> None:
    document = envelope(status="target")
    document["status"]["status_data"] = {
        "email_ids": ["m0$a@example.com", "m1$b@example.com"],
        "tos": ["a@example.com", "b@example.com"],
    }
    del document["to"]
    events = parse_document(document)
    assert [(e.provider_message_id, e.recipient) for e in events if isinstance(e, NormalizedEvent)] == [
        ("m0$a@example.com", "a@example.com"),
        ("m1$b@example.com", "b@example.com"),
    ]


def test_recipient_falls_back_to_the_email_id_suffix() -> None:
    document = envelope(status="sent")
    del document["to"]
    assert parse_one(document).recipient == "recipient@example.com"


def test_an_array_is_a_batch_and_a_bad_element_stands_alone() -> None:
    payload = WEBHOOK.parse(webhook_request(json.dumps([envelope(status="delivered"), {"foo": 1}, 7]).encode()))
    assert payload.batch
    delivered, bad_object, bad_number = payload.items
    assert isinstance(delivered, NormalizedEvent) and delivered.event_type is EventType.DELIVERED
    assert isinstance(bad_object, BadElement) and bad_object.raw == {"foo": 1}
    assert isinstance(bad_number, BadElement)


@pytest.mark.parametrize("body", [b"not json", b'{"server": "email"}', b'"text"', b"42"])
def test_a_body_that_is_not_an_engagelab_event_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        WEBHOOK.parse(webhook_request(body))


def test_wrong_content_type_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        WEBHOOK.parse(
            webhook_request(
                sample_bytes("engagelab", "status_sent.json"), content_type="application/x-www-form-urlencoded"
            )
        )
