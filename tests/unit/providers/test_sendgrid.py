"""SendGrid: the v3 mail/send adapter (request shape, batching, error classes) and the signed Event Webhook."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edm import clock
from edm.providers.base import OutboundMessage, Outcome
from edm.providers.sendgrid import HTML_TAG, TEXT_TAG, SendGridAdapter, plan_requests, webhook, x_message_id
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

API_KEY = "SG.test-key"
ACCEPTED = answer(202, b"", headers={"X-Message-Id": "Lli-03HcQ5-JLybO9fXsJg"})


def adapter(recorder: Recorder, **options: Any) -> SendGridAdapter:
    return SendGridAdapter(
        config("sendgrid", credentials={"api_key": API_KEY}, batch_size=1000, **options), transport=recorder.transport
    )


def big(i: int) -> OutboundMessage:
    """A message whose html and text exceed SendGrid's 10,000-byte substitution limit."""
    message = outbound(i)
    return OutboundMessage(
        **{
            **{f: getattr(message, f) for f in message.__dataclass_fields__},
            "html": "<p>" + "x" * 9_000 + "</p>",
            "text": "y" * 2_000,
        }
    )


# --------------------------------------------------------------------------------------------------------
# Sending: request shape
# --------------------------------------------------------------------------------------------------------


async def test_single_message_request_carries_ids_headers_inline_content_and_tracking_off() -> None:
    recorder = Recorder(ACCEPTED)
    results = await adapter(recorder).send([outbound(1)])

    request = recorder.last
    assert request.method == "POST"
    assert str(request.url) == "https://api.sendgrid.com/v3/mail/send"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = recorder.last_json()
    message = outbound(1)
    assert body["from"] == {"email": "news@mail.example.com", "name": "Example News"}
    assert body["reply_to"] == {"email": "support@example.com"}
    [personalization] = body["personalizations"]
    assert personalization["to"] == [{"email": "user1@example.org", "name": "User 1"}]
    assert personalization["subject"] == "Hello 1"
    assert personalization["custom_args"] == {"subtask_id": message.key, "task_id": "7"}
    assert personalization["headers"] == {
        "Message-ID": f"<{message.key}@mail.example.com>",
        "List-Unsubscribe": "<https://edm.example.com/u/tok1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-EDM-SubTask-Id": message.key,
        "Feedback-ID": "7:3:edm",
    }
    assert "substitutions" not in personalization
    assert body["content"] == [
        {"type": "text/plain", "value": "Hello 1"},
        {"type": "text/html", "value": "<p>Hello 1</p>"},
    ]
    tracking = body["tracking_settings"]
    assert tracking["click_tracking"]["enable"] is False
    assert tracking["open_tracking"]["enable"] is False
    assert tracking["subscription_tracking"]["enable"] is False

    [result] = results
    assert result.outcome is Outcome.ACCEPTED
    assert result.key == message.key
    assert result.status == 202
    assert result.provider_message_id == "Lli-03HcQ5-JLybO9fXsJg"


async def test_custom_args_values_are_sent_as_strings_and_reserved_headers_are_dropped() -> None:
    base = outbound(1)
    message = OutboundMessage(
        **{
            **{f: getattr(base, f) for f in base.__dataclass_fields__},
            "custom_args": {"subtask_id": base.key, "task_id": 7},
            "headers": {"To": "x@example.org", "List-Unsubscribe": "<https://u>"},
        }
    )
    recorder = Recorder(ACCEPTED)
    await adapter(recorder).send([message])
    [personalization] = recorder.last_json()["personalizations"]
    assert personalization["custom_args"] == {"subtask_id": base.key, "task_id": "7"}
    # "To" is reserved by SendGrid; our subtask header is added even when the composer left it out
    assert personalization["headers"] == {"List-Unsubscribe": "<https://u>", "X-EDM-SubTask-Id": base.key}


async def test_eu_region_and_base_url_option_choose_the_endpoint() -> None:
    recorder = Recorder(ACCEPTED)
    await adapter(recorder, region="eu").send([outbound(1)])
    assert str(recorder.last.url) == "https://api.eu.sendgrid.com/v3/mail/send"
    await adapter(recorder, base_url="https://sendgrid.test/").send([outbound(1)])
    assert str(recorder.last.url) == "https://sendgrid.test/v3/mail/send"


def test_unknown_region_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown region"):
        adapter(Recorder(ACCEPTED), region="mars")


