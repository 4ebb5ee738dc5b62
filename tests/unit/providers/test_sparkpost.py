"""SparkPost: the transmission request (single and batched), every answer's class, and the webhook parser."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from typing import Any

import httpx
import pytest

from edm.providers.base import OutboundMessage, Outcome
from edm.providers.sparkpost import MAX_BATCH, WEBHOOK, SparkPostAdapter
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

API_KEY = "sp-test-key"
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
OK = {"results": {"total_rejected_recipients": 0, "total_accepted_recipients": 1, "id": "11668787484950529"}}


def adapter(recorder: Recorder, **options: Any) -> SparkPostAdapter:
    return SparkPostAdapter(
        config("sparkpost", credentials={"api_key": API_KEY}, batch_size=MAX_BATCH, **options),
        transport=recorder.transport,
    )


async def send(respond: Any, messages: list[OutboundMessage], **options: Any) -> tuple[Recorder, list[Any]]:
    recorder = Recorder(respond)
    results = await adapter(recorder, **options).send(messages)
    assert [r.key for r in results] == [m.key for m in messages]
    return recorder, results


# --------------------------------------------------------------------------------------------------------
# Sending: the request
# --------------------------------------------------------------------------------------------------------


async def test_request_posts_a_transmission_with_the_bare_api_key() -> None:
    recorder, _ = await send(answer(200, OK), [outbound(1)])
    assert recorder.last.method == "POST"
    assert str(recorder.last.url) == "https://api.sparkpost.com/api/v1/transmissions"
    assert recorder.last.headers["authorization"] == API_KEY


@pytest.mark.parametrize(
    ("options", "url"),
    [
        ({"region": "eu"}, "https://api.eu.sparkpost.com/api/v1/transmissions"),
        ({"region": "us"}, "https://api.sparkpost.com/api/v1/transmissions"),
        ({"region": "eu", "base_url": "http://sp.test/"}, "http://sp.test/api/v1/transmissions"),
    ],
)
async def test_region_and_base_url_choose_the_endpoint(options: dict[str, str], url: str) -> None:
    recorder, _ = await send(answer(200, OK), [outbound(1)], **options)
    assert str(recorder.last.url) == url


def test_unknown_region_is_refused() -> None:
    with pytest.raises(ValueError, match="region"):
        SparkPostAdapter(config("sparkpost", region="mars"))


async def test_tracking_is_off_in_every_request() -> None:
    recorder, _ = await send(answer(200, OK), [outbound(1)])
    assert recorder.last_json()["options"] == {"open_tracking": False, "click_tracking": False}


async def test_ip_pool_option_is_passed() -> None:
    recorder, _ = await send(answer(200, OK), [outbound(1)], ip_pool="marketing")
    assert recorder.last_json()["options"]["ip_pool"] == "marketing"


async def test_content_is_substitutions_and_the_recipient_brings_its_own_values() -> None:
    recorder, _ = await send(answer(200, OK), [outbound(1)])
    body = recorder.last_json()
    content = body["content"]
    assert content["from"] == {"email": "news@mail.example.com", "name": "Example News"}
    assert content["reply_to"] == "support@example.com"
    assert (content["subject"], content["html"], content["text"]) == (
        "{{{edm_subject}}}",
        "{{{edm_html}}}",
        "{{{edm_text}}}",
    )
    (recipient,) = body["recipients"]
    key = outbound(1).key
    assert recipient["address"] == {"email": "user1@example.org", "name": "User 1"}
    assert recipient["metadata"] == {"subtask_id": key, "task_id": "7"}
    values = recipient["substitution_data"]
    assert (values["edm_subject"], values["edm_html"], values["edm_text"]) == ("Hello 1", "<p>Hello 1</p>", "Hello 1")
    rendered_headers = {name: values[ref.strip("{}")] for name, ref in content["headers"].items()}
    assert rendered_headers == {
        "Message-ID": f"<{key}@mail.example.com>",
        "List-Unsubscribe": "<https://edm.example.com/u/tok1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-EDM-SubTask-Id": key,
        "Feedback-ID": "7:3:edm",
    }


async def test_literal_braces_in_a_mail_stay_out_of_the_template() -> None:
    message = dataclasses.replace(outbound(1), html="<p>{{ not a variable }}</p>", subject="{{{x}}}")
    recorder, _ = await send(answer(200, OK), [message])
    body = recorder.last_json()
    assert "not a variable" not in json.dumps(body["content"])
    assert body["recipients"][0]["substitution_data"]["edm_html"] == "<p>{{ not a variable }}</p>"


async def test_a_batch_is_one_transmission_with_one_recipient_per_message() -> None:
    messages = [outbound(i) for i in (1, 2, 3)]
    recorder, results = await send(
        answer(200, {"results": {"id": "t-9", "total_accepted_recipients": 3, "total_rejected_recipients": 0}}),
        messages,
    )
    assert len(recorder.requests) == 1
    recipients = recorder.last_json()["recipients"]
    assert [r["address"]["email"] for r in recipients] == [
        "user1@example.org",
        "user2@example.org",
        "user3@example.org",
    ]
    assert [r["metadata"]["subtask_id"] for r in recipients] == [m.key for m in messages]
    assert [r["substitution_data"]["edm_subject"] for r in recipients] == ["Hello 1", "Hello 2", "Hello 3"]
    assert all(r.outcome is Outcome.ACCEPTED and r.provider_message_id == "t-9" for r in results)


async def test_messages_with_different_senders_go_in_separate_transmissions_in_order() -> None:
    other = dataclasses.replace(outbound(2), from_name="Other Sender")
    messages = [outbound(1), other, outbound(3)]
    recorder, results = await send(answer(200, OK), messages)
    assert len(recorder.requests) == 2
    first, second = (json.loads(r.content) for r in recorder.requests)
    assert [r["address"]["email"] for r in first["recipients"]] == ["user1@example.org", "user3@example.org"]
    assert second["content"]["from"]["name"] == "Other Sender"
    assert all(r.outcome is Outcome.ACCEPTED for r in results)


async def test_a_batch_above_max_batch_is_split() -> None:
    messages = [outbound(i) for i in range(MAX_BATCH + 1)]
    recorder, results = await send(answer(200, OK), messages)
    assert [len(json.loads(r.content)["recipients"]) for r in recorder.requests] == [MAX_BATCH, 1]
    assert len(results) == MAX_BATCH + 1


# --------------------------------------------------------------------------------------------------------
# Sending: the answers
# --------------------------------------------------------------------------------------------------------


async def test_200_is_accepted_with_the_transmission_id() -> None:
    _, (result,) = await send(answer(200, sample("sparkpost", "api_transmissions_response_200.json")), [outbound(1)])
    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == "11668787484950529"


async def test_partial_rejection_still_records_every_message_accepted() -> None:
    body = {"results": {"id": "t-1", "total_accepted_recipients": 1, "total_rejected_recipients": 1}}
    _, results = await send(answer(200, body), [outbound(1), outbound(2)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.ACCEPTED]


async def test_2xx_without_results_is_auth_config() -> None:
    _, (result,) = await send(answer(200, {"unexpected": True}), [outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG


def _errors(status: int, code: str, message: str, description: str = "") -> Any:
    return answer(status, {"errors": [{"message": message, "code": code, "description": description}]})


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (420, "2101", "Exceed Sending Limit (hourly)", Outcome.QUOTA_EXHAUSTED),
        (420, "2103", "Exceed Sending Limit (sandbox)", Outcome.QUOTA_EXHAUSTED),
        (401, "1304", "Unauthorized.", Outcome.AUTH_CONFIG),
        (403, "1100", "permission denied", Outcome.AUTH_CONFIG),
        (400, "7001", "Invalid domain", Outcome.AUTH_CONFIG),
        (400, "7000", "Sending domain blacklisted", Outcome.AUTH_CONFIG),
        (422, "1300", "invalid data format/type/length", Outcome.PERMANENT),
        (422, "3000", "template language syntax error", Outcome.PERMANENT),
        (400, "1502", "Server resources unavailable", Outcome.TRANSIENT),
        (503, "1900", "Message generation module not available", Outcome.TRANSIENT),
        (500, "1500", "Failed to update database", Outcome.TRANSIENT),
    ],
)
async def test_error_codes_map_to_spec_classes(status: int, code: str, message: str, expected: Outcome) -> None:
    _, results = await send(_errors(status, code, message), [outbound(1), outbound(2)])
    assert [r.outcome for r in results] == [expected, expected]
    assert all(r.provider_code == code and r.status == status and API_KEY not in r.message for r in results)


async def test_unconfigured_sending_domain_text_is_auth_config() -> None:
    _, (result,) = await send(
        _errors(400, "9999", "Invalid domain", "Unconfigured Sending Domain <x.com>"), [outbound(1)]
    )
    assert result.outcome is Outcome.AUTH_CONFIG


async def test_generation_rejected_is_permanent_and_rejects_the_recipient() -> None:
    _, (result,) = await send(_errors(400, "1902", "Message generation rejected"), [outbound(1)])
    assert result.outcome is Outcome.PERMANENT
    assert result.recipient_rejected


async def test_429_is_throttled_with_retry_after() -> None:
    _, (result,) = await send(
        answer(429, {"errors": [{"message": "Too many requests"}]}, headers={"retry-after": "4"}), [outbound(1)]
    )
    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after == 4.0


async def test_connect_error_is_transient_and_read_timeout_maybe_sent() -> None:
    _, refused = await send(raising(httpx.ConnectError("refused")), [outbound(1), outbound(2)])
    _, timed_out = await send(raising(httpx.ReadTimeout("slow")), [outbound(1)])
    assert [r.outcome for r in refused] == [Outcome.TRANSIENT, Outcome.TRANSIENT]
    assert timed_out[0].outcome is Outcome.MAYBE_SENT


def test_capabilities_batch_without_idempotency() -> None:
    assert SparkPostAdapter.capabilities.max_batch == MAX_BATCH
    assert not SparkPostAdapter.capabilities.honours_idempotency


# --------------------------------------------------------------------------------------------------------
# Webhook: verification and control messages
# --------------------------------------------------------------------------------------------------------


async def test_basic_credentials_verify_and_wrong_ones_fail() -> None:
    body = sample_bytes("sparkpost", "delivery.json")
    good = webhook_request(body, headers={"Authorization": "Basic " + base64.b64encode(b"sp:pw").decode()})
    bad = webhook_request(body, headers={"Authorization": "Basic " + base64.b64encode(b"sp:nope").decode()})
    assert await WEBHOOK.verify(good, target("sparkpost", "sp:pw"), context(NOW))
    assert not await WEBHOOK.verify(bad, target("sparkpost", "sp:pw"), context(NOW))
    assert not await WEBHOOK.verify(webhook_request(body), target("sparkpost", "sp:pw"), context(NOW))


async def test_oauth_bearer_token_verifies() -> None:
    request = webhook_request(b"[]", headers={"Authorization": "Bearer tok-1"})
    assert await WEBHOOK.verify(request, target("sparkpost", "tok-0", "tok-1"), context(NOW))


def test_the_creation_ping_is_a_control_message_without_events() -> None:
    payload = WEBHOOK.parse(webhook_request(sample_bytes("sparkpost", "ping.json")))
    assert payload.control == "ping"
    assert payload.items == []


# --------------------------------------------------------------------------------------------------------
# Webhook: parsing
# --------------------------------------------------------------------------------------------------------


def parse(name: str) -> NormalizedEvent:
    payload = WEBHOOK.parse(webhook_request(sample_bytes("sparkpost", name)))
    assert payload.batch and payload.control is None
    (event,) = payload.items
    assert isinstance(event, NormalizedEvent)
    assert event.raw == sample("sparkpost", name)[0]
    return event


def epoch(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


@pytest.mark.parametrize(
    ("name", "event_type", "bounce_class", "recipient", "event_id", "transmission_id", "occurred_at"),
    [
        (
            "injection.json",
            EventType.ACCEPTED,
            None,
            "recipient@example.com",
            "92356927693813856",
            "65832150921904138",
            epoch(1454442600),
        ),
        (
            "delivery.json",
            EventType.DELIVERED,
            None,
            "recipient@example.com",
            "92356927693813856",
            "65832150921904138",
            epoch(1454442600),
        ),
        (
            "delay.json",
            EventType.DEFERRED,
            None,
            "recipient@nomx.example.com",
            "84345317653675522",
            "84345317650824116",
            epoch(1464825748),
        ),
        (
            "bounce.json",
            EventType.HARD_BOUNCED,
            BounceClass.HARD,
            "bounce@example.com",
            "84345317653491230",
            "84345317650824116",
            epoch(1464824548),
        ),
        (
            "generation_failure.json",
            EventType.REJECTED,
            BounceClass.UNDETERMINED,
            "recipient@example.com",
            "139013368081587254",
            "139013368081177607",
            dt.datetime(2018, 10, 11, 23, 24, 45, tzinfo=dt.UTC),
        ),
        (
            "generation_rejection.json",
            EventType.REJECTED,
            BounceClass.SUPPRESSED,
            "suppressed@example.com",
            "102360394390563734",
            "102360394387646691",
            epoch(1464900034),
        ),
        (
            "list_unsubscribe.json",
            EventType.UNSUBSCRIBED,
            None,
            "recipient@example.com",
            "66331590532986193",
            "84345993965073285",
            epoch(1464894280),
        ),
        ("open.json", EventType.OPENED, None, "recipient@example.com", None, None, None),
        ("initial_open.json", EventType.OPENED, None, "recipient@example.com", None, None, None),
        ("amp_click.json", EventType.CLICKED, None, "recipient@example.com", None, None, None),
    ],
)
def test_samples_parse_with_type_class_recipient_ids_and_time(
    name: str,
    event_type: EventType,
    bounce_class: BounceClass | None,
    recipient: str,
    event_id: str | None,
    transmission_id: str | None,
    occurred_at: dt.datetime | None,
) -> None:
    event = parse(name)
    assert event.event_type is event_type
    assert event.provider_event == name.removesuffix(".json")
    assert event.bounce_class is bounce_class
    assert event.recipient == recipient
    assert event.provider_event_id == event_id
    assert event.provider_message_id == transmission_id
    assert event.occurred_at == occurred_at
    assert event.subtask_id is None  # the samples carry someone else's rcpt_meta


def test_bounce_keeps_smtp_code_enhanced_code_and_reason() -> None:
    event = parse("bounce.json")
    assert (event.smtp_code, event.enhanced_code) == (550, "5.1.1")
    assert event.reason == "550 5.1.1 <bounce@example.com>: Recipient address rejected: User unknown"
    assert event.details["message_id"] == "0004e3724f57753a3561"


def test_delay_keeps_its_temporary_codes() -> None:
    event = parse("delay.json")
    assert (event.smtp_code, event.enhanced_code) == (454, "4.4.4")


def test_click_and_open_keep_url_and_user_agent() -> None:
    click = parse("amp_click.json")
    assert click.url == "http://example.com"
    assert (click.user_agent or "").startswith("Mozilla/5.0")
    assert parse("open.json").url is None


def element(kind: str = "delivery", group: str = "message_event", **fields: Any) -> dict[str, Any]:
    event = {
        "type": kind,
        "event_id": "e-1",
        "transmission_id": "t-1",
        "rcpt_to": "user1@example.org",
        "timestamp": "1700000000",
        "rcpt_meta": {"subtask_id": "st-1", "task_id": "7"},
        **fields,
    }
    return {"msys": {group: event}}


def parse_elements(*elements: Any) -> list[NormalizedEvent | BadElement]:
    return WEBHOOK.parse(webhook_request(json.dumps(list(elements)).encode())).items


def test_our_ids_come_from_rcpt_meta() -> None:
    (event,) = parse_elements(element())
    assert isinstance(event, NormalizedEvent)
    assert (event.subtask_id, event.task_id) == ("st-1", "7")
    assert event.occurred_at == epoch(1700000000)


@pytest.mark.parametrize(
    ("bounce_class", "event_type", "expected"),
    [
        ("10", EventType.HARD_BOUNCED, BounceClass.HARD),
        ("30", EventType.HARD_BOUNCED, BounceClass.HARD),
        ("90", EventType.HARD_BOUNCED, BounceClass.HARD),
        ("20", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("22", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("40", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("60", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("100", EventType.SOFT_BOUNCED, BounceClass.SOFT),
        ("50", EventType.REJECTED, BounceClass.BLOCK),
        ("52", EventType.REJECTED, BounceClass.BLOCK),
        ("54", EventType.REJECTED, BounceClass.BLOCK),
        ("25", EventType.REJECTED, BounceClass.SUPPRESSED),
        ("1", EventType.SOFT_BOUNCED, BounceClass.UNDETERMINED),
        (None, EventType.SOFT_BOUNCED, BounceClass.UNDETERMINED),
    ],
)
@pytest.mark.parametrize("kind", ["bounce", "out_of_band"])
def test_bounce_classes_follow_sparkposts_categories(
    kind: str, bounce_class: str | None, event_type: EventType, expected: BounceClass
) -> None:
    (event,) = parse_elements(element(kind, bounce_class=bounce_class))
    assert isinstance(event, NormalizedEvent)
    assert (event.event_type, event.bounce_class) == (event_type, expected)


def test_policy_rejection_is_a_block_unless_suppressed() -> None:
    blocked, suppressed = parse_elements(
        element("policy_rejection", reason="550 5.7.1 [internal] Forbidden by policy"),
        element("policy_rejection", bounce_class="25", reason="recipient address suppressed"),
    )
    assert isinstance(blocked, NormalizedEvent) and isinstance(suppressed, NormalizedEvent)
    assert (blocked.event_type, blocked.bounce_class) == (EventType.REJECTED, BounceClass.BLOCK)
    assert (suppressed.event_type, suppressed.bounce_class) == (EventType.REJECTED, BounceClass.SUPPRESSED)


def test_spam_complaint_is_complained_and_link_unsubscribe_unsubscribed() -> None:
    complaint, unsubscribe = parse_elements(
        element("spam_complaint", fbtype="abuse"), element("link_unsubscribe", group="unsubscribe_event")
    )
    assert isinstance(complaint, NormalizedEvent) and isinstance(unsubscribe, NormalizedEvent)
    assert complaint.event_type is EventType.COMPLAINED
    assert unsubscribe.event_type is EventType.UNSUBSCRIBED


def test_unknown_type_is_parsed_as_unknown() -> None:
    (event,) = parse_elements(element("relay_delivery", group="relay_event"))
    assert isinstance(event, NormalizedEvent)
    assert event.event_type is EventType.UNKNOWN
    assert event.provider_event == "relay_delivery"


def test_bad_elements_stand_alone_in_the_batch() -> None:
    items = parse_elements(element(), "text", {"msys": "x"}, {"msys": {}}, element("bounce", bounce_class="10"))
    assert [type(i) for i in items] == [NormalizedEvent, BadElement, BadElement, BadElement, NormalizedEvent]
    assert all(isinstance(i, BadElement) and i.error for i in items[1:4])


@pytest.mark.parametrize("body", [b"{not json", b'"ping"', b'{"results": []}'])
def test_a_body_that_is_not_a_sparkpost_batch_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        WEBHOOK.parse(webhook_request(body))
