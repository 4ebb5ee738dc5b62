"""Mailgun: the messages API adapter (form fields, recipient-variable batches, error classes) and webhooks."""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.parse
from typing import Any

import httpx
import pytest

from edm import clock
from edm.providers import mailgun
from edm.providers.base import OutboundMessage, Outcome
from edm.providers.mailgun import MailgunAdapter, plan_requests, webhook
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent
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

API_KEY = "key-test-123"
SIGNING_KEY = "TEST_WEBHOOK_SIGNING_KEY"
ACCEPTED = answer(200, {"id": "<20160306015544.116301.25145@example.org>", "message": "Queued. Thank you."})


def adapter(recorder: Recorder, **options: Any) -> MailgunAdapter:
    return MailgunAdapter(
        config("mailgun", credentials={"api_key": API_KEY}, batch_size=1000, **options), transport=recorder.transport
    )


def form(request: httpx.Request) -> dict[str, list[str]]:
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    return urllib.parse.parse_qs(request.content.decode(), keep_blank_values=True)


def replace(message: OutboundMessage, **changes: Any) -> OutboundMessage:
    return OutboundMessage(**{**{f: getattr(message, f) for f in message.__dataclass_fields__}, **changes})


# --------------------------------------------------------------------------------------------------------
# Sending: request shape
# --------------------------------------------------------------------------------------------------------


async def test_single_message_request_carries_ids_headers_and_tracking_off() -> None:
    recorder = Recorder(ACCEPTED)
    [result] = await adapter(recorder).send([outbound(1)])

    request = recorder.last
    assert request.method == "POST"
    assert str(request.url) == "https://api.mailgun.net/v3/mail.example.com/messages"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()
    fields = form(request)
    key = outbound(1).key
    assert fields["from"] == ["Example News <news@mail.example.com>"]
    assert fields["to"] == ["User 1 <user1@example.org>"]
    assert fields["subject"] == ["Hello 1"]
    assert fields["text"] == ["Hello 1"]
    assert fields["html"] == ["<p>Hello 1</p>"]
    assert fields["v:subtask_id"] == [key]
    assert fields["v:task_id"] == ["7"]
    assert fields["h:X-EDM-SubTask-Id"] == [key]
    assert fields["h:Message-ID"] == [f"<{key}@mail.example.com>"]
    assert fields["h:List-Unsubscribe"] == ["<https://edm.example.com/u/tok1>"]
    assert fields["h:List-Unsubscribe-Post"] == ["List-Unsubscribe=One-Click"]
    assert fields["h:Feedback-ID"] == ["7:3:edm"]
    assert fields["h:Reply-To"] == ["support@example.com"]
    assert fields["o:tracking"] == fields["o:tracking-clicks"] == fields["o:tracking-opens"] == ["no"]
    assert "recipient-variables" not in fields

    assert result.outcome is Outcome.ACCEPTED
    assert result.key == key
    assert result.provider_message_id == "20160306015544.116301.25145@example.org"


async def test_eu_region_and_domain_option_choose_the_url() -> None:
    recorder = Recorder(ACCEPTED)
    await adapter(recorder, region="eu", domain="mg.example.com").send([outbound(1)])
    assert str(recorder.last.url) == "https://api.eu.mailgun.net/v3/mg.example.com/messages"


