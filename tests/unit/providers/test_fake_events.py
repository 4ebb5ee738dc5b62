"""The fake ESP's webhook side: the signed handler EDM runs, and the emitter the fake adapter drives."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edm.providers.base import Outcome, ServiceConfig
from edm.providers.fake import FakeAdapter
from edm.providers.fake_events import EventEmitter, FakeWebhook, signature_header
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import BadElement, BounceClass, EventType, NormalizedEvent
from tests.unit.providers.support import config, context, outbound, target, webhook_request

SECRET = "fake-webhook-secret"
WEBHOOK = FakeWebhook()
EDM_URL = "http://edm.test"


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    FakeAdapter.reset()
    yield
    FakeAdapter.reset()


def event(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"evt-{name}",
        "event": name,
        "subtask_id": "st-1",
        "task_id": "7",
        "message_id": "fake-abc",
        "email": "user1@example.org",
        "timestamp": 1_783_400_000.25,
        "reason": None,
        "url": None,
        **extra,
    }


def body_of(*events: Any) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def signed_request(body: bytes, *, secret: str = SECRET, at: float | None = None) -> Any:
    return webhook_request(body, headers={"X-Fake-Signature": signature_header(secret, body, now=at)})


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def verify(request: Any, *secrets: str, at: dt.datetime | None = None) -> bool:
    return await WEBHOOK.verify(request, target("fake", *secrets), context(at or now()))


# --------------------------------------------------------------------------------------------------------
# Handler: verification
# --------------------------------------------------------------------------------------------------------


async def test_signed_body_verifies_with_any_rotation_secret() -> None:
    request = signed_request(body_of(event("delivered")))
    assert await verify(request, SECRET)
    assert await verify(request, "newer-secret", SECRET)


async def test_body_changed_by_one_byte_fails() -> None:
    body = body_of(event("delivered"))
    header = signature_header(SECRET, body)
    tampered = body.replace(b"delivered", b"delivereD")
    assert not await verify(webhook_request(tampered, headers={"X-Fake-Signature": header}), SECRET)


async def test_wrong_secret_fails() -> None:
    assert not await verify(signed_request(body_of(event("open")), secret="not-it"), SECRET)


async def test_timestamp_outside_five_minutes_fails() -> None:
    request = signed_request(body_of(event("open")), at=time.time() - 6 * 60)
    assert not await verify(request, SECRET)
    assert await verify(request, SECRET, at=now() - dt.timedelta(minutes=3))


@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=123", "garbage", "t=now,v1=00"])
async def test_missing_or_malformed_signature_header_fails(header: str | None) -> None:
    headers = {} if header is None else {"X-Fake-Signature": header}
    assert not await verify(webhook_request(body_of(event("open")), headers=headers), SECRET)


async def test_no_configured_secret_fails() -> None:
    assert not await verify(signed_request(body_of(event("open"))))


# --------------------------------------------------------------------------------------------------------
# Handler: parsing
# --------------------------------------------------------------------------------------------------------

KINDS = [
    ("accepted", EventType.ACCEPTED, None),
    ("delivered", EventType.DELIVERED, None),
    ("deferred", EventType.DEFERRED, None),
    ("soft_bounce", EventType.SOFT_BOUNCED, BounceClass.SOFT),
    ("hard_bounce", EventType.HARD_BOUNCED, BounceClass.HARD),
    ("complaint", EventType.COMPLAINED, None),
    ("open", EventType.OPENED, None),
    ("click", EventType.CLICKED, None),
    ("unsubscribe", EventType.UNSUBSCRIBED, None),
    ("teleported", EventType.UNKNOWN, None),
]


@pytest.mark.parametrize(("name", "event_type", "bounce_class"), KINDS)
def test_every_event_kind_parses_with_ids_and_time(
    name: str, event_type: EventType, bounce_class: BounceClass | None
) -> None:
    element = event(
        name,
        reason="550 5.1.1 User unknown" if name == "hard_bounce" else None,
        url="https://example.com/x" if name == "click" else None,
    )
    payload = WEBHOOK.parse(webhook_request(body_of(element)))
    assert payload.batch
    [parsed] = payload.items
    assert isinstance(parsed, NormalizedEvent)
    assert parsed.event_type is event_type and parsed.provider_event == name
    assert parsed.bounce_class is bounce_class
    assert (parsed.subtask_id, parsed.task_id, parsed.provider_message_id) == ("st-1", "7", "fake-abc")
    assert parsed.provider_event_id == f"evt-{name}" and parsed.recipient == "user1@example.org"
    assert parsed.occurred_at == dt.datetime.fromtimestamp(1_783_400_000.25, tz=dt.UTC)
    assert parsed.raw == element
    if name == "click":
        assert parsed.url == "https://example.com/x"
    if name == "hard_bounce":
        assert parsed.reason == "550 5.1.1 User unknown"


def test_bad_elements_stand_alone_in_the_batch() -> None:
    items = WEBHOOK.parse(webhook_request(body_of(event("delivered"), {"event": ""}, 3))).items
    assert isinstance(items[0], NormalizedEvent)
    assert isinstance(items[1], BadElement) and isinstance(items[2], BadElement)


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"events": {}}', b'{"other": []}'])
def test_a_body_without_an_events_array_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        WEBHOOK.parse(webhook_request(body))


# --------------------------------------------------------------------------------------------------------
# Emitter
# --------------------------------------------------------------------------------------------------------


class Inbox:
    """A stand-in for EDM's webhook endpoint: answers with `statuses` in turn (then 200), keeps requests."""

    def __init__(self, *statuses: int) -> None:
        self.requests: list[httpx.Request] = []
        self._statuses = list(statuses)
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self._statuses.pop(0) if self._statuses else 200)

    def events(self) -> list[dict[str, Any]]:
        return [e for request in self.requests for e in json.loads(request.content)["events"]]


