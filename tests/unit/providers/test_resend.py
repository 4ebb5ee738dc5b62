"""Resend: the send request, the classification of every answer, Svix verification and the webhook parser."""

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

from edm.providers.base import OutboundMessage, Outcome
from edm.providers.resend import WEBHOOK, ResendAdapter
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent
from tests.unit.providers.support import (
    SAMPLES,
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

API_KEY = "re_test_key"
NOW = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC)
KEY_BYTES = b"resend-test-signing-key-32-bytes"
SECRET = "whsec_" + base64.b64encode(KEY_BYTES).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-signing-key-32-bytes!").decode()
SVIX_ID = "msg_2Kz7SvEYVQ3lUyB8Xz"


def adapter(recorder: Recorder) -> ResendAdapter:
    return ResendAdapter(config("resend", credentials={"api_key": API_KEY}), transport=recorder.transport)


async def send_one(respond: Any, message: OutboundMessage | None = None) -> tuple[Recorder, Any]:
    recorder = Recorder(respond)
    (result,) = await adapter(recorder).send([message or outbound(1)])
    return recorder, result


# --------------------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------------------


async def test_request_posts_to_emails_with_bearer_key_and_idempotency_key() -> None:
    recorder, _ = await send_one(answer(200, sample("resend", "api_emails_response_200.json")))
    request = recorder.last
    assert request.method == "POST"
    assert str(request.url) == "https://api.resend.com/emails"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["idempotency-key"] == outbound(1).key


async def test_request_body_has_named_from_and_to_reply_to_and_both_parts() -> None:
    recorder, _ = await send_one(answer(200, {"id": "e1"}))
    body = recorder.last_json()
    assert body["from"] == "Example News <news@mail.example.com>"
    assert body["to"] == ["User 1 <user1@example.org>"]
    assert body["reply_to"] == "support@example.com"
    assert (body["subject"], body["html"], body["text"]) == ("Hello 1", "<p>Hello 1</p>", "Hello 1")


async def test_our_ids_travel_as_tags_and_in_our_header_with_the_unsubscribe_headers() -> None:
    recorder, _ = await send_one(answer(200, {"id": "e1"}))
    body = recorder.last_json()
    key = outbound(1).key
    assert body["tags"] == [{"name": "subtask_id", "value": key}, {"name": "task_id", "value": "7"}]
    assert body["headers"] == {
        "List-Unsubscribe": "<https://edm.example.com/u/tok1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-EDM-SubTask-Id": key,
        "Feedback-ID": "7:3:edm",
    }


async def test_a_tag_value_resend_would_refuse_is_left_out_not_altered() -> None:
    message = dataclasses.replace(outbound(1), custom_args={"subtask_id": "st 1/é", "task_id": "7"})
    recorder, _ = await send_one(answer(200, {"id": "e1"}), message)
    body = recorder.last_json()
    assert body["tags"] == [{"name": "task_id", "value": "7"}]
    assert body["headers"]["X-EDM-SubTask-Id"] == outbound(1).key  # the header still carries it


async def test_non_ascii_from_name_is_encoded() -> None:
    message = dataclasses.replace(outbound(1), from_name="Café News")
    recorder, _ = await send_one(answer(200, {"id": "e1"}), message)
    from_header = recorder.last_json()["from"]
    assert from_header.isascii() and from_header.endswith("<news@mail.example.com>")


async def test_200_is_accepted_with_the_email_id() -> None:
    _, result = await send_one(answer(200, sample("resend", "api_emails_response_200.json")))
    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"


async def test_2xx_without_id_is_auth_config() -> None:
    _, result = await send_one(answer(200, {"object": "something else"}))
    assert result.outcome is Outcome.AUTH_CONFIG


def _error(status: int, name: str, message: str = "details") -> Any:
    return answer(status, {"statusCode": status, "name": name, "message": message})