async def test_batch_is_one_request_with_a_personalization_per_message_and_bodies_in_substitutions() -> None:
    recorder = Recorder(ACCEPTED)
    messages = [outbound(i) for i in (1, 2, 3)]
    results = await adapter(recorder).send(messages)

    assert len(recorder.requests) == 1
    body = recorder.last_json()
    assert body["content"] == [{"type": "text/plain", "value": TEXT_TAG}, {"type": "text/html", "value": HTML_TAG}]
    personalizations = body["personalizations"]
    assert [p["to"][0]["email"] for p in personalizations] == [
        "user1@example.org",
        "user2@example.org",
        "user3@example.org",
    ]
    for message, personalization in zip(messages, personalizations, strict=True):
        assert personalization["subject"] == message.subject
        assert personalization["custom_args"] == {"subtask_id": message.key, "task_id": "7"}
        assert personalization["headers"]["X-EDM-SubTask-Id"] == message.key
        assert personalization["headers"]["List-Unsubscribe"] == message.headers["List-Unsubscribe"]
        assert personalization["substitutions"] == {HTML_TAG: message.html, TEXT_TAG: message.text}
    assert [r.key for r in results] == [m.key for m in messages]
    assert {r.provider_message_id for r in results} == {"Lli-03HcQ5-JLybO9fXsJg"}
    assert all(r.outcome is Outcome.ACCEPTED for r in results)


async def test_message_over_the_substitution_limit_goes_alone_in_the_same_call_results_in_input_order() -> None:
    ids = iter(["first-request", "second-request"])

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, headers={"X-Message-Id": next(ids)})

    recorder = Recorder(respond)
    messages = [outbound(1), big(2), outbound(3)]
    results = await adapter(recorder).send(messages)

    assert len(recorder.requests) == 2
    batch, alone = (json.loads(r.content) for r in recorder.requests)
    assert [p["to"][0]["email"] for p in batch["personalizations"]] == ["user1@example.org", "user3@example.org"]
    assert [p["to"][0]["email"] for p in alone["personalizations"]] == ["user2@example.org"]
    assert "substitutions" not in alone["personalizations"][0]
    assert alone["content"][1]["value"] == messages[1].html
    assert [r.key for r in results] == [m.key for m in messages]
    assert [r.provider_message_id for r in results] == ["first-request", "second-request", "first-request"]


def test_plan_puts_a_repeated_address_and_a_different_sender_in_other_requests() -> None:
    base = outbound(3)
    other_sender = OutboundMessage(
        **{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "from_address": "other@mail.example.com"}
    )
    messages = [outbound(1), outbound(2), outbound(9, to="USER1@example.org"), other_sender]
    assert plan_requests(messages) == [[0, 1], [2], [3]]


# --------------------------------------------------------------------------------------------------------
# Sending: answers and error classes
# --------------------------------------------------------------------------------------------------------


async def test_maximum_credits_exceeded_is_quota_exhausted_not_auth() -> None:
    recorder = Recorder(answer(401, sample("sendgrid", "api_error_401_maximum_credits.json")))
    [result] = await adapter(recorder).send([outbound(1)])
    assert result.outcome is Outcome.QUOTA_EXHAUSTED
    assert result.status == 401
    assert "Maximum credits exceeded" in result.message
    assert API_KEY not in result.message


