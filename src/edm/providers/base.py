"""The provider adapter contract. Every provider (SMTP, ESP HTTP APIs, the fake) implements it.

An adapter is built once per service configuration (by the registry), takes `OutboundMessage`s and
returns one `SendResult` per message. It never touches the database and never raises for a provider
answer: every answer, network failure or timeout is classified into an `Outcome` (docs/sending.md#failures-and-failover,
docs/providers.md#how-answers-are-classified). Exceptions escaping `send()` are bugs; the worker still records them (as
`transient`) so nothing is lost.

Error classes, and whether a retry can help:

    accepted         the provider took the message (provider_message_id when it returns one)
    transient        retry later, any service may take it (timeouts before sending, 5xx, SMTP 4yz)
    throttled        retry at once elsewhere; the service backs off (`retry_after` when the provider says)
    quota_exhausted  retry at once elsewhere; the service waits for its reset
    auth_config      retry at once elsewhere; the service freezes until an admin unfreezes it
    permanent        never retry this message (invalid request for it, recipient rejected, render error)
    maybe_sent       the request may have reached the provider (timeout after the body was sent)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"  # provider accepted the message
    TRANSIENT = "transient"  # temporary failure; retry with back-off
    THROTTLED = "throttled"  # provider asks us to slow down
    QUOTA_EXHAUSTED = "quota_exhausted"  # provider quota or credits used up
    AUTH_CONFIG = "auth_config"  # credentials, domain, region or endpoint wrong
    PERMANENT = "permanent"  # this message can never be sent as it is
    MAYBE_SENT = "maybe_sent"  # unknown: the provider may have taken it


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """What an adapter needs to know about its service. Credentials arrive decrypted, in memory only."""

    service_id: int
    provider: str
    domain: str
    credentials: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    max_concurrency: int = 2
    batch_size: int = 1
    request_timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One rendered mail to one recipient. `mime` is the full RFC 5322 message for adapters that need it."""

    key: str  # idempotency key (the SubTask's public id): stable across attempts
    envelope_from: str  # MAIL FROM / return path
    from_address: str
    from_name: str
    to_address: str
    to_name: str
    subject: str
    html: str
    text: str
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # our extra headers (Message-ID, List-Unsubscribe…)
    custom_args: dict[str, str] = field(default_factory=dict)  # {subtask_id, task_id}
    mime: bytes | None = None
    # `mime` has CRLF line ends and nothing else (EDM's own builder guarantees it): the SMTP adapter skips the
    # check for bare CR and LF (two-byte counts over the whole message).
    mime_crlf: bool = False


@dataclass(frozen=True, slots=True)
class SendResult:
    key: str
    outcome: Outcome
    status: int | None = None  # HTTP status or SMTP reply code
    provider_code: str | None = None  # provider error code, or SMTP enhanced status (5.1.1)
    message: str = ""  # short, secret-free explanation (≤ 500 chars)
    provider_message_id: str | None = None
    retry_after: float | None = None  # seconds, when the provider said so
    # A transient failure caused by the recipient (greylisting, mailbox full) rather than the service:
    # it does not count toward freezing the service (docs/sending.md#failures-and-failover).
    recipient_level: bool = False
    # A permanent failure that means the address itself is bad (SMTP 5.1.x): delivery_state `rejected`.
    recipient_rejected: bool = False
    latency_ms: int = 0


@dataclass(frozen=True, slots=True)
class CredentialCheck:
    """What a provider answered to an authenticated call that sends nothing (`edm doctor`): `ok` True (the
    credentials work), False (refused, or the service could not be reached: `detail` says which), or None (not
    checked: the provider has no such call)."""

    ok: bool | None
    detail: str


@dataclass(frozen=True, slots=True)
class Capabilities:
    needs_mime: bool  # the adapter sends `OutboundMessage.mime` (SMTP); HTTP APIs use the parts
    max_batch: int = 1  # recipients per provider call the adapter accepts
    honours_idempotency: bool = False  # a resend with the same key cannot produce a second mail
    idempotency_window_seconds: int = 0


class Adapter(Protocol):
    provider: ClassVar[str]
    capabilities: Capabilities

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Send a batch (length ≤ capabilities.max_batch); one result per message, same order."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...


def truncate(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