async def test_batch_is_one_request_with_recipient_variables_for_bodies_headers_and_ids() -> None:
    recorder = Recorder(ACCEPTED)
    messages = [outbound(1), outbound(2), outbound(3)]
    results = await adapter(recorder).send(messages)

    assert len(recorder.requests) == 1
    fields = form(recorder.last)
    assert fields["to"] == ["User 1 <user1@example.org>", "User 2 <user2@example.org>", "User 3 <user3@example.org>"]
    assert fields["subject"] == ["%recipient.subject%"]
    assert fields["html"] == ["%recipient.html%"]
    assert fields["text"] == ["%recipient.text%"]
    assert fields["v:subtask_id"] == ["%recipient.subtask_id%"]
    assert fields["v:task_id"] == ["%recipient.task_id%"]
    assert fields["h:X-EDM-SubTask-Id"] == ["%recipient.h_x_edm_subtask_id%"]
    assert fields["h:List-Unsubscribe"] == ["%recipient.h_list_unsubscribe%"]
    assert fields["o:tracking"] == ["no"]
    variables = json.loads(fields["recipient-variables"][0])
    assert list(variables) == ["user1@example.org", "user2@example.org", "user3@example.org"]
    for message in messages:
        mine = variables[message.to_address]
        assert mine["subject"] == message.subject
        assert mine["html"] == message.html
        assert mine["text"] == message.text
        assert mine["subtask_id"] == mine["h_x_edm_subtask_id"] == message.key
        assert mine["h_list_unsubscribe"] == message.headers["List-Unsubscribe"]
        assert mine["h_message_id"] == message.headers["Message-ID"]
    assert [r.key for r in results] == [m.key for m in messages]
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert {r.provider_message_id for r in results} == {"20160306015544.116301.25145@example.org"}


def test_plan_separates_repeated_addresses_other_senders_and_marker_content() -> None:
    messages = [
        outbound(1),
        outbound(2),
        outbound(3, to="User1@Example.org"),  # same address as the first: another request
        replace(outbound(4), reply_to=None),  # different Reply-To: another request
        replace(outbound(5), html="<p>%recipient.name%</p>"),  # Mailgun would substitute inside it
        outbound(6),
    ]
    # the repeated address opens a new request for that shape, which later messages of the shape join
    assert plan_requests(messages) == [[0, 1], [2, 5], [3], [4]]


def test_plan_keeps_each_request_below_the_byte_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailgun, "MAX_BATCH_BYTES", 400)  # each message is about 180 bytes
    assert plan_requests([outbound(i) for i in range(1, 6)]) == [[0, 1], [2, 3], [4]]


async def test_groups_of_one_call_keep_input_order() -> None:
    answers = iter([{"id": "<first@x>"}, {"id": "<second@x>"}])

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(answers))

    messages = [outbound(1), replace(outbound(2), reply_to=None), outbound(3)]
    results = await adapter(Recorder(respond)).send(messages)
    assert [r.key for r in results] == [m.key for m in messages]
    assert [r.provider_message_id for r in results] == ["first@x", "second@x", "first@x"]


# --------------------------------------------------------------------------------------------------------
# Sending: answers and error classes
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (401, b"Forbidden", Outcome.AUTH_CONFIG),
        (
            403,
            {"message": "Domain example.com is not allowed to send: Free accounts are for test purposes only"},
            Outcome.AUTH_CONFIG,
        ),
        (402, {"message": "Payment required"}, Outcome.QUOTA_EXHAUSTED),
        (413, b"Request Entity Too Large", Outcome.PERMANENT),
        (500, b"Internal Server Error", Outcome.TRANSIENT),
        (503, b"", Outcome.TRANSIENT),
    ],
)
async def test_status_classes(status: int, body: Any, outcome: Outcome) -> None:
    [result] = await adapter(Recorder(answer(status, body))).send([outbound(1)])
    assert result.outcome is outcome
    assert result.status == status
    assert API_KEY not in result.message