@pytest.mark.parametrize("status", [401, 403])
async def test_other_401_and_403_are_auth_config(status: int) -> None:
    body = {
        "errors": [
            {"message": "The provided authorization grant is invalid, expired, or revoked", "field": None, "help": None}
        ]
    }
    [result] = await adapter(Recorder(answer(status, body))).send([outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG
    assert result.status == status


async def test_429_is_throttled_with_the_rate_limit_reset_header() -> None:
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    clock.freeze(now)
    reset = str(int(now.timestamp()) + 42)
    recorder = Recorder(
        answer(429, {"errors": [{"message": "too many requests"}]}, headers={"X-RateLimit-Reset": reset})
    )
    [result] = await adapter(recorder).send([outbound(1)])
    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after == pytest.approx(42.0)


async def test_429_prefers_retry_after() -> None:
    recorder = Recorder(answer(429, b"", headers={"Retry-After": "7", "X-RateLimit-Reset": "1"}))
    [result] = await adapter(recorder).send([outbound(1)])
    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after == 7.0


async def test_400_is_permanent_with_the_error_text_and_field() -> None:
    [result] = await adapter(Recorder(answer(400, sample("sendgrid", "api_error_400.json")))).send([outbound(1)])
    assert result.outcome is Outcome.PERMANENT
    assert result.provider_code == "custom_args"
    assert "Invalid type" in result.message
    assert result.recipient_rejected is False


async def test_400_about_the_recipient_address_rejects_the_recipient() -> None:
    body = {"errors": [{"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email"}]}
    [result] = await adapter(Recorder(answer(400, body))).send([outbound(1)])
    assert result.outcome is Outcome.PERMANENT
    assert result.recipient_rejected is True


async def test_batch_400_naming_one_personalization_fails_it_and_resends_the_others() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        emails = [p["to"][0]["email"] for p in json.loads(request.content)["personalizations"]]
        if "bad@example.org" in emails:
            index = emails.index("bad@example.org")
            return httpx.Response(
                400,
                json={
                    "errors": [
                        {
                            "message": "Does not contain a valid address.",
                            "field": f"personalizations.{index}.to.0.email",
                        }
                    ]
                },
            )
        return httpx.Response(202, headers={"X-Message-Id": "second"})

    recorder = Recorder(respond)
    messages = [outbound(1), outbound(2, to="bad@example.org"), outbound(3)]
    results = await adapter(recorder).send(messages)

    assert len(recorder.requests) == 2
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.PERMANENT, Outcome.ACCEPTED]
    assert results[1].recipient_rejected is True
    assert results[0].provider_message_id == results[2].provider_message_id == "second"


async def test_413_is_permanent() -> None:
    [result] = await adapter(Recorder(answer(413, b"Request Entity Too Large"))).send([outbound(1)])
    assert result.outcome is Outcome.PERMANENT


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient(status: int) -> None:
    [result] = await adapter(Recorder(answer(status, b"oops"))).send([outbound(1)])
    assert result.outcome is Outcome.TRANSIENT


async def test_2xx_without_x_message_id_is_auth_config() -> None:
    [result] = await adapter(Recorder(answer(200, b"<html>proxy</html>"))).send([outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG
    assert result.provider_code == "unexpected_response"


async def test_throttled_request_stops_the_rest_of_the_call() -> None:
    recorder = Recorder(answer(429, b"", headers={"Retry-After": "3"}))
    results = await adapter(recorder).send([outbound(1), big(2)])
    assert len(recorder.requests) == 1
    assert [r.outcome for r in results] == [Outcome.THROTTLED, Outcome.THROTTLED]
    assert [r.key for r in results] == [outbound(1).key, big(2).key]
    assert results[1].retry_after == 3.0


async def test_connect_error_is_transient_and_read_timeout_is_maybe_sent() -> None:
    [refused] = await adapter(Recorder(raising(httpx.ConnectError("refused")))).send([outbound(1)])
    assert refused.outcome is Outcome.TRANSIENT
    [timed_out] = await adapter(Recorder(raising(httpx.ReadTimeout("slow")))).send([outbound(1)])
    assert timed_out.outcome is Outcome.MAYBE_SENT


# --------------------------------------------------------------------------------------------------------
# Webhook: signature
# --------------------------------------------------------------------------------------------------------

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_der_b64(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def signed(key: ec.EllipticCurvePrivateKey, body: bytes, when: dt.datetime = NOW) -> dict[str, str]:
    timestamp = str(int(when.timestamp()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


async def test_signed_sample_verifies_with_the_base64_der_key_and_the_pem_key(
    private_key: ec.EllipticCurvePrivateKey,
) -> None:
    body = sample_bytes("sendgrid", "delivered.json")
    request = webhook_request(body, headers=signed(private_key, body))
    assert await webhook.verify(request, target("sendgrid", public_der_b64(private_key)), context(NOW))
    assert await webhook.verify(request, target("sendgrid", public_pem(private_key)), context(NOW))


async def test_any_secret_of_a_rotation_verifies(private_key: ec.EllipticCurvePrivateKey) -> None:
    old = ec.generate_private_key(ec.SECP256R1())
    body = sample_bytes("sendgrid", "processed.json")
    request = webhook_request(body, headers=signed(private_key, body))
    secrets = ("not a key", public_der_b64(old), public_der_b64(private_key))
    assert await webhook.verify(request, target("sendgrid", *secrets), context(NOW))


async def test_changed_body_byte_fails(private_key: ec.EllipticCurvePrivateKey) -> None:
    body = sample_bytes("sendgrid", "bounce_hard.json")
    tampered = body.replace(b"noreply@example.com", b"noreplx@example.com")
    request = webhook_request(tampered, headers=signed(private_key, body))
    assert not await webhook.verify(request, target("sendgrid", public_der_b64(private_key)), context(NOW))


async def test_wrong_key_fails(private_key: ec.EllipticCurvePrivateKey) -> None:
    body = sample_bytes("sendgrid", "open.json")
    other = ec.generate_private_key(ec.SECP256R1())
    request = webhook_request(body, headers=signed(private_key, body))
    assert not await webhook.verify(request, target("sendgrid", public_der_b64(other)), context(NOW))


async def test_stale_timestamp_fails(private_key: ec.EllipticCurvePrivateKey) -> None:
    body = sample_bytes("sendgrid", "open.json")
    request = webhook_request(body, headers=signed(private_key, body, NOW - dt.timedelta(minutes=11)))
    assert not await webhook.verify(request, target("sendgrid", public_der_b64(private_key)), context(NOW))
    recent = webhook_request(body, headers=signed(private_key, body, NOW - dt.timedelta(minutes=9)))
    assert await webhook.verify(recent, target("sendgrid", public_der_b64(private_key)), context(NOW))


async def test_missing_or_garbage_signature_fails_without_raising(private_key: ec.EllipticCurvePrivateKey) -> None:
    body = sample_bytes("sendgrid", "open.json")
    secret = target("sendgrid", public_der_b64(private_key))
    assert not await webhook.verify(webhook_request(body), secret, context(NOW))
    headers = signed(private_key, body)
    headers["X-Twilio-Email-Event-Webhook-Signature"] = "%%%not-base64"
    assert not await webhook.verify(webhook_request(body, headers=headers), secret, context(NOW))
    headers["X-Twilio-Email-Event-Webhook-Signature"] = base64.b64encode(b"short").decode()
    assert not await webhook.verify(webhook_request(body, headers=headers), secret, context(NOW))
    assert webhook.replay_nonce(webhook_request(body, headers=headers)) is None


# --------------------------------------------------------------------------------------------------------
# Webhook: parsing
# --------------------------------------------------------------------------------------------------------


def parse_sample(name: str) -> NormalizedEvent:
    payload = webhook.parse(webhook_request(sample_bytes("sendgrid", name)))
    assert payload.batch is True
    [event] = payload.items
    assert isinstance(event, NormalizedEvent)
    return event


def at(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def test_processed_is_accepted_with_ids_and_time() -> None:
    event = parse_sample("processed.json")
    assert event.event_type is EventType.ACCEPTED
    assert event.provider_event == "processed"
    assert event.provider_event_id == "ZyjAM5rnQmuI1KFInHQ3Nw"
    assert event.provider_message_id == "wrfRRvF7Q0GgwUo2CvDmEA"
    assert event.recipient == "recipient@example.com"
    assert event.occurred_at == at(1461095246)
    assert event.subtask_id is None  # the sample carries someone else's custom args
    assert event.details["category"] == ["tag1", "tag2"]
    assert event.raw["custom1"] == "value1"


def test_delivered_keeps_the_smtp_answer() -> None:
    event = parse_sample("delivered.json")
    assert event.event_type is EventType.DELIVERED
    assert event.provider_event_id == "nOSv8m0eTQ-vxvwNwt3fZQ"
    assert event.provider_message_id == "wrfRRvF7Q0GgwUo2CvDmEA"
    assert event.smtp_code == 250
    assert event.enhanced_code == "2.0.0"
    assert event.occurred_at == at(1461095250)


def test_deferred_is_deferred_soft() -> None:
    event = parse_sample("deferred.json")
    assert event.event_type is EventType.DEFERRED
    assert event.bounce_class is BounceClass.SOFT
    assert event.reason is not None and "throttled" in event.reason
    assert event.details["attempt"] == "1"
    assert event.occurred_at == at(1461200990)


def test_bounce_is_hard_bounced_with_codes() -> None:
    event = parse_sample("bounce_hard.json")
    assert event.event_type is EventType.HARD_BOUNCED
    assert event.bounce_class is BounceClass.HARD
    assert event.recipient == "noreply@example.com"
    assert event.smtp_code == 550
    assert event.enhanced_code == "5.1.1"
    assert event.provider_event_id == "lC0Rc-FuQmKbnxCWxX1jRQ"
    assert event.provider_message_id == "Lli-03HcQ5-JLybO9fXsJg"


@pytest.mark.parametrize(
    ("name", "recipient", "bounce_class"),
    [
        ("dropped_bounced_address.json", "example@example.com", BounceClass.SUPPRESSED),
        ("dropped_unsubscribed_address.json", "unsubscribe@example.com", BounceClass.SUPPRESSED),
        ("dropped_invalid.json", "invalid@invalid", BounceClass.INVALID),
    ],
)
def test_dropped_is_rejected_with_the_reason_class(name: str, recipient: str, bounce_class: BounceClass) -> None:
    event = parse_sample(name)
    assert event.event_type is EventType.REJECTED
    assert event.bounce_class is bounce_class
    assert event.recipient == recipient


def test_dropped_legacy_ids_without_an_x_message_id_prefix_give_no_provider_id() -> None:
    assert parse_sample("dropped_invalid.json").provider_message_id is None
    assert parse_sample("dropped_bounced_address.json").provider_message_id == "14c5d75ce93.dfd.64b469"


def test_open_and_click_keep_ip_agent_and_url() -> None:
    opened = parse_sample("open.json")
    assert opened.event_type is EventType.OPENED
    assert opened.ip == "66.102.6.229"
    assert opened.user_agent is not None and opened.user_agent.startswith("Mozilla/5.0 (Windows")
    clicked = parse_sample("click.json")
    assert clicked.event_type is EventType.CLICKED
    assert clicked.url == "http://www.example.com"
    assert clicked.provider_message_id == "_fjPjuJfRW-IPs5SuvYotg"


def test_unsubscribe_and_group_resubscribe() -> None:
    unsubscribed = parse_sample("unsubscribe.json")
    assert unsubscribed.event_type is EventType.UNSUBSCRIBED
    assert unsubscribed.occurred_at == at(1513299569)
    resubscribed = parse_sample("group_resubscribe.json")
    assert resubscribed.event_type is EventType.UNKNOWN
    assert resubscribed.provider_event == "group_resubscribe"
    assert resubscribed.details["asm_group_id"] == 10


def event_of(**fields: Any) -> NormalizedEvent:
    element = {
        "email": "a@example.org",
        "timestamp": 1700000000,
        "sg_event_id": "e1",
        "sg_message_id": "abc.filter1.2.3",
        **fields,
    }
    [event] = webhook.parse(webhook_request(json.dumps([element]).encode())).items
    assert isinstance(event, NormalizedEvent)
    return event


def test_our_custom_args_come_back_flattened_at_the_top_level() -> None:
    event = event_of(event="delivered", subtask_id="00000000-0000-4000-8000-000000000001", task_id="7")
    assert event.subtask_id == "00000000-0000-4000-8000-000000000001"
    assert event.task_id == "7"
    assert event.provider_message_id == "abc"


def test_blocked_bounce_is_rejected_as_a_block() -> None:
    event = event_of(event="bounce", type="blocked", reason="550 5.7.1 spam content", status="5.7.1")
    assert event.event_type is EventType.REJECTED
    assert event.bounce_class is BounceClass.BLOCK
    assert event.enhanced_code == "5.7.1"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("spamreport", EventType.COMPLAINED),
        ("group_unsubscribe", EventType.UNSUBSCRIBED),
        ("something_new", EventType.UNKNOWN),
    ],
)
def test_other_event_names(name: str, expected: EventType) -> None:
    assert event_of(event=name).event_type is expected


def test_machine_open_flag_goes_into_details() -> None:
    assert event_of(event="open", sg_machine_open=True).details["sg_machine_open"] is True


def test_a_bad_element_does_not_drop_the_others() -> None:
    body = json.dumps([{"event": "delivered", "email": "a@example.org"}, "nonsense", {"email": "b@example.org"}])
    items = webhook.parse(webhook_request(body.encode())).items
    assert isinstance(items[0], NormalizedEvent)
    assert isinstance(items[1], BadElement) and items[1].raw == "nonsense"
    assert isinstance(items[2], BadElement) and "event" in items[2].error


@pytest.mark.parametrize("body", [b"{not json", b'{"event": "delivered"}'])
def test_a_body_that_is_not_an_event_array_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        webhook.parse(webhook_request(body))


def test_x_message_id_is_the_part_before_filter() -> None:
    assert x_message_id("u9Gvi3mzT6iC2poAb58_qQ.filter0465p1mdw1.8054.5718271B40.0") == "u9Gvi3mzT6iC2poAb58_qQ"
    assert x_message_id("plainid") == "plainid"
    assert x_message_id(None) is None