def emitter(inbox: Inbox, **options: Any) -> EventEmitter:
    settings = {"service_id": 5, "url": EDM_URL + "/", "secret": SECRET, "delay_ms": 0, "seed": 1, **options}
    return EventEmitter(transport=inbox.transport, **settings)


def taken(count: int, start: int = 1) -> list[tuple[Any, str]]:
    return [(outbound(i), f"fake-{i}") for i in range(start, start + count)]


async def test_emitted_batches_arrive_signed_at_the_service_url_in_posts_of_at_most_100() -> None:
    inbox = Inbox()
    events = emitter(inbox, delivered_pct=100, open_pct=0, complaint_pct=0)
    events.emit(taken(120))
    await events.aclose()
    assert [str(r.url) for r in inbox.requests] == [f"{EDM_URL}/webhooks/fake/5"] * 3  # 240 events
    assert [len(json.loads(r.content)["events"]) for r in inbox.requests] == [100, 100, 40]
    for request in inbox.requests:  # EDM's own handler accepts what the emitter posts
        received = webhook_request(request.content, headers=dict(request.headers))
        assert await verify(received, SECRET)
        assert all(isinstance(item, NormalizedEvent) for item in WEBHOOK.parse(received).items)
    first = inbox.events()[:2]
    assert [e["event"] for e in first] == ["accepted", "delivered"]
    assert {(e["subtask_id"], e["task_id"], e["message_id"], e["email"]) for e in first} == {
        (outbound(1).key, "7", "fake-1", "user1@example.org")
    }
    assert first[0]["timestamp"] < first[1]["timestamp"]
    assert len({e["event_id"] for e in inbox.events()}) == 240
    assert events.posted == 240 and events.dropped == 0


async def test_outcome_mix_follows_the_percentages_and_the_seed() -> None:
    def outcomes(seed: int) -> list[str]:
        mix = emitter(
            Inbox(), seed=seed, delivered_pct=80, soft_bounce_pct=5, hard_bounce_pct=10, complaint_pct=10, open_pct=50
        )
        return [e["event"] for m, pid in taken(2000) for e in mix.events_for(m, pid, 0.0)]

    first = outcomes(11)
    assert first == outcomes(11) and first != outcomes(12)
    counts = Counter(first)
    assert counts["accepted"] == 2000
    assert 0.76 <= counts["delivered"] / 2000 <= 0.84
    assert 0.08 <= counts["hard_bounce"] / 2000 <= 0.12
    assert 0.03 <= counts["soft_bounce"] / 2000 <= 0.07
    assert 0.03 <= counts["deferred"] / 2000 <= 0.07  # the rest
    assert 0.45 <= counts["open"] / counts["delivered"] <= 0.55
    assert 0.07 <= counts["complaint"] / counts["delivered"] <= 0.13


async def test_aclose_flushes_the_queue_without_waiting_for_the_delay() -> None:
    inbox = Inbox()
    events = emitter(inbox, delay_ms=60_000)
    events.emit(taken(3))
    await asyncio.sleep(0)
    assert inbox.requests == []  # still waiting for its pause
    started = time.monotonic()
    await events.aclose()
    assert time.monotonic() - started < 2
    assert {e["message_id"] for e in inbox.events()} == {"fake-1", "fake-2", "fake-3"}