@pytest.mark.parametrize(
    ("status", "name", "message", "expected"),
    [
        (401, "missing_api_key", "Missing API key in the authorization header.", Outcome.AUTH_CONFIG),
        (403, "invalid_api_key", "API key is invalid.", Outcome.AUTH_CONFIG),
        (400, "validation_error", "API key is invalid", Outcome.AUTH_CONFIG),
        (403, "validation_error", "You can only send testing emails to your own email address.", Outcome.AUTH_CONFIG),
        (422, "invalid_from_address", "Invalid `from` field.", Outcome.AUTH_CONFIG),
        (422, "validation_error", "The `subject` field is missing.", Outcome.PERMANENT),
        (409, "invalid_idempotent_request", "Same idempotency key used with a different payload.", Outcome.PERMANENT),
        (
            409,
            "concurrent_idempotent_requests",
            "Same idempotency key used while a request is in progress.",
            Outcome.TRANSIENT,
        ),
        (500, "internal_server_error", "Unexpected error.", Outcome.TRANSIENT),
        (429, "daily_quota_exceeded", "You have reached your daily email sending quota.", Outcome.QUOTA_EXHAUSTED),
        (429, "monthly_quota_exceeded", "You have reached your monthly email sending quota.", Outcome.QUOTA_EXHAUSTED),
    ],
)
async def test_error_names_map_to_spec_classes(status: int, name: str, message: str, expected: Outcome) -> None:
    _, result = await send_one(_error(status, name, message))
    assert result.outcome is expected
    assert result.provider_code == name
    assert result.status == status
    assert API_KEY not in result.message


async def test_invalid_to_address_is_permanent_and_rejects_the_recipient() -> None:
    _, result = await send_one(_error(422, "validation_error", "Invalid `to` field. The email address is invalid."))
    assert result.outcome is Outcome.PERMANENT
    assert result.recipient_rejected


async def test_rate_limit_is_throttled_with_retry_after_or_ratelimit_reset() -> None:
    body = {"statusCode": 429, "name": "rate_limit_exceeded", "message": "Too many requests."}
    _, with_retry_after = await send_one(answer(429, body, headers={"retry-after": "2"}))
    _, with_reset = await send_one(answer(429, body, headers={"ratelimit-reset": "5"}))
    assert with_retry_after.outcome is Outcome.THROTTLED and with_retry_after.retry_after == 2.0
    assert with_reset.outcome is Outcome.THROTTLED and with_reset.retry_after == 5.0


async def test_connect_error_is_transient_and_read_timeout_maybe_sent() -> None:
    _, refused = await send_one(raising(httpx.ConnectError("refused")))
    _, timed_out = await send_one(raising(httpx.ReadTimeout("slow")))
    assert refused.outcome is Outcome.TRANSIENT
    assert timed_out.outcome is Outcome.MAYBE_SENT


async def test_more_messages_than_max_batch_are_sent_one_call_each_in_order() -> None:
    recorder = Recorder(answer(200, {"id": "e1"}))
    results = await adapter(recorder).send([outbound(1), outbound(2)])
    assert [r.key for r in results] == [outbound(1).key, outbound(2).key]
    assert [r.headers["idempotency-key"] for r in recorder.requests] == [outbound(1).key, outbound(2).key]


def test_capabilities_declare_the_documented_24_hour_idempotency() -> None:
    assert ResendAdapter.capabilities.max_batch == 1
    assert ResendAdapter.capabilities.honours_idempotency
    assert ResendAdapter.capabilities.idempotency_window_seconds == 86_400


# --------------------------------------------------------------------------------------------------------
# Webhook: Svix verification
# --------------------------------------------------------------------------------------------------------


def signed(
    body: bytes, *, key: bytes = KEY_BYTES, when: dt.datetime = NOW, msg_id: str = SVIX_ID, extra_signatures: str = ""
) -> dict[str, str]:
    timestamp = str(int(when.timestamp()))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    signature = f"{extra_signatures} v1,{base64.b64encode(digest).decode()}".strip()
    return {"svix-id": msg_id, "svix-timestamp": timestamp, "svix-signature": signature}


async def verify(body: bytes, headers: dict[str, str], *secrets: str) -> bool:
    return await WEBHOOK.verify(webhook_request(body, headers=headers), target("resend", *secrets), context(NOW))


SAMPLE_FILES = sorted(p.name for p in (SAMPLES / "resend").glob("email.*.json"))
assert len(SAMPLE_FILES) >= 8, "the Resend webhook samples moved"


@pytest.mark.parametrize("name", SAMPLE_FILES)
async def test_every_signed_sample_verifies(name: str) -> None:
    body = sample_bytes("resend", name)
    assert await verify(body, signed(body), SECRET)


async def test_any_of_several_signatures_and_any_secret_verifies() -> None:
    body = sample_bytes("resend", "email.delivered.json")
    headers = signed(body, extra_signatures="v1,bm90LXRoZS1zaWduYXR1cmU= v2,whatever")
    assert await verify(body, headers, OTHER_SECRET, SECRET)


