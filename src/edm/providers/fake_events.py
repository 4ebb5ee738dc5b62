"""The webhook side of the `fake` ESP: it posts signed events back to EDM, and EDM verifies and parses them.

So a demo shows deliveries, bounces and complaints arriving through the real webhook pipeline, the fake
provider can post events to `POST {url}/webhooks/fake/{service_id}` after it accepts messages.

Wire format (both sides live here, so they cannot drift apart)::

    POST /webhooks/fake/{service_id}
    Content-Type: application/json
    X-Fake-Signature: t=<epoch seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

    {"events": [{"event_id": "...", "event": "delivered", "subtask_id": "...", "task_id": "...",
                 "message_id": "fake-...", "email": "user@example.org", "timestamp": 1700000000.5,
                 "reason": "...", "url": null}, ...]}

`event` is one of accepted, delivered, deferred, soft_bounce, hard_bounce, complaint, open, click,
unsubscribe. The signature window is 5 minutes. The secret is the service's webhook secret
(`credentials["webhook_secrets"][0]`, a string or {"value": ...}).

Emission options (`options["events"]`, see `EventEmitter.from_config`)::

    url              EDM's base URL, e.g. http://127.0.0.1:8000 (required)
    delay_ms         pause between posted batches (default 200); batches hold at most 100 events
    delivered_pct, soft_bounce_pct, hard_bounce_pct
                     outcome mix per accepted message (defaults 90 / 3 / 3); the rest is `deferred`
    complaint_pct, open_pct
                     percentages of delivered messages that also complain / open (defaults 1 / 30)
    seed             int: the same seed and the same messages give the same outcomes
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx
import orjson

from edm.providers.base import OutboundMessage, ServiceConfig
from edm.providers.webhook import (
    MalformedPayload,
    ParsedPayload,
    VerifyContext,
    WebhookRequest,
    WebhookTarget,
    fresh,
    from_epoch,
    parse_json,
    same,
    text_or_none,
)
from edm.vocabulary.events import BadElement, BounceClass, EventType, NormalizedEvent

log = logging.getLogger("edm.providers.fake")

SIGNATURE_HEADER = "X-Fake-Signature"
SIGNATURE_WINDOW_SECONDS = 300
MAX_EVENTS_PER_POST = 100
POST_TIMEOUT_SECONDS = 5.0
POST_ATTEMPTS = 3
FLUSH_TIMEOUT_SECONDS = 10.0

# Fake event name -> (normalized type, bounce class, reason the fake gives).
_EVENTS: dict[str, tuple[EventType, BounceClass | None, str | None]] = {
    "accepted": (EventType.ACCEPTED, None, None),
    "delivered": (EventType.DELIVERED, None, "250 2.0.0 OK (simulated)"),
    "deferred": (EventType.DEFERRED, None, "451 4.7.1 Try again later (simulated)"),
    "soft_bounce": (EventType.SOFT_BOUNCED, BounceClass.SOFT, "452 4.2.2 Mailbox full (simulated)"),
    "hard_bounce": (EventType.HARD_BOUNCED, BounceClass.HARD, "550 5.1.1 User unknown (simulated)"),
    "complaint": (EventType.COMPLAINED, None, None),
    "open": (EventType.OPENED, None, None),
    "click": (EventType.CLICKED, None, None),
    "unsubscribe": (EventType.UNSUBSCRIBED, None, None),
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `v1` value: hex HMAC-SHA256 keyed with the secret over "<timestamp>." + body."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, *, now: float | None = None) -> str:
    timestamp = str(int(time.time() if now is None else now))
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


# --------------------------------------------------------------------------------------------------------
# Receiving: the webhook handler
# --------------------------------------------------------------------------------------------------------


class FakeWebhook:
    provider: ClassVar[str] = "fake"
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        timestamp, signatures = _signature_parts(request.header(SIGNATURE_HEADER) or "")
        if not timestamp or not signatures or not target.secrets:
            return False
        if not fresh(from_epoch(timestamp), ctx.now, seconds=SIGNATURE_WINDOW_SECONDS):
            return False
        matched = False
        for secret in target.secrets:
            expected = sign(secret, timestamp, request.body)
            for offered in signatures:
                matched |= same(expected, offered.lower())  # no early exit: every comparison runs
        return matched

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        return None  # every event carries its own id: dedupe makes a replay harmless

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        document = parse_json(request)
        if not isinstance(document, dict) or not isinstance(document.get("events"), list):
            raise MalformedPayload('expected an object with an "events" array')
        return ParsedPayload(items=[parse_event(element) for element in document["events"]], batch=True)


webhook = FakeWebhook()


def _signature_parts(header: str) -> tuple[str | None, list[str]]:
    """("t", ["v1", ...]) of `t=<ts>,v1=<hex>[,v1=<hex>]` (several v1 during a secret rotation)."""
    timestamp: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value:
            timestamp = value
        elif name == "v1" and value:
            signatures.append(value)
    return timestamp, signatures


def parse_event(element: Any) -> NormalizedEvent | BadElement:
    if not isinstance(element, dict):
        return BadElement(raw=element, error="event is not an object")
    name = element.get("event")
    if not isinstance(name, str) or not name:
        return BadElement(raw=element, error='event has no "event" name')
    event_type, bounce_class, _ = _EVENTS.get(name, (EventType.UNKNOWN, None, None))
    return NormalizedEvent(
        event_type=event_type,
        provider_event=name,
        raw=element,
        occurred_at=from_epoch(element.get("timestamp")),
        subtask_id=_text(element.get("subtask_id")),
        task_id=_text(element.get("task_id")),
        provider_message_id=_text(element.get("message_id")),
        provider_event_id=_text(element.get("event_id")),
        recipient=_text(element.get("email")),
        bounce_class=bounce_class,
        reason=text_or_none(element.get("reason")),
        url=text_or_none(element.get("url"), 2000),
    )


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    return str(value).strip() or None


# --------------------------------------------------------------------------------------------------------
# Sending: the emitter the fake adapter drives
# --------------------------------------------------------------------------------------------------------


class EventEmitter:
    """Queues simulated events for accepted messages and posts them, signed, in the background.

    `emit()` never waits on the network: a background task posts the queue in batches, one every
    `delay_ms`, and stops when the queue is empty (the next `emit()` starts it again). A post that fails
    is retried a few times, then its batch is dropped and logged (without the secret). `aclose()` posts
    what is still queued without the pauses, waiting at most `flush_timeout` seconds.
    """

    def __init__(
        self,
        *,
        service_id: int,
        url: str,
        secret: str | None,
        delay_ms: float = 200.0,
        delivered_pct: float = 90.0,
        soft_bounce_pct: float = 3.0,
        hard_bounce_pct: float = 3.0,
        complaint_pct: float = 1.0,
        open_pct: float = 30.0,
        seed: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        flush_timeout: float = FLUSH_TIMEOUT_SECONDS,
    ) -> None:
        self.service_id = service_id
        self.endpoint = f"{url.rstrip('/')}/webhooks/fake/{service_id}"
        self.secret = secret
        self.delay = max(0.0, float(delay_ms)) / 1000.0
        self.hard_bounce_pct, self.soft_bounce_pct = float(hard_bounce_pct), float(soft_bounce_pct)
        self.delivered_pct = float(delivered_pct)
        self.complaint_pct, self.open_pct = float(complaint_pct), float(open_pct)
        self.flush_timeout = flush_timeout
        self._random = random.Random(seed) if seed is not None else random.Random()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None  # created on first post: an unused emitter holds nothing
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # set by aclose(): post the rest without pausing
        self.posted = 0  # events the endpoint acknowledged
        self.dropped = 0  # events given up on

    @classmethod
    def from_config(
        cls, config: ServiceConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> EventEmitter | None:
        """The emitter `options["events"]` asks for, or None when it is not set."""
        options = config.options.get("events")
        if not options:
            return None
        if not isinstance(options, Mapping) or not options.get("url"):
            raise ValueError("fake: options.events needs a url (EDM's base URL, e.g. http://127.0.0.1:8000)")
        numbers = {
            name: float(options[name])
            for name in ("delay_ms", "delivered_pct", "soft_bounce_pct", "hard_bounce_pct", "complaint_pct", "open_pct")
            if options.get(name) is not None
        }
        seed = options.get("seed")
        secret = webhook_secret(config.credentials)
        if secret is None:  # EDM refuses these unless EDM_ALLOW_UNSIGNED_WEBHOOKS is on
            log.warning("fake.events_unsigned", extra={"service_id": config.service_id})
        return cls(
            service_id=config.service_id,
            url=str(options["url"]),
            secret=secret,
            seed=int(seed) if seed is not None else None,
            transport=transport,
            **numbers,
        )

    # -- what the adapter calls ----------------------------------------------------------------------

    def emit(self, accepted: Sequence[tuple[OutboundMessage, str]]) -> None:
        """Queue `accepted` + one simulated outcome for each (message, provider message id)."""
        now = time.time()
        for message, provider_message_id in accepted:
            self._queue.extend(self.events_for(message, provider_message_id, now))
        if self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fake-events")

    async def aclose(self) -> None:
        self._hurry.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self._task, self.flush_timeout)
            except TimeoutError:  # wait_for cancelled the task
                pass
        if self._queue:
            log.warning("fake.events_not_posted", extra={"service_id": self.service_id, "count": len(self._queue)})
            self.dropped += len(self._queue)
            self._queue.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- simulation ----------------------------------------------------------------------------------

    def events_for(self, message: OutboundMessage, provider_message_id: str, now: float) -> list[dict[str, Any]]:
        """accepted, then the outcome the dice pick; complaint/open only follow a delivery."""
        names = ["accepted", self._outcome()]
        if names[1] == "delivered":
            # Always two draws, whatever the first says, so a seed gives the same sequence.
            complains, opens = self._roll() < self.complaint_pct, self._roll() < self.open_pct
            names += ["open"] * opens + ["complaint"] * complains
        # Distinct, increasing timestamps keep the events in their natural order.
        return [self._event(name, message, provider_message_id, now + i / 1000.0) for i, name in enumerate(names)]

    def _outcome(self) -> str:
        roll = self._roll()
        for name, pct in (
            ("hard_bounce", self.hard_bounce_pct),
            ("soft_bounce", self.soft_bounce_pct),
            ("delivered", self.delivered_pct),
        ):
            if roll < pct:
                return name
            roll -= pct
        return "deferred"

    def _roll(self) -> float:
        return self._random.random() * 100.0

    @staticmethod
    def _event(name: str, message: OutboundMessage, provider_message_id: str, timestamp: float) -> dict[str, Any]:
        return {
            "event_id": f"fake-evt-{uuid.uuid4().hex}",
            "event": name,
            "subtask_id": message.custom_args.get("subtask_id"),
            "task_id": message.custom_args.get("task_id"),
            "message_id": provider_message_id,
            "email": message.to_address,
            "timestamp": timestamp,
            "reason": _EVENTS[name][2],
            "url": None,
        }

    # -- posting -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while self._queue:
            if not self._hurry.is_set():
                try:
                    await asyncio.wait_for(self._hurry.wait(), self.delay)
                except TimeoutError:
                    pass
            batch = [self._queue.popleft() for _ in range(min(MAX_EVENTS_PER_POST, len(self._queue)))]
            await self._post(batch)

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        body = orjson.dumps({"events": batch})
        for attempt in range(1, POST_ATTEMPTS + 1):
            problem = await self._post_once(body)
            if problem is None:
                self.posted += len(batch)
                return
            if attempt < POST_ATTEMPTS and not problem.startswith("refused"):
                await asyncio.sleep(0 if self._hurry.is_set() else 0.1 * 2**attempt)
                continue
            break
        self.dropped += len(batch)
        log.warning(
            "fake.events_dropped", extra={"service_id": self.service_id, "count": len(batch), "problem": problem}
        )

    async def _post_once(self, body: bytes) -> str | None:
        """None when EDM took the batch, else what went wrong ("refused …" when a retry cannot help)."""
        headers = {"Content-Type": "application/json"}
        if self.secret:  # re-signed per attempt: the timestamp must stay fresh
            headers[SIGNATURE_HEADER] = signature_header(self.secret, body)
        try:
            response = await self._http().post(self.endpoint, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        if response.is_success:
            return None
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            return f"refused with HTTP {response.status_code}"
        return f"HTTP {response.status_code}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=POST_TIMEOUT_SECONDS, transport=self._transport, follow_redirects=False
            )
        return self._client


def webhook_secret(credentials: Mapping[str, Any]) -> str | None:
    """The newest webhook secret: the first of `webhook_secrets` (a string or {"value": ...}; a bare string is
    tolerated as a list of one, as the webhook pipeline does)."""
    entries = credentials.get("webhook_secrets") or []
    for entry in [entries] if isinstance(entries, str) else entries:
        value = entry.get("value") if isinstance(entry, Mapping) else entry
        if value:
            return str(value)
    return None