async def test_domain_not_found_is_auth_config() -> None:
    recorder = Recorder(answer(404, sample("mailgun", "api_messages_response_404_domain.json")))
    [result] = await adapter(recorder).send([outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG
    assert "Domain not found" in result.message


async def test_400_invalid_to_is_permanent_and_rejects_the_recipient() -> None:
    recorder = Recorder(answer(400, sample("mailgun", "api_messages_response_400.json")))
    [result] = await adapter(recorder).send([outbound(1)])
    assert result.outcome is Outcome.PERMANENT
    assert result.recipient_rejected is True
    assert "'to' parameter is not a valid address" in result.message


async def test_400_about_the_request_is_permanent_without_blaming_the_recipient() -> None:
    [result] = await adapter(Recorder(answer(400, {"message": "from parameter is missing"}))).send([outbound(1)])
    assert result.outcome is Outcome.PERMANENT
    assert result.recipient_rejected is False


async def test_batch_refused_for_an_address_is_halved_until_the_culprit_is_alone() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if any("bad@" in to for to in form(request)["to"]):
            return httpx.Response(400, json=sample("mailgun", "api_messages_response_400.json"))
        return httpx.Response(200, json={"id": "<ok@example.org>"})

    recorder = Recorder(respond)
    messages = [outbound(1), outbound(2), outbound(3, to="bad@example.org"), outbound(4)]
    results = await adapter(recorder).send(messages)

    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.PERMANENT, Outcome.ACCEPTED]
    assert results[2].recipient_rejected is True
    assert [r.key for r in results] == [m.key for m in messages]
    assert len(recorder.requests) == 5  # [1-4] → [1,2] ok, [3,4] → [3] refused, [4] ok


async def test_batch_400_about_the_request_fails_every_message_without_splitting() -> None:
    recorder = Recorder(answer(400, {"message": "'to' parameter is missing"}))
    results = await adapter(recorder).send([outbound(1), outbound(2)])
    assert len(recorder.requests) == 1
    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.PERMANENT]
    assert not any(r.recipient_rejected for r in results)


async def test_429_is_throttled_with_retry_after_or_reset_header() -> None:
    [result] = await adapter(Recorder(answer(429, b"", headers={"Retry-After": "12"}))).send([outbound(1)])
    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after == 12.0
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    clock.freeze(now)
    reset = {"X-RateLimit-Reset": str(int(now.timestamp() * 1000) + 30_000)}  # milliseconds
    [result] = await adapter(Recorder(answer(429, b"", headers=reset))).send([outbound(1)])
    assert result.retry_after == pytest.approx(30.0)


async def test_quota_answer_stops_the_rest_of_the_call() -> None:
    recorder = Recorder(answer(402, {"message": "Payment required"}))
    results = await adapter(recorder).send([outbound(1), replace(outbound(2), reply_to=None)])
    assert len(recorder.requests) == 1
    assert [r.outcome for r in results] == [Outcome.QUOTA_EXHAUSTED, Outcome.QUOTA_EXHAUSTED]
    assert results[1].key == outbound(2).key


@pytest.mark.parametrize("body", [b"Mailgun Magnificent API", {"message": "Queued. Thank you."}])
async def test_200_that_is_not_the_messages_answer_is_auth_config(body: Any) -> None:
    [result] = await adapter(Recorder(answer(200, body))).send([outbound(1)])
    assert result.outcome is Outcome.AUTH_CONFIG


async def test_connect_error_is_transient_and_read_timeout_is_maybe_sent() -> None:
    [refused] = await adapter(Recorder(raising(httpx.ConnectError("refused")))).send([outbound(1)])
    assert refused.outcome is Outcome.TRANSIENT
    [timed_out] = await adapter(Recorder(raising(httpx.ReadTimeout("slow")))).send([outbound(1)])
    assert timed_out.outcome is Outcome.MAYBE_SENT


# --------------------------------------------------------------------------------------------------------
# Webhook: signature
# --------------------------------------------------------------------------------------------------------

SIGNED_SAMPLES = [
    "clicked.json",
    "delivered.json",
    "failed_permanent_hard_bounce.json",
    "failed_temporary_soft_bounce.json",
    "opened_with_user_variables.json",
    "rejected.json",
]


def near(body: dict[str, Any], minutes: float = 1.0) -> dt.datetime:
    """A `now` close to the sample's signed timestamp (the samples are years old)."""
    signature = body["signature"]
    signed_at = int(signature["timestamp"] if isinstance(signature, dict) else body["timestamp"])
    return dt.datetime.fromtimestamp(signed_at, tz=dt.UTC) + dt.timedelta(minutes=minutes)