async def test_unbranded_webhook_headers_verify() -> None:
    body = sample_bytes("resend", "email.delivered.json")
    headers = {k.replace("svix-", "webhook-"): v for k, v in signed(body).items()}
    assert await verify(body, headers, SECRET)


async def test_a_changed_body_byte_fails() -> None:
    body = sample_bytes("resend", "email.delivered.json")
    headers = signed(body)
    tampered = body.replace(b"to@example.org", b"to@example.orh")
    assert not await verify(tampered, headers, SECRET)


async def test_the_wrong_secret_fails() -> None:
    body = sample_bytes("resend", "email.delivered.json")
    assert not await verify(body, signed(body), OTHER_SECRET)


async def test_a_stale_or_future_timestamp_fails_even_when_signed() -> None:
    body = sample_bytes("resend", "email.delivered.json")
    assert not await verify(body, signed(body, when=NOW - dt.timedelta(minutes=6)), SECRET)
    assert not await verify(body, signed(body, when=NOW + dt.timedelta(minutes=6)), SECRET)
    assert await verify(body, signed(body, when=NOW - dt.timedelta(minutes=4)), SECRET)


async def test_missing_headers_unreadable_secret_or_no_secret_fail_without_raising() -> None:
    body = sample_bytes("resend", "email.delivered.json")
    headers = signed(body)
    assert not await verify(body, {}, SECRET)
    assert not await verify(body, {**headers, "svix-signature": "garbage"}, SECRET)
    assert not await verify(body, {**headers, "svix-timestamp": "yesterday"}, SECRET)
    assert not await verify(body, headers, "whsec_!!not-base64!!")
    assert not await verify(body, headers)


async def test_a_different_svix_id_breaks_the_signature() -> None:
    body = sample_bytes("resend", "email.delivered.json")
    headers = {**signed(body), "svix-id": "msg_other"}
    assert not await verify(body, headers, SECRET)


# --------------------------------------------------------------------------------------------------------
# Webhook: parsing
# --------------------------------------------------------------------------------------------------------

EMAIL_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def parse(name: str) -> NormalizedEvent:
    body = sample_bytes("resend", name)
    payload = WEBHOOK.parse(webhook_request(body, headers=signed(body)))
    assert not payload.batch
    (event,) = payload.items
    assert isinstance(event, NormalizedEvent)
    return event


def iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("name", "event_type", "bounce_class", "recipient", "created_at"),
    [
        ("email.sent.json", EventType.ACCEPTED, None, "to@example.org", "2023-09-28T17:19:43.736Z"),
        ("email.delivered.json", EventType.DELIVERED, None, "to@example.org", "2023-09-28T17:19:44.823Z"),
        (
            "email.bounced_hard.json",
            EventType.HARD_BOUNCED,
            BounceClass.HARD,
            "bounced@resend.dev",
            "2023-10-02T18:11:26.101Z",
        ),
        (
            "email.bounced_suppressed.json",
            EventType.REJECTED,
            BounceClass.SUPPRESSED,
            "blocked@example.org",
            "2023-10-01T20:01:01.598Z",
        ),
        ("email.complained.json", EventType.COMPLAINED, None, "complained@resend.dev", "2023-10-02T18:10:03.690Z"),
        ("email.opened.json", EventType.OPENED, None, "to@example.org", "2023-09-28T17:20:38.990Z"),
        ("email.clicked.json", EventType.CLICKED, None, "to@example.org", "2023-09-28T17:21:35.257Z"),
    ],
)
def test_samples_parse_with_type_class_recipient_time_and_ids(
    name: str, event_type: EventType, bounce_class: BounceClass | None, recipient: str, created_at: str
) -> None:
    event = parse(name)
    assert event.event_type is event_type
    assert event.provider_event == sample("resend", name)["type"]
    assert event.bounce_class is bounce_class
    assert event.recipient == recipient
    assert event.occurred_at == iso(created_at)
    assert event.provider_message_id == EMAIL_ID
    assert event.provider_event_id == SVIX_ID
    assert event.raw == sample("resend", name)


def test_delivery_delayed_is_deferred() -> None:
    event = parse("email.delivery_delayed.json")
    assert event.event_type is EventType.DEFERRED
    assert event.provider_message_id == "56761188-7520-42d8-8898-ff6fc54ce618"
    assert event.recipient == "delivered@resend.dev"
    assert event.occurred_at == iso("2023-02-22T23:41:12.126Z")


