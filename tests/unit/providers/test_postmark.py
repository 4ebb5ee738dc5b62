"""Postmark: single and batch requests, ErrorCode classification, webhook auth and event parsing."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from typing import Any

import httpx
import pytest

from edm.providers import postmark
from edm.providers.base import Outcome
from edm.providers.postmark import PostmarkAdapter
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent
from tests.unit.providers import support

PROVIDER = "postmark"
TOKEN = "server-token-0000-secret"
NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def adapter(
    recorder: support.Recorder, *, credentials: dict[str, Any] | None = None, **options: Any
) -> PostmarkAdapter:
    creds = {"server_token": TOKEN} if credentials is None else credentials
    return PostmarkAdapter(support.config("postmark", credentials=creds, **options), transport=recorder.transport)


def ok_item(i: int) -> dict[str, Any]:
    return {
        "To": f"user{i}@example.org",
        "SubmittedAt": "2024-05-01T12:00:00Z",
        "MessageID": f"pm-{i}",
        "ErrorCode": 0,
        "Message": "OK",
    }


OK = support.answer(200, support.sample(PROVIDER, "api_email_response_200.json"))


# --------------------------------------------------------------------------------------------------------
# Sending: requests
# --------------------------------------------------------------------------------------------------------


async def test_single_message_posts_to_email_with_token_metadata_headers_and_tracking_off() -> None:
    recorder = support.Recorder(OK)
    message = support.outbound(1)

    [result] = await adapter(recorder).send([message])

    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"
    request = recorder.last
    assert (request.method, str(request.url)) == ("POST", "https://api.postmarkapp.com/email")
    assert request.headers["X-Postmark-Server-Token"] == TOKEN
    assert request.headers["Accept"] == "application/json"
    body = recorder.last_json()
    assert body["From"] == "Example News <news@mail.example.com>"
    assert body["To"] == "User 1 <user1@example.org>"
    assert body["ReplyTo"] == "support@example.com"
    assert (body["Subject"], body["HtmlBody"], body["TextBody"]) == ("Hello 1", "<p>Hello 1</p>", "Hello 1")
    assert body["Metadata"] == {"subtask_id": message.key, "task_id": "7"}
    assert body["TrackOpens"] is False
    assert body["TrackLinks"] == "None"
    assert body["MessageStream"] == "broadcast"
    assert {h["Name"]: h["Value"] for h in body["Headers"]} == {
        "Message-ID": f"<{message.key}@mail.example.com>",
        "List-Unsubscribe": "<https://edm.example.com/u/tok1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-EDM-SubTask-Id": message.key,
        "Feedback-ID": "7:3:edm",
    }


async def test_request_carries_every_field_of_the_documented_request_but_tag() -> None:
    recorder = support.Recorder(OK)
    await adapter(recorder).send([support.outbound(1)])
    documented = support.sample(PROVIDER, "api_email_request.json")
    assert set(documented) - set(recorder.last_json()) == {"Tag"}


async def test_message_stream_option_is_used() -> None:
    recorder = support.Recorder(OK)
    await adapter(recorder, message_stream="newsletters").send([support.outbound(1)])
    assert recorder.last_json()["MessageStream"] == "newsletters"


async def test_non_ascii_sender_name_is_encoded_and_a_comma_in_a_name_is_quoted() -> None:
    recorder = support.Recorder(OK)
    message = dataclasses.replace(support.outbound(1), from_name="Zoë", to_name="Doe, Jane")
    await adapter(recorder).send([message])
    body = recorder.last_json()
    assert body["From"].isascii() and body["From"].startswith("=?utf-8?")
    assert body["To"] == '"Doe, Jane" <user1@example.org>'


async def test_several_messages_go_to_the_batch_endpoint_as_an_array_in_order() -> None:
    messages = [support.outbound(i) for i in range(1, 4)]
    recorder = support.Recorder(support.answer(200, [ok_item(i) for i in range(1, 4)]))

    results = await adapter(recorder).send(messages)

    assert str(recorder.last.url) == "https://api.postmarkapp.com/email/batch"
    body = recorder.last_json()
    assert [item["Metadata"]["subtask_id"] for item in body] == [m.key for m in messages]
    assert [item["To"] for item in body] == [f"User {i} <user{i}@example.org>" for i in range(1, 4)]
    assert all(item["TrackOpens"] is False and item["TrackLinks"] == "None" for item in body)
    assert [(r.key, r.outcome, r.provider_message_id) for r in results] == [
        (m.key, Outcome.ACCEPTED, f"pm-{i}") for i, m in enumerate(messages, start=1)
    ]


async def test_batch_results_are_classified_one_by_one() -> None:
    messages = [support.outbound(i) for i in range(1, 4)]
    inactive = support.sample(PROVIDER, "api_email_response_422_inactive_recipient.json")
    invalid = support.sample(PROVIDER, "api_email_response_422_invalid_request.json")
    recorder = support.Recorder(support.answer(200, [ok_item(1), inactive, invalid]))

    first, second, third = await adapter(recorder).send(messages)

    assert (first.outcome, first.provider_message_id) == (Outcome.ACCEPTED, "pm-1")
    assert (second.outcome, second.recipient_rejected, second.provider_code) == (Outcome.PERMANENT, True, "406")
    assert (third.outcome, third.recipient_rejected, third.provider_code) == (Outcome.PERMANENT, False, "300")


async def test_batch_answer_of_the_wrong_length_is_a_configuration_problem() -> None:
    recorder = support.Recorder(support.answer(200, [ok_item(1)]))
    results = await adapter(recorder).send([support.outbound(1), support.outbound(2)])
    assert {r.outcome for r in results} == {Outcome.AUTH_CONFIG}


def test_capabilities_allow_batches_of_500() -> None:
    assert PostmarkAdapter.capabilities.max_batch == 500
    assert PostmarkAdapter.capabilities.needs_mime is False


async def test_missing_server_token_fails_auth_config_without_a_request() -> None:
    recorder = support.Recorder(OK)
    [result] = await adapter(recorder, credentials={}).send([support.outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG
    assert recorder.requests == []


# --------------------------------------------------------------------------------------------------------
# Sending: error classes
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected", "code"),
    [
        (401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."}, Outcome.AUTH_CONFIG, "10"),
        (422, {"ErrorCode": 10, "Message": "Bad or missing Server API token."}, Outcome.AUTH_CONFIG, "10"),
        (422, {"ErrorCode": 400, "Message": "Sender signature not found"}, Outcome.AUTH_CONFIG, "400"),
        (422, {"ErrorCode": 401, "Message": "Sender signature not confirmed"}, Outcome.AUTH_CONFIG, "401"),
        (503, {"ErrorCode": 100, "Message": "Maintenance"}, Outcome.TRANSIENT, "100"),
        (422, {"ErrorCode": 100, "Message": "Maintenance"}, Outcome.TRANSIENT, "100"),
        (500, None, Outcome.TRANSIENT, "500"),
        (422, support.sample(PROVIDER, "api_email_response_422_invalid_request.json"), Outcome.PERMANENT, "300"),
        (422, {"ErrorCode": 405, "Message": "Not allowed to send"}, Outcome.QUOTA_EXHAUSTED, "405"),
        (422, {"ErrorCode": 412, "Message": "Account is pending"}, Outcome.QUOTA_EXHAUSTED, "412"),
        (422, {"ErrorCode": 413, "Message": "Account may not send"}, Outcome.QUOTA_EXHAUSTED, "413"),
        (422, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, Outcome.THROTTLED, "429"),
        (429, None, Outcome.THROTTLED, "429"),
        (422, {"ErrorCode": 409, "Message": "JSON required"}, Outcome.PERMANENT, "409"),
        (422, {"ErrorCode": 9999, "Message": "new"}, Outcome.PERMANENT, "9999"),
        (403, "<html>Forbidden</html>", Outcome.AUTH_CONFIG, "403"),
    ],
)
async def test_error_answers_map_to_error_classes(status: int, body: Any, expected: Outcome, code: str) -> None:
    recorder = support.Recorder(support.answer(status, body))
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert (result.outcome, result.status, result.provider_code) == (expected, status, code)
    assert result.recipient_rejected is False
    assert TOKEN not in result.message


async def test_inactive_recipient_is_permanent_and_marks_the_recipient_rejected() -> None:
    body = support.sample(PROVIDER, "api_email_response_422_inactive_recipient.json")
    recorder = support.Recorder(support.answer(422, body))
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert (result.outcome, result.recipient_rejected, result.provider_code) == (Outcome.PERMANENT, True, "406")
    assert "inactive" in result.message


async def test_rate_limit_carries_retry_after() -> None:
    recorder = support.Recorder(
        support.answer(429, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, headers={"Retry-After": "7"})
    )
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert (result.outcome, result.retry_after) == (Outcome.THROTTLED, 7.0)


@pytest.mark.parametrize("body", ["<html>not the api</html>", {"ErrorCode": 0}, {"Message": "OK"}])
async def test_a_2xx_that_is_not_the_api_answer_is_a_configuration_problem(body: Any) -> None:
    recorder = support.Recorder(support.answer(200, body))
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG


async def test_connect_error_is_transient() -> None:
    recorder = support.Recorder(support.raising(httpx.ConnectError("refused")))
    results = await adapter(recorder).send([support.outbound(1), support.outbound(2)])
    assert {r.outcome for r in results} == {Outcome.TRANSIENT}


async def test_read_timeout_after_sending_is_maybe_sent() -> None:
    recorder = support.Recorder(support.raising(httpx.ReadTimeout("slow")))
    [result] = await adapter(recorder).send([support.outbound(1)])
    assert result.outcome is Outcome.MAYBE_SENT


# --------------------------------------------------------------------------------------------------------
# Webhook verification
# --------------------------------------------------------------------------------------------------------


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


async def check(
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    secrets: tuple[str, ...] = ("hook:s3cret",),
) -> bool:
    request = support.webhook_request(support.sample_bytes(PROVIDER, "delivery.json"), headers=headers, query=query)
    return await postmark.webhook.verify(request, support.target("postmark", *secrets), support.context(NOW))


async def test_basic_credentials_from_the_webhook_url_verify() -> None:
    assert await check(basic("hook:s3cret"))


async def test_wrong_basic_password_fails() -> None:
    assert not await check(basic("hook:wrong"))


async def test_custom_header_token_verifies() -> None:
    assert await check({"X-Webhook-Token": "tok-123"}, secrets=("tok-123",))
    assert await check({"Authorization": "Bearer tok-123"}, secrets=("tok-123",))


async def test_any_unexpired_secret_verifies_during_rotation() -> None:
    assert await check(basic("hook:old"), secrets=("hook:new", "hook:old"))


async def test_no_credentials_fail() -> None:
    assert not await check()
    assert not await check(basic("hook:s3cret"), secrets=())


def test_postmark_needs_a_secret_and_has_no_replay_nonce() -> None:
    assert postmark.PostmarkWebhook.needs_secret is True
    request = support.webhook_request(support.sample_bytes(PROVIDER, "delivery.json"))
    assert postmark.webhook.replay_nonce(request) is None


# --------------------------------------------------------------------------------------------------------
# Parsing the sample payloads
# --------------------------------------------------------------------------------------------------------


def parse_body(body: bytes, *, inbound: bool = False) -> NormalizedEvent:
    request = dataclasses.replace(support.webhook_request(body), inbound=inbound)
    payload = postmark.webhook.parse(request)
    assert payload.batch is False and payload.control is None
    [event] = payload.items
    assert isinstance(event, NormalizedEvent)
    return event


def parse_sample(name: str) -> NormalizedEvent:
    return parse_body(support.sample_bytes(PROVIDER, name))


def parse_record(record: dict[str, Any]) -> NormalizedEvent:
    return parse_body(json.dumps(record).encode())


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_delivery_sample_is_delivered() -> None:
    event = parse_sample("delivery.json")
    assert event.event_type is EventType.DELIVERED
    assert event.provider_event == "Delivery"
    assert event.provider_message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert event.recipient == "recipient@example.com"
    assert event.occurred_at == at("2014-08-01T17:28:10.273539+00:00")
    assert event.subtask_id is None  # the sample's Metadata is not ours
    assert event.provider_event_id is None
    assert event.raw == support.sample(PROVIDER, "delivery.json")


def test_hard_bounce_sample_is_hard_with_codes_and_the_bounce_id_as_dedupe_key() -> None:
    event = parse_sample("bounce_hard.json")
    assert event.event_type is EventType.HARD_BOUNCED
    assert event.bounce_class is BounceClass.HARD
    assert event.provider_event_id == "901542550"
    assert event.provider_message_id == "2706ee8a-737c-4285-b032-ccd317af53ed"
    assert event.recipient == "bounce@example.com"
    assert event.occurred_at == at("2016-04-27T20:28:50.396393+00:00")
    assert (event.smtp_code, event.enhanced_code) == (550, "5.1.1")
    assert event.details["Inactive"] is True


def test_unsubscribe_request_bounce_sample_is_unsubscribed() -> None:
    event = parse_sample("bounce_type_unsubscribe_request.json")
    assert event.event_type is EventType.UNSUBSCRIBED
    assert event.provider_event_id == "555555555"
    assert event.provider_message_id == "5555555-5555555-5555-5555555"


def test_open_sample_is_opened_with_user_agent() -> None:
    event = parse_sample("open.json")
    assert event.event_type is EventType.OPENED
    assert event.provider_message_id == "f4830d10-9c35-4f0c-bca3-3d9b459821f8"
    assert event.recipient == "recipient@example.com"
    assert event.occurred_at == at("2016-04-27T20:21:41.249368+00:00")
    assert event.user_agent == "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0"
    assert event.details["FirstOpen"] is True


def test_click_sample_is_clicked_with_link_and_ip() -> None:
    event = parse_sample("click.json")
    assert event.event_type is EventType.CLICKED
    assert event.url == "https://example.com/click/me"
    assert event.ip == "8.8.8.8"
    assert event.occurred_at == at("2017-10-25T15:21:11.906561+00:00")
    assert event.recipient == "recipient@example.com"


def test_subscription_change_after_a_hard_bounce_is_a_suppressed_hard_bounce() -> None:
    event = parse_sample("subscription_change_hard_bounce.json")
    assert (event.event_type, event.bounce_class) == (EventType.HARD_BOUNCED, BounceClass.SUPPRESSED)
    assert event.recipient == "john@example.com"
    assert event.provider_message_id == "b4cb783d-78ed-43f2-983b-63f55c712dc8"
    assert event.occurred_at == at("2022-06-05T17:17:32+00:00")


def test_subscription_change_reactivating_is_unknown() -> None:
    event = parse_sample("subscription_change_resubscribe.json")
    assert event.event_type is EventType.UNKNOWN
    assert event.details["SuppressSending"] is False


def test_inbound_sample_becomes_a_replied_event_without_subtask_ids() -> None:
    event = parse_body(support.sample_bytes(PROVIDER, "inbound.json"), inbound=True)
    assert event.event_type is EventType.REPLIED
    assert (event.subtask_id, event.provider_message_id) == (None, None)
    assert event.provider_event_id == "22c74902-a0c1-4511-804f2-341342852c90"
    assert event.details["from"] == "from+test@example.org"
    assert event.details["header_message_id"] == "<CAEPk3R+4Zr@mail.example.org>"
    assert event.occurred_at == dt.datetime(2017, 10, 12, 1, 31, 4, tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------------------
# Documented payloads the samples folder leaves out
# --------------------------------------------------------------------------------------------------------

OUR_METADATA = {"subtask_id": "00000000-0000-4000-8000-000000000001", "task_id": "7"}


def test_our_ids_come_back_from_metadata() -> None:
    record = {**support.sample(PROVIDER, "delivery.json"), "Metadata": OUR_METADATA}
    event = parse_record(record)
    assert (event.subtask_id, event.task_id) == ("00000000-0000-4000-8000-000000000001", "7")


def test_bounce_content_header_gives_our_id_when_metadata_is_missing() -> None:
    record = {
        **support.sample(PROVIDER, "bounce_hard.json"),
        "Content": "Return-Path: <>\r\nX-EDM-SubTask-Id: st_in_content\r\nSubject: x\r\n\r\nbody",
    }
    assert parse_record(record).subtask_id == "st_in_content"


def test_spam_complaint_record_is_complained_with_its_id() -> None:
    event = parse_record(
        {
            "RecordType": "SpamComplaint",
            "ID": 42,
            "Type": "SpamComplaint",
            "TypeCode": 100001,
            "MessageID": "pm-1",
            "Email": "a@example.org",
            "BouncedAt": "2024-05-01T10:00:00Z",
            "Metadata": OUR_METADATA,
        }
    )
    assert event.event_type is EventType.COMPLAINED
    assert (event.provider_event_id, event.recipient, event.subtask_id) == (
        "42",
        "a@example.org",
        OUR_METADATA["subtask_id"],
    )
    assert event.occurred_at == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("bounce_type", "event_type", "bounce_class"),
    [
        ("HardBounce", EventType.HARD_BOUNCED, BounceClass.HARD),
        ("BadEmailAddress", EventType.HARD_BOUNCED, BounceClass.INVALID),
        ("Transient", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("SoftBounce", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("DnsError", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("SpamNotification", EventType.REJECTED, BounceClass.BLOCK),
        ("Blocked", EventType.REJECTED, BounceClass.BLOCK),
        ("DMARCPolicy", EventType.REJECTED, BounceClass.BLOCK),
        ("ManuallyDeactivated", EventType.REJECTED, BounceClass.SUPPRESSED),
        ("SpamComplaint", EventType.COMPLAINED, None),
        ("AutoResponder", EventType.UNKNOWN, None),
        ("SomethingNew", EventType.UNKNOWN, None),
    ],
)
def test_bounce_types_map_to_event_types_and_classes(
    bounce_type: str, event_type: EventType, bounce_class: BounceClass | None
) -> None:
    record = {**support.sample(PROVIDER, "bounce_hard.json"), "Type": bounce_type}
    event = parse_record(record)
    assert (event.event_type, event.bounce_class) == (event_type, bounce_class)


def test_bounce_with_only_a_type_code_is_classified_by_the_code() -> None:
    record = {k: v for k, v in support.sample(PROVIDER, "bounce_hard.json").items() if k != "Type"}
    event = parse_record({**record, "TypeCode": 4096})
    assert (event.event_type, event.bounce_class) == (EventType.SOFT_BOUNCED, BounceClass.SOFT)


@pytest.mark.parametrize(
    ("reason", "event_type"),
    [
        ("ManualSuppression", EventType.UNSUBSCRIBED),
        (None, EventType.UNSUBSCRIBED),
        ("SpamComplaint", EventType.COMPLAINED),
    ],
)
def test_subscription_change_suppressing_by_reason(reason: str | None, event_type: EventType) -> None:
    record = {**support.sample(PROVIDER, "subscription_change_hard_bounce.json"), "SuppressionReason": reason}
    assert parse_record(record).event_type is event_type


def test_unknown_record_type_is_kept_as_unknown() -> None:
    event = parse_record(
        {"RecordType": "NewThing", "MessageID": "pm-1", "ReceivedAt": "2024-05-01T10:00:00Z", "Metadata": OUR_METADATA}
    )
    assert (event.event_type, event.provider_event) == (EventType.UNKNOWN, "NewThing")
    assert event.subtask_id == OUR_METADATA["subtask_id"]
    assert event.occurred_at == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{broken", "application/json"),
        (b"[]", "application/json"),
        (b'{"MessageID": "x"}', "application/json"),
        (b'{"RecordType": "Delivery"}', "text/plain"),
    ],
)
def test_bodies_that_are_not_postmark_events_are_malformed(body: bytes, content_type: str) -> None:
    with pytest.raises(MalformedPayload):
        postmark.webhook.parse(support.webhook_request(body, content_type=content_type))