@pytest.mark.parametrize("name", SIGNED_SAMPLES)
async def test_signed_samples_verify_with_the_signing_key(name: str) -> None:
    body = sample_bytes("mailgun", name)
    now = near(json.loads(body))
    assert await webhook.verify(webhook_request(body), target("mailgun", "rotated-away", SIGNING_KEY), context(now))


async def test_wrong_key_fails() -> None:
    body = sample_bytes("mailgun", "delivered.json")
    now = near(json.loads(body))
    assert not await webhook.verify(webhook_request(body), target("mailgun", "other-key"), context(now))


async def test_stale_timestamp_fails() -> None:
    body = sample_bytes("mailgun", "delivered.json")
    stale = near(json.loads(body), minutes=11)
    assert not await webhook.verify(webhook_request(body), target("mailgun", SIGNING_KEY), context(stale))


async def test_changed_token_or_signature_byte_fails() -> None:
    body = sample_bytes("mailgun", "delivered.json")
    now = near(json.loads(body))
    secret = target("mailgun", SIGNING_KEY)
    token_changed = body.replace(b"651869375b9df3", b"751869375b9df3")
    signature_changed = body.replace(b"2a75affe", b"3a75affe")
    assert not await webhook.verify(webhook_request(token_changed), secret, context(now))
    assert not await webhook.verify(webhook_request(signature_changed), secret, context(now))


async def test_unsigned_or_garbage_body_fails_without_raising() -> None:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    secret = target("mailgun", SIGNING_KEY)
    for body in (b"{not json", b"[]", b'{"event-data": {"event": "delivered"}}', b'{"signature": {"token": 1}}'):
        assert not await webhook.verify(webhook_request(body), secret, context(now))


async def test_replay_nonce_is_the_token() -> None:
    body = sample_bytes("mailgun", "delivered.json")
    assert webhook.replay_nonce(webhook_request(body)) == "651869375b9df3c98fc15c4889b102119add1235c38fc92824"
    assert webhook.replay_nonce(webhook_request(b"garbage")) is None


async def test_inbound_route_form_fields_verify_as_a_flat_trio() -> None:
    fields = sample("mailgun", "inbound_route_form_fields.json")
    body = urllib.parse.urlencode(fields).encode()
    request = webhook_request(body, content_type="application/x-www-form-urlencoded")
    now = near(fields)
    assert await webhook.verify(request, target("mailgun", SIGNING_KEY), context(now))
    assert webhook.replay_nonce(request) == fields["token"]
    assert not await webhook.verify(request, target("mailgun", "other-key"), context(now))


# --------------------------------------------------------------------------------------------------------
# Webhook: parsing
# --------------------------------------------------------------------------------------------------------


def parse_sample(name: str) -> NormalizedEvent:
    payload = webhook.parse(webhook_request(sample_bytes("mailgun", name)))
    assert payload.batch is False
    [event] = payload.items
    assert isinstance(event, NormalizedEvent)
    return event