def test_click_keeps_link_ip_and_user_agent() -> None:
    event = parse("email.clicked.json")
    assert (event.url, event.ip, event.user_agent) == ("https://example.com/test", "192.168.1.101", "Mozilla/5.0 ...")


def test_bounce_message_is_the_reason() -> None:
    assert (parse("email.bounced_suppressed.json").reason or "").startswith("Resend has suppressed sending")


def test_sample_tags_that_are_not_ours_give_no_ids() -> None:
    event = parse("email.sent.json")
    assert event.subtask_id is None and event.task_id is None


def _event(kind: str, **data: Any) -> bytes:
    body = {
        "type": kind,
        "created_at": "2024-01-01T12:00:00.000Z",
        "data": {"email_id": "e1", "to": ["User <user1@example.org>"], "created_at": "2024-01-01T11:59:59Z", **data},
    }
    return json.dumps(body).encode()


def parse_body(body: bytes) -> NormalizedEvent:
    (event,) = WEBHOOK.parse(webhook_request(body, headers=signed(body))).items
    assert isinstance(event, NormalizedEvent)
    return event


def test_our_ids_come_from_tags_in_object_or_list_form() -> None:
    as_object = parse_body(_event("email.delivered", tags={"subtask_id": "st-1", "task_id": "7"}))
    as_list = parse_body(
        _event("email.delivered", tags=[{"name": "subtask_id", "value": "st-1"}, {"name": "task_id", "value": "7"}])
    )
    assert (as_object.subtask_id, as_object.task_id) == ("st-1", "7")
    assert (as_list.subtask_id, as_list.task_id) == ("st-1", "7")
    assert as_object.recipient == "user1@example.org"


def test_our_subtask_id_comes_from_the_echoed_header_when_tags_lack_it() -> None:
    event = parse_body(_event("email.sent", headers=[{"name": "x-edm-subtask-id", "value": "st-9"}]))
    assert event.subtask_id == "st-9"


@pytest.mark.parametrize(
    ("bounce", "event_type", "bounce_class"),
    [
        (
            {"type": "Permanent", "subType": "General", "message": "no such user"},
            EventType.HARD_BOUNCED,
            BounceClass.HARD,
        ),
        ({"type": "Transient", "subType": "MailboxFull", "message": "full"}, EventType.SOFT_BOUNCED, BounceClass.SOFT),
        (
            {"type": "Permanent", "subType": "Suppressed", "message": "on list"},
            EventType.REJECTED,
            BounceClass.SUPPRESSED,
        ),
        ({"type": "Permanent", "subType": "OnAccountSuppressionList"}, EventType.REJECTED, BounceClass.SUPPRESSED),
        ({"type": "Transient", "subType": "ContentRejected"}, EventType.REJECTED, BounceClass.BLOCK),
        ({"type": "Undetermined", "subType": "Undetermined"}, EventType.SOFT_BOUNCED, BounceClass.UNDETERMINED),
    ],
)
def test_bounce_type_and_subtype_decide_the_class(
    bounce: dict[str, str], event_type: EventType, bounce_class: BounceClass
) -> None:
    event = parse_body(_event("email.bounced", bounce=bounce))
    assert (event.event_type, event.bounce_class) == (event_type, bounce_class)


def test_failed_is_rejected_with_its_reason() -> None:
    event = parse_body(_event("email.failed", failed={"reason": "reached_daily_quota"}))
    assert event.event_type is EventType.REJECTED
    assert event.reason == "reached_daily_quota"


def test_received_is_a_reply_from_the_sender() -> None:
    event = parse_body(
        _event(
            "email.received",
            **{
                "from": "Contact <contact@example.org>",
                "to": ["in@ex.com"],
                "message_id": "<r1@example.org>",
                "subject": "Re: hi",
            },
        )
    )
    assert event.event_type is EventType.REPLIED
    assert event.recipient == "contact@example.org"
    assert event.details["message_id"] == "<r1@example.org>"


def test_unknown_type_is_parsed_as_unknown() -> None:
    event = parse_body(_event("domain.updated"))
    assert event.event_type is EventType.UNKNOWN
    assert event.provider_event == "domain.updated"


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"type": "email.sent"}', b'{"data": {}}'])
def test_a_body_that_is_not_a_resend_event_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        WEBHOOK.parse(webhook_request(body))
