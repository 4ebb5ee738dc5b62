"""Brevo: the send request, the classification of every answer, and the webhook parser."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from typing import Any

import httpx
import pytest

from edm.providers.base import OutboundMessage, Outcome
from edm.providers.brevo import WEBHOOK, BrevoAdapter
from edm.providers.webhook import MalformedPayload, ParsedPayload
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

API_KEY = "xkeysib-test-key"
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def adapter(recorder: Recorder, **options: Any) -> BrevoAdapter:
    return BrevoAdapter(config("brevo", credentials={"api_key": API_KEY}, **options), transport=recorder.transport)


async def send_one(respond: Any, message: OutboundMessage | None = None) -> tuple[Recorder, Any]:
    recorder = Recorder(respond)
    results = await adapter(recorder).send([message or outbound(1)])
    assert len(results) == 1
    return recorder, results[0]


# --------------------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------------------


async def test_request_posts_to_smtp_email_with_the_api_key_header() -> None:
    recorder, _ = await send_one(answer(201, sample("brevo", "api_smtp_email_response_201.json")))
    request = recorder.last
    assert request.method == "POST"
    assert str(request.url) == "https://api.brevo.com/v3/smtp/email"
    assert request.headers["api-key"] == API_KEY


async def test_request_body_carries_sender_recipient_reply_to_and_both_parts() -> None:
    recorder, _ = await send_one(answer(201, {"messageId": "<x@smtp-relay.mailin.fr>"}))
    body = recorder.last_json()
    assert body["sender"] == {"email": "news@mail.example.com", "name": "Example News"}
    assert body["to"] == [{"email": "user1@example.org", "name": "User 1"}]
    assert body["replyTo"] == {"email": "support@example.com"}
    assert body["subject"] == "Hello 1"
    assert body["htmlContent"] == "<p>Hello 1</p>"
    assert body["textContent"] == "Hello 1"


async def test_our_ids_travel_in_x_mailin_custom_as_compact_json_and_in_our_header() -> None:
    recorder, _ = await send_one(answer(201, {"messageId": "<x@smtp-relay.mailin.fr>"}))
    headers = recorder.last_json()["headers"]
    key = outbound(1).key
    assert headers["X-Mailin-custom"] == f'{{"subtask_id":"{key}","task_id":"7"}}'
    assert headers["X-EDM-SubTask-Id"] == key
    assert headers["List-Unsubscribe"] == "<https://edm.example.com/u/tok1>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["Feedback-ID"] == "7:3:edm"
    assert headers["idempotencyKey"] == key
    assert "Message-ID" not in headers  # Brevo assigns its own and reports it back


async def test_x_mailin_custom_is_ascii_even_for_non_ascii_ids() -> None:
    message = dataclasses.replace(outbound(1), custom_args={"subtask_id": "é-1", "task_id": "7"})
    recorder, _ = await send_one(answer(201, {"messageId": "<x@smtp-relay.mailin.fr>"}), message)
    value = recorder.last_json()["headers"]["X-Mailin-custom"]
    assert value.isascii()
    assert json.loads(value) == {"subtask_id": "é-1", "task_id": "7"}


async def test_201_is_accepted_with_brevos_message_id() -> None:
    _, result = await send_one(answer(201, sample("brevo", "api_smtp_email_response_201.json")))
    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == "<201801020304.1234567890@smtp-relay.mailin.fr>"
    assert result.status == 201


async def test_2xx_without_message_id_is_auth_config() -> None:
    _, result = await send_one(answer(200, "<html>proxy login</html>"))
    assert result.outcome is Outcome.AUTH_CONFIG


async def test_400_about_the_sender_is_auth_config_because_every_message_would_fail() -> None:
    _, result = await send_one(answer(400, sample("brevo", "api_smtp_email_response_400.json")))
    assert result.outcome is Outcome.AUTH_CONFIG
    assert result.provider_code == "invalid_parameter"


async def test_400_about_the_recipient_is_permanent_and_rejects_the_recipient() -> None:
    _, result = await send_one(answer(400, {"code": "invalid_parameter", "message": "email is not valid in to"}))
    assert result.outcome is Outcome.PERMANENT
    assert result.recipient_rejected


async def test_other_400_is_permanent_without_rejecting_the_recipient() -> None:
    _, result = await send_one(answer(400, {"code": "missing_parameter", "message": "subject is missing"}))
    assert result.outcome is Outcome.PERMANENT
    assert not result.recipient_rejected
    assert result.provider_code == "missing_parameter"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"code": "unauthorized", "message": "Key not found"}, Outcome.AUTH_CONFIG),
        (403, {"code": "permission_denied", "message": "forbidden"}, Outcome.AUTH_CONFIG),
        (402, {"code": "not_enough_credits", "message": "not enough credits"}, Outcome.QUOTA_EXHAUSTED),
        (400, {"code": "account_under_validation", "message": "account under validation"}, Outcome.AUTH_CONFIG),
        (500, {"code": "internal_error", "message": "boom"}, Outcome.TRANSIENT),
        (503, None, Outcome.TRANSIENT),
    ],
)
async def test_error_statuses_map_to_spec_classes(status: int, body: Any, expected: Outcome) -> None:
    _, result = await send_one(answer(status, body))
    assert result.outcome is expected
    assert result.status == status
    assert API_KEY not in result.message


async def test_429_is_throttled_with_the_reset_header() -> None:
    _, result = await send_one(answer(429, {"code": "too_many_requests"}, headers={"x-sib-ratelimit-reset": "7"}))
    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after == 7.0


async def test_429_prefers_retry_after() -> None:
    headers = {"retry-after": "3", "x-sib-ratelimit-reset": "7"}
    _, result = await send_one(answer(429, None, headers=headers))
    assert result.retry_after == 3.0


async def test_connect_error_is_transient_and_read_timeout_maybe_sent() -> None:
    _, refused = await send_one(raising(httpx.ConnectError("refused")))
    _, timed_out = await send_one(raising(httpx.ReadTimeout("slow")))
    assert refused.outcome is Outcome.TRANSIENT
    assert timed_out.outcome is Outcome.MAYBE_SENT


async def test_more_messages_than_max_batch_are_sent_one_call_each_in_order() -> None:
    recorder = Recorder(answer(201, {"messageId": "<x@smtp-relay.mailin.fr>"}))
    results = await adapter(recorder).send([outbound(1), outbound(2)])
    assert [r.key for r in results] == [outbound(1).key, outbound(2).key]
    assert [json.loads(r.content)["to"][0]["email"] for r in recorder.requests] == [
        "user1@example.org",
        "user2@example.org",
    ]


def test_capabilities_single_message_without_idempotency() -> None:
    assert BrevoAdapter.capabilities.max_batch == 1
    assert not BrevoAdapter.capabilities.honours_idempotency


# --------------------------------------------------------------------------------------------------------
# Webhook: verification
# --------------------------------------------------------------------------------------------------------


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


async def test_basic_credentials_from_the_url_verify() -> None:
    request = webhook_request(sample_bytes("brevo", "delivered.json"), headers={"Authorization": _basic("edm:pw")})
    assert await WEBHOOK.verify(request, target("brevo", "old:secret", "edm:pw"), context(NOW))


async def test_bearer_token_verifies() -> None:
    request = webhook_request(sample_bytes("brevo", "delivered.json"), headers={"Authorization": "Bearer tok123"})
    assert await WEBHOOK.verify(request, target("brevo", "tok123"), context(NOW))


async def test_wrong_or_missing_credentials_fail() -> None:
    body = sample_bytes("brevo", "delivered.json")
    wrong = webhook_request(body, headers={"Authorization": _basic("edm:wrong")})
    missing = webhook_request(body)
    assert not await WEBHOOK.verify(wrong, target("brevo", "edm:pw"), context(NOW))
    assert not await WEBHOOK.verify(missing, target("brevo", "edm:pw"), context(NOW))
    assert not await WEBHOOK.verify(wrong, target("brevo"), context(NOW))


# --------------------------------------------------------------------------------------------------------
# Webhook: parsing
# --------------------------------------------------------------------------------------------------------

SAMPLE_TIME = dt.datetime.fromtimestamp(1520363423, tz=dt.UTC)
RELAY_ID = "<201803011158.9876543210@smtp-relay.mailin.fr>"


def parse_one(name: str) -> NormalizedEvent:
    payload = WEBHOOK.parse(webhook_request(sample_bytes("brevo", name)))
    assert not payload.batch
    (event,) = payload.items
    assert isinstance(event, NormalizedEvent)
    return event


@pytest.mark.parametrize(
    ("name", "event_type", "bounce_class", "recipient"),
    [
        ("delivered.json", EventType.DELIVERED, None, "recipient@example.com"),
        ("deferred.json", EventType.DEFERRED, None, "notauser@example.com"),
        ("soft_bounce.json", EventType.SOFT_BOUNCED, BounceClass.SOFT, "recipient@no-mx.example.com"),
        ("hard_bounce.json", EventType.HARD_BOUNCED, BounceClass.HARD, "not-a-user@example.com"),
        ("invalid_email.json", EventType.HARD_BOUNCED, BounceClass.INVALID, "recipient@example.com"),
        ("blocked.json", EventType.REJECTED, BounceClass.SUPPRESSED, "recipient@example.com"),
        ("opened.json", EventType.OPENED, None, "recipient@example.com"),
        ("unique_opened.json", EventType.OPENED, None, "recipient@example.com"),
        ("click.json", EventType.CLICKED, None, "recipient@example.com"),
        ("unsubscribe.json", EventType.UNSUBSCRIBED, None, "recipient@example.com"),
    ],
)
def test_relay_samples_parse_with_type_class_recipient_time_and_message_id(
    name: str, event_type: EventType, bounce_class: BounceClass | None, recipient: str
) -> None:
    event = parse_one(name)
    assert event.event_type is event_type
    assert event.provider_event == name.removesuffix(".json")
    assert event.bounce_class is bounce_class
    assert event.recipient == recipient
    assert event.occurred_at == SAMPLE_TIME
    assert event.provider_message_id == RELAY_ID
    assert event.provider_event_id is None
    assert event.subtask_id is None
    assert event.raw == sample("brevo", name)


def test_request_sample_is_accepted_and_tolerates_foreign_x_mailin_custom() -> None:
    event = parse_one("request.json")
    assert event.event_type is EventType.ACCEPTED
    assert event.provider_message_id == "<201803062010.27287306012@smtp-relay.mailin.fr>"
    assert event.occurred_at == SAMPLE_TIME  # ts_epoch wins over ts/ts_event
    assert event.subtask_id is None and event.task_id is None  # {"meta": "data"} holds none of our ids


def test_complaint_uses_ts_event_and_brackets_the_message_id() -> None:
    event = parse_one("complaint.json")
    assert event.event_type is EventType.COMPLAINED
    assert event.occurred_at == dt.datetime.fromtimestamp(1604933654, tz=dt.UTC)
    assert event.provider_message_id == "<201798300811.5787683@relay.example.com>"
    assert event.recipient == "example@example.com"


def test_error_is_rejected_undetermined() -> None:
    event = parse_one("error.json")
    assert event.event_type is EventType.REJECTED
    assert event.bounce_class is BounceClass.UNDETERMINED
    assert event.occurred_at == dt.datetime.fromtimestamp(1604933623, tz=dt.UTC)


def test_proxy_open_is_an_open_marked_machine() -> None:
    event = parse_one("proxy_open.json")
    assert event.event_type is EventType.OPENED
    assert event.details == {"machine": True}
    assert event.occurred_at == dt.datetime.fromtimestamp(1534486682, tz=dt.UTC)


def test_click_keeps_the_link() -> None:
    assert parse_one("click.json").url == "https://example.com/click/me"


def test_bounce_reason_yields_smtp_and_enhanced_codes() -> None:
    hard = parse_one("hard_bounce.json")
    assert (hard.smtp_code, hard.enhanced_code) == (550, "5.5.0")
    assert hard.reason == "RecipientError: 550 5.5.0 Requested action not taken: mailbox unavailable."
    deferred = parse_one("deferred.json")
    assert (deferred.smtp_code, deferred.enhanced_code) == (550, "5.1.1")


def _event(**fields: Any) -> dict[str, Any]:
    return {
        "event": "delivered",
        "email": "user1@example.org",
        "ts_epoch": 1520363423000,
        "message-id": "<a@smtp-relay.mailin.fr>",
        **fields,
    }


def test_our_ids_come_from_x_mailin_custom() -> None:
    body = _event(**{"X-Mailin-custom": '{"subtask_id":"st-1","task_id":"7"}'})
    (event,) = WEBHOOK.parse(webhook_request(json.dumps(body).encode())).items
    assert isinstance(event, NormalizedEvent)
    assert (event.subtask_id, event.task_id) == ("st-1", "7")


def test_non_json_x_mailin_custom_is_tolerated() -> None:
    (event,) = WEBHOOK.parse(webhook_request(json.dumps(_event(**{"X-Mailin-custom": "plain"})).encode())).items
    assert isinstance(event, NormalizedEvent)
    assert event.subtask_id is None
    assert event.provider_message_id == "<a@smtp-relay.mailin.fr>"


def test_unknown_event_is_parsed_as_unknown() -> None:
    (event,) = WEBHOOK.parse(webhook_request(json.dumps(_event(event="list_addition")).encode())).items
    assert isinstance(event, NormalizedEvent)
    assert event.event_type is EventType.UNKNOWN
    assert event.provider_event == "list_addition"


def test_batched_array_is_a_batch_and_a_bad_element_stands_alone() -> None:
    body = [_event(), "garbage", _event(event="hard_bounce")]
    payload: ParsedPayload = WEBHOOK.parse(webhook_request(json.dumps(body).encode()))
    assert payload.batch
    assert [type(item) for item in payload.items] == [NormalizedEvent, BadElement, NormalizedEvent]
    assert isinstance(payload.items[2], NormalizedEvent)
    assert payload.items[2].event_type is EventType.HARD_BOUNCED


@pytest.mark.parametrize("body", [b"{not json", b'"a string"', b"42"])
def test_a_body_that_is_not_brevo_json_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        WEBHOOK.parse(webhook_request(body))


def test_wrong_content_type_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        WEBHOOK.parse(webhook_request(sample_bytes("brevo", "delivered.json"), content_type="text/plain"))


def test_inbound_items_are_replies_from_the_contact() -> None:
    body = {"items": [sample("brevo", "inbound_parsing_item.json")]}
    payload = WEBHOOK.parse(webhook_request(json.dumps(body).encode()))
    (event,) = payload.items
    assert isinstance(event, NormalizedEvent)
    assert event.event_type is EventType.REPLIED
    assert event.recipient == "from@example.com"
    assert event.details["message_id"] == "<ABCDE12345@mail.example.com>"
    assert event.occurred_at == dt.datetime(2023, 7, 17, 18, 11, 22, tzinfo=dt.UTC)
