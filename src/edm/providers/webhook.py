"""The webhook side of the provider contract (docs/events.md): verify over the raw bytes, then parse.

A provider module exposes one `WebhookHandler`. Handlers are pure: no database and no network, except the
`fetch` the pipeline lends them (SNS certificates only). The pipeline (`edm.api.webhooks`) reads the
body, finds the candidate services and their secrets, calls `verify` per service until one succeeds,
calls `parse`, stores each event once and answers (docs/events.md#pipeline-and-responses).

Secrets: each service keeps a list of webhook secrets in its encrypted credentials
(`credentials["webhook_secrets"]`), several at once during a rotation; `WebhookTarget.secrets` holds the
ones not expired. What a secret *is* depends on the provider: EngageLab's app key, SendGrid's ECDSA public
key, Mailgun's signing key, `user:password` or a token for Postmark/Brevo/SparkPost, Resend's `whsec_…`,
the SMTP DSN endpoint's inbound token. SES/SNS uses no secret but the service's `options["sns_topic_arns"]`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson

from edm.vocabulary.events import BadElement, NormalizedEvent

Fetch = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    body: bytes
    headers: Mapping[str, str]  # names in lower case
    query: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""  # the media type only, lower case: "application/json"
    inbound: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """One service whose secrets may verify a request."""

    service_id: int
    provider: str
    secrets: tuple[str, ...] = ()  # not expired, newest first
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifyContext:
    now: dt.datetime
    fetch: Fetch  # GET a URL (cached by the pipeline); only for SNS signing certificates


@dataclass(slots=True)
class ParsedPayload:
    items: list[NormalizedEvent | BadElement] = field(default_factory=list)
    # True for providers that post arrays (SendGrid, SparkPost, batched Brevo): each element stands alone, and
    # an element without any id is stored unmatched rather than failing the request with 400.
    batch: bool = False
    # A provider control message that carries no event: "subscription_confirmation", "ping", ...
    control: str | None = None
    confirm_url: str | None = None  # SNS SubscribeURL, fetched by the pipeline after verification


class WebhookError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "webhook_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedPayload(WebhookError):
    status = 400
    code = "malformed_payload"


class InvalidSignature(WebhookError):
    status = 401
    code = "invalid_signature"


class WebhookHandler(Protocol):
    provider: ClassVar[str]
    # False when verification does not use `WebhookTarget.secrets` (SES checks certificates and topic ARNs).
    needs_secret: ClassVar[bool]

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        """True when the request is authentic for this service (any of its secrets). Never raises for a bad
        or missing signature: returns False. Must use constant-time comparisons."""
        ...

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        """A value that must never be accepted twice (Mailgun's token), or None."""
        ...

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        """Normalized events, one per element. Raises MalformedPayload for a body that is not the provider's
        format at all (bad JSON, wrong content type); a bad element of a batch becomes a BadElement."""
        ...


# --------------------------------------------------------------------------------------------------------
# Helpers shared by the provider modules
# --------------------------------------------------------------------------------------------------------


def parse_json(request: WebhookRequest, *, content_types: Sequence[str] = ("application/json",)) -> Any:
    """The JSON body, or MalformedPayload naming what was wrong."""
    if request.content_type and request.content_type not in content_types:
        allowed = " or ".join(content_types)
        raise MalformedPayload(f"content type {request.content_type!r} is not accepted here (expected {allowed})")
    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"body is not valid JSON: {exc}") from None


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality of two strings/bytes."""
    a_bytes = a.encode() if isinstance(a, str) else a
    b_bytes = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


def from_epoch(value: Any) -> dt.datetime | None:
    """An epoch timestamp in seconds or milliseconds (int, float or numeric string) as aware UTC."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number > 1e11:  # milliseconds: 1e11 s is the year 5138
        number /= 1000.0
    try:
        return dt.datetime.fromtimestamp(number, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def from_iso(value: Any) -> dt.datetime | None:
    """An ISO 8601 timestamp ("2024-01-01T00:00:00Z", with or without fraction/offset) as aware UTC."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def fresh(timestamp: dt.datetime | None, now: dt.datetime, *, seconds: float) -> bool:
    """True when `timestamp` is within ±seconds of now (signed-timestamp replay window)."""
    return timestamp is not None and abs((now - timestamp).total_seconds()) <= seconds


def basic_or_token_matches(request: WebhookRequest, secrets: Sequence[str]) -> bool:
    """Postmark / Brevo / SparkPost / EngageLab-URL style: the request carries one of the secrets as
    `Authorization: Basic b64(user:password)` (secret "user:password"), `Authorization: Bearer <secret>`,
    `X-Webhook-Token: <secret>`, or `?token=<secret>` in the URL. Constant time per secret."""
    offered: list[str] = []
    authorization = request.header("authorization") or ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            offered.append(base64.b64decode(value.strip(), validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError):
            pass
    elif scheme.lower() == "bearer" and value:
        offered.append(value.strip())
    for candidate in (request.header("x-webhook-token"), request.query.get("token")):
        if candidate:
            offered.append(candidate)
    matched = False
    for secret in secrets:
        for value in offered:
            matched |= same(value, secret)  # no early exit: every comparison runs
    return matched


def text_or_none(value: Any, limit: int = 500) -> str | None:
    """A short string for reason/description fields, or None."""
    if value is None or value == "":
        return None
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
