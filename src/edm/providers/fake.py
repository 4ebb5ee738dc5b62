"""`provider = "fake"`: an in-memory simulated ESP for demos, tests and benchmarks (never in production).

Options (`ServiceConfig.options`, all optional):

    latency_ms       sleep per provider call (float, default 0)
    transient_pct, throttle_pct, quota_pct, auth_pct, permanent_pct, maybe_sent_pct
                     error mix, percentages of messages (0–100, default 0); the rest is accepted
    seed             int: a deterministic random.Random per adapter (same seed + same calls = same outcomes)
    idempotent       bool: honour the idempotency key (1 h window), like an ESP with request ids
    fail_after       int: once this service accepted that many messages, every further message is
                     `auth_config` (a key revoked mid-task)
    retry_after      seconds carried by `throttled` results (default 1.0)
    events           dict: post signed webhook events (accepted, delivered, bounces, opens…) back to EDM
                     for the messages it took; see `edm.providers.fake_events` for its keys (url, mix, seed)

Addresses under the reserved `.invalid` TLD (RFC 2606) are rejected as permanent recipient failures, so a
demo can show hard bounces without configuring anything.

What the fake "delivered" is recorded per service id in a process-wide registry, so a test can inspect
what a worker-built adapter did: `FakeAdapter.deliveries_for(service_id)`, `FakeAdapter.delivered_keys(...)`.
A `maybe_sent` result is recorded as delivered: the simulated provider took the message and the answer was
lost — the case that makes resends duplicate unless the provider honours the idempotency key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import httpx

from edm.providers.base import Capabilities, OutboundMessage, Outcome, SendResult, ServiceConfig
from edm.providers.fake_events import EventEmitter

MAX_BATCH = 1000
IDEMPOTENCY_WINDOW_SECONDS = 3600
_DUPLICATE_NOTE = "duplicate request: original message id returned"

# (option, outcome, status, provider code, message), in the order the dice are read.
_ERROR_MIX: tuple[tuple[str, Outcome, int | None, str, str], ...] = (
    ("transient_pct", Outcome.TRANSIENT, 503, "fake_unavailable", "simulated service unavailable"),
    ("throttle_pct", Outcome.THROTTLED, 429, "fake_rate_limited", "simulated rate limit"),
    ("quota_pct", Outcome.QUOTA_EXHAUSTED, 402, "fake_quota", "simulated quota exhausted"),
    ("auth_pct", Outcome.AUTH_CONFIG, 401, "fake_auth", "simulated invalid API key"),
    ("permanent_pct", Outcome.PERMANENT, 422, "fake_invalid", "simulated invalid message"),
    ("maybe_sent_pct", Outcome.MAYBE_SENT, None, "fake_timeout", "simulated timeout after the request was sent"),
)


class Delivery(NamedTuple):
    key: str
    to_address: str
    subject: str


@dataclass(slots=True)
class _Ledger:
    """What the simulated provider holds for one service: shared by every adapter built for it."""

    deliveries: list[Delivery] = field(default_factory=list)
    ids_by_key: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (message id, when)


class FakeAdapter:
    provider: ClassVar[str] = "fake"
    _ledgers: ClassVar[dict[int, _Ledger]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: ServiceConfig, *, events_transport: httpx.AsyncBaseTransport | None = None) -> None:
        options = config.options
        self.config = config
        self.idempotent = bool(options.get("idempotent", False))
        self.capabilities = Capabilities(
            needs_mime=False,
            max_batch=max(1, min(int(config.batch_size), MAX_BATCH)),
            honours_idempotency=self.idempotent,
            idempotency_window_seconds=IDEMPOTENCY_WINDOW_SECONDS if self.idempotent else 0,
        )
        self.latency = float(options.get("latency_ms", 0.0)) / 1000.0
        self.retry_after = float(options.get("retry_after", 1.0))
        fail_after = options.get("fail_after")
        self.fail_after = int(fail_after) if fail_after is not None else None
        self.error_mix = [
            (float(options.get(name, 0.0)), outcome, status, code, text)
            for name, outcome, status, code, text in _ERROR_MIX
        ]
        seed = options.get("seed")
        self._random = random.Random(int(seed)) if seed is not None else random.Random()
        self.calls = 0  # provider calls made by this instance (one per send(), whatever its size)
        # Webhook events posted back to EDM (options["events"]); None when not configured.
        self.events = EventEmitter.from_config(config, transport=events_transport)

    # -- the adapter contract ------------------------------------------------------------------------

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        started = time.monotonic()
        self.calls += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        ledger = self._ledger(self.config.service_id)
        with self._registry_lock:
            results = [self._one(ledger, message) for message in messages]
            taken = self._taken(ledger, messages, results) if self.events is not None else []
        if self.events is not None and taken:
            self.events.emit(taken)
        latency_ms = int((time.monotonic() - started) * 1000)
        return [_with_latency(result, latency_ms) for result in results]

    async def aclose(self) -> None:
        if self.events is not None:  # otherwise nothing pooled
            await self.events.aclose()

    # -- inspection for tests and demos --------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Distinct messages this adapter's service accepted (see `deliveries_for`)."""
        return self.deliveries_for(self.config.service_id)

    @classmethod
    def deliveries_for(cls, service_id: int) -> list[Delivery]:
        with cls._registry_lock:
            return list(cls._ledger(service_id).deliveries)

    @classmethod
    def delivered_keys(cls, service_id: int) -> list[str]:
        return [delivery.key for delivery in cls.deliveries_for(service_id)]

    @classmethod
    def reset(cls, service_id: int | None = None) -> None:
        """Forget what was delivered: for one service, or for all (between tests)."""
        with cls._registry_lock:
            if service_id is None:
                cls._ledgers.clear()
            else:
                cls._ledgers.pop(service_id, None)

    # -- simulation ----------------------------------------------------------------------------------

    @classmethod
    def _ledger(cls, service_id: int) -> _Ledger:
        return cls._ledgers.setdefault(service_id, _Ledger())

    def _one(self, ledger: _Ledger, message: OutboundMessage) -> SendResult:
        if self.fail_after is not None and len(ledger.deliveries) >= self.fail_after:
            return SendResult(
                message.key,
                Outcome.AUTH_CONFIG,
                status=401,
                provider_code="fake_key_revoked",
                message="simulated API key revoked",
            )
        known = self._known_id(ledger, message.key)
        if known is not None:  # the provider deduplicates on the key: same id, no second mail
            return SendResult(
                message.key, Outcome.ACCEPTED, status=200, provider_message_id=known, message=_DUPLICATE_NOTE
            )
        if message.to_address.rstrip(".").lower().endswith(".invalid"):
            return SendResult(
                message.key,
                Outcome.PERMANENT,
                status=422,
                provider_code="fake_bad_recipient",
                message="simulated recipient rejected",
                recipient_rejected=True,
            )
        roll = self._random.random() * 100.0  # exactly one draw per message keeps seeds reproducible
        for pct, outcome, status, code, text in self.error_mix:
            if roll < pct:
                return self._failure(ledger, message, outcome, status, code, text)
            roll -= pct
        message_id = self._deliver(ledger, message)
        return SendResult(message.key, Outcome.ACCEPTED, status=200, provider_message_id=message_id, message="accepted")

    def _failure(
        self,
        ledger: _Ledger,
        message: OutboundMessage,
        outcome: Outcome,
        status: int | None,
        code: str,
        text: str,
    ) -> SendResult:
        if outcome is Outcome.MAYBE_SENT:
            self._deliver(ledger, message)  # it did arrive; only the answer was lost
        retry_after = self.retry_after if outcome is Outcome.THROTTLED else None
        return SendResult(
            message.key, outcome, status=status, provider_code=code, message=text, retry_after=retry_after
        )

    @staticmethod
    def _taken(
        ledger: _Ledger, messages: Sequence[OutboundMessage], results: Sequence[SendResult]
    ) -> list[tuple[OutboundMessage, str]]:
        """Messages the simulated provider took this call, with their ids: the ones its events are about.
        A duplicate request sent nothing new; a `maybe_sent` message did arrive (only the answer was lost)."""
        taken = []
        for message, result in zip(messages, results, strict=True):
            new_mail = result.outcome is Outcome.ACCEPTED and result.message != _DUPLICATE_NOTE
            if new_mail or result.outcome is Outcome.MAYBE_SENT:
                taken.append((message, ledger.ids_by_key[message.key][0]))
        return taken

    def _known_id(self, ledger: _Ledger, key: str) -> str | None:
        if not self.idempotent:
            return None
        entry = ledger.ids_by_key.get(key)
        if entry is None or time.monotonic() - entry[1] > IDEMPOTENCY_WINDOW_SECONDS:
            return None
        return entry[0]

    @staticmethod
    def _deliver(ledger: _Ledger, message: OutboundMessage) -> str:
        message_id = f"fake-{uuid.uuid4().hex}"
        ledger.deliveries.append(Delivery(message.key, message.to_address, message.subject))
        ledger.ids_by_key[message.key] = (message_id, time.monotonic())
        return message_id


def _with_latency(result: SendResult, latency_ms: int) -> SendResult:
    return dataclasses.replace(result, latency_ms=latency_ms)