def at(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def test_delivered_sample() -> None:
    event = parse_sample("delivered.json")
    assert event.event_type is EventType.DELIVERED
    assert event.provider_event == "delivered"
    assert event.recipient == "recipient@example.com"
    assert event.provider_message_id == "20180812211713.1.DF5966851B4BAA99@example.org"
    assert event.provider_event_id == "hTWCTD81RtiDN-...:1534108637.153125"
    assert event.occurred_at == at(1534108637.153125)
    assert event.smtp_code == 250
    assert event.subtask_id is None


def test_failed_permanent_is_hard_bounced() -> None:
    event = parse_sample("failed_permanent_hard_bounce.json")
    assert event.event_type is EventType.HARD_BOUNCED
    assert event.bounce_class is BounceClass.HARD
    assert event.recipient == "invalid@example.com"
    assert event.smtp_code == 550
    assert event.enhanced_code == "5.1.1"
    assert event.provider_message_id == "20180812214658.1.0DF563D0B3597700@example.org"
    assert event.provider_event_id is None  # the sample has no event id: the pipeline hashes
    assert event.occurred_at == at(1534110422.389832)


def test_failed_temporary_is_deferred() -> None:
    event = parse_sample("failed_temporary_soft_bounce.json")
    assert event.event_type is EventType.DEFERRED
    assert event.bounce_class is BounceClass.SOFT
    assert event.smtp_code == 498
    assert event.reason == "No MX for nomx.example.com"
    assert event.details["retry-seconds"] == 1800
    assert event.recipient == "undeliverable@nomx.example.com"


def test_clicked_and_opened_samples() -> None:
    clicked = parse_sample("clicked.json")
    assert clicked.event_type is EventType.CLICKED
    assert clicked.url == "https://example.com/test"
    assert clicked.recipient == "recipient@example.com"
    opened = parse_sample("opened_with_user_variables.json")
    assert opened.event_type is EventType.OPENED
    assert opened.ip == "888.222.444.111"
    assert opened.user_agent is not None and opened.user_agent.startswith("Mozilla/5.0 (Macintosh")
    assert opened.provider_message_id == "20180812213139.1.BC6694A917BB7E6A@example.org"
    assert opened.details["tags"] == ["welcome", "variation-A"]
    assert opened.subtask_id is None  # its user-variables are someone else's


def test_rejected_sample_takes_the_recipient_from_the_to_header() -> None:
    event = parse_sample("rejected.json")
    assert event.event_type is EventType.REJECTED
    assert event.bounce_class is BounceClass.BLOCK
    assert event.recipient == "recipient@example.org"
    assert event.reason == "Sandbox subdomains are for test purposes only."
    assert event.occurred_at == at(1529704976.104692)


def event_of(**data: Any) -> NormalizedEvent:
    event_data = {
        "id": "abc",
        "timestamp": 1700000000.5,
        "recipient": "a@example.org",
        "message": {"headers": {"message-id": "<m1@mg.example.com>"}},
        **data,
    }
    body = json.dumps({"signature": {}, "event-data": event_data}).encode()
    [event] = webhook.parse(webhook_request(body)).items
    assert isinstance(event, NormalizedEvent)
    return event


def test_user_variables_carry_our_ids() -> None:
    event = event_of(event="accepted", **{"user-variables": {"subtask_id": "st-1", "task_id": "7"}})
    assert event.event_type is EventType.ACCEPTED
    assert (event.subtask_id, event.task_id) == ("st-1", "7")
    assert event.provider_message_id == "m1@mg.example.com"
    assert event.provider_event_id == "abc:1700000000.5"


def test_user_variables_as_a_json_string_are_read_too() -> None:
    assert event_of(event="delivered", **{"user-variables": '{"subtask_id": "st-2"}'}).subtask_id == "st-2"


@pytest.mark.parametrize("reason", ["suppress-bounce", "suppress-unsubscribe", "suppress-complaint"])
def test_failed_on_a_suppression_list_is_rejected_suppressed(reason: str) -> None:
    event = event_of(event="failed", severity="permanent", reason=reason)
    assert event.event_type is EventType.REJECTED
    assert event.bounce_class is BounceClass.SUPPRESSED


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("complained", EventType.COMPLAINED),
        ("unsubscribed", EventType.UNSUBSCRIBED),
        ("stored", EventType.UNKNOWN),
    ],
)
def test_other_event_names(name: str, expected: EventType) -> None:
    event = event_of(event=name)
    assert event.event_type is expected
    assert event.provider_event == name


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"signature": {}}', b'{"event-data": {"id": "x"}}'])
def test_a_body_that_is_not_a_mailgun_event_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        webhook.parse(webhook_request(body))