async def test_background_task_posts_after_the_delay_without_close() -> None:
    inbox = Inbox()
    events = emitter(inbox, delay_ms=10)
    events.emit(taken(1))
    for _ in range(100):
        if inbox.requests:
            break
        await asyncio.sleep(0.01)
    assert inbox.requests
    await events.aclose()


async def test_server_errors_are_retried_and_refusals_dropped() -> None:
    retried = Inbox(503, 500)
    events = emitter(retried)
    events.emit(taken(1))
    await events.aclose()
    assert len(retried.requests) == 3  # 503, 500, then 200
    assert events.posted == len(json.loads(retried.requests[-1].content)["events"]) and events.dropped == 0

    refused = Inbox(401)
    events = emitter(refused)
    events.emit(taken(1))
    await events.aclose()
    assert len(refused.requests) == 1 and events.posted == 0 and events.dropped > 0


async def test_network_failure_gives_up_after_a_few_attempts() -> None:
    attempts: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("connection refused")

    events = EventEmitter(service_id=1, url=EDM_URL, secret=SECRET, delay_ms=0, transport=httpx.MockTransport(refuse))
    events.emit(taken(1))
    await events.aclose()
    assert len(attempts) == 3 and events.posted == 0 and events.dropped >= 2


def test_from_config_reads_options_and_the_first_webhook_secret() -> None:
    assert EventEmitter.from_config(config("fake")) is None
    built = EventEmitter.from_config(
        config(
            "fake",
            credentials={"webhook_secrets": [{"value": "s1"}, "s0"]},
            events={"url": EDM_URL, "delay_ms": 50, "open_pct": 0},
        )
    )
    assert built is not None
    assert built.secret == "s1" and built.endpoint == f"{EDM_URL}/webhooks/fake/1"
    assert built.delay == 0.05 and built.open_pct == 0.0 and built.delivered_pct == 90.0
    bare = EventEmitter.from_config(config("fake", credentials={"webhook_secrets": "plain"}, events={"url": EDM_URL}))
    assert bare is not None and bare.secret == "plain"
    with pytest.raises(ValueError, match="url"):
        EventEmitter.from_config(config("fake", events={"delay_ms": 5}))


# --------------------------------------------------------------------------------------------------------
# The fake adapter drives the emitter
# --------------------------------------------------------------------------------------------------------


def fake_config(**options: Any) -> ServiceConfig:
    events = {"url": EDM_URL, "delay_ms": 0, "seed": 3, "delivered_pct": 100, "open_pct": 0, "complaint_pct": 0}
    return config("fake", credentials={"webhook_secrets": [SECRET]}, events=events, **options)


async def test_fake_adapter_emits_events_for_accepted_messages_with_their_provider_ids() -> None:
    inbox = Inbox()
    adapter = FakeAdapter(fake_config(), events_transport=inbox.transport)
    results = await adapter.send([outbound(1)]) + await adapter.send([outbound(2, to="nobody@example.invalid")])
    await adapter.aclose()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.PERMANENT]
    assert [(e["event"], e["message_id"], e["subtask_id"]) for e in inbox.events()] == [
        ("accepted", results[0].provider_message_id, outbound(1).key),
        ("delivered", results[0].provider_message_id, outbound(1).key),
    ]


async def test_fake_adapter_emits_for_maybe_sent_but_not_for_an_idempotent_duplicate() -> None:
    inbox = Inbox()
    lost = FakeAdapter(fake_config(idempotent=True, maybe_sent_pct=100), events_transport=inbox.transport)
    [result] = await lost.send([outbound(1)])
    await lost.aclose()
    assert result.outcome is Outcome.MAYBE_SENT
    assert [e["event"] for e in inbox.events()] == ["accepted", "delivered"]  # the mail did arrive

    retry = FakeAdapter(fake_config(idempotent=True), events_transport=inbox.transport)
    [again] = await retry.send([outbound(1)])
    await retry.aclose()
    assert again.outcome is Outcome.ACCEPTED
    assert again.provider_message_id == inbox.events()[0]["message_id"]
    assert len(inbox.events()) == 2  # nothing new was sent, so nothing new happens to it


async def test_fake_adapter_without_events_option_posts_nothing() -> None:
    adapter = FakeAdapter(config("fake"))
    assert adapter.events is None
    assert (await adapter.send([outbound(1)]))[0].outcome is Outcome.ACCEPTED
    await adapter.aclose()
