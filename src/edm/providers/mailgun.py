"""Mailgun: the `messages` API adapter (batch sending with recipient variables) and the webhook handler.

Credentials: {"api_key": "key-…"} (HTTP Basic `api:<key>`).
Options: `region` ("us" → https://api.mailgun.net, "eu" → https://api.eu.mailgun.net) or `base_url`;
`domain` (the Mailgun sending domain, default: the service's domain).

Sending
-------
* `POST /v3/<domain>/messages`, form-encoded. Our ids travel as `v:subtask_id` / `v:task_id` (they come
  back in `event-data.user-variables`) and in the `h:X-EDM-SubTask-Id` header; our other headers
  (Message-ID, List-Unsubscribe, List-Unsubscribe-Post, Feedback-ID…) and Reply-To go as `h:` fields.
  Tracking is off per message: `o:tracking`, `o:tracking-clicks`, `o:tracking-opens` = no.
* A batch is one request with several `to` fields and `recipient-variables` (JSON keyed by address); each
  message's own subject, html, text, headers and ids are recipient variables, referenced as
  `%recipient.subject%`, `v:subtask_id=%recipient.subtask_id%`, `h:List-Unsubscribe=%recipient.h_list_unsubscribe%`.
  Only messages with the same From, Reply-To, header names, custom arg names and body parts share a request,
  an address appears once per request, and a message whose parts contain "%recipient." goes alone (Mailgun
  would substitute inside it).
* The 200 answer's `id` (the Message-Id, `<>` stripped) is the provider_message_id of every message of the
  request; events carry it as `event-data.message.headers.message-id`. Our `subtask_id` is the primary key.
* Errors: 401/403 and 404 "Domain not found" (wrong domain or region) → auth_config; 402 → quota_exhausted;
  429 → throttled (Retry-After, else X-RateLimit-Reset); 400/413 → permanent (recipient_rejected when the
  `to` address is refused); 5xx → transient. Mailgun does not say which recipient of a batch made it answer
  400, and nothing of the request was sent, so a batch refused for an address is split in halves and sent
  again within the same call until the culprits are alone. After a throttled / quota / auth answer the
  remaining requests of the call are not attempted: they get the same class.

Webhook
-------
Secret: the domain's "HTTP webhook signing key" (not the API key). One JSON event per request:
`{"signature": {"timestamp", "token", "signature"}, "event-data": {…}}`; HMAC-SHA256(key, timestamp + token)
in hex, timestamp within 10 minutes, and the token is the replay nonce (the pipeline refuses one seen
before). The signature does not cover the body: Mailgun's scheme, nothing we can add. Dedupe:
`event-data.id` + `event-data.timestamp`. The flat form trio of inbound routes verifies too (replies are
handled by conversations, planned in docs/overview.md#conversations-replies, not parsed here).
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx
import orjson

from edm import clock
from edm.providers.base import Capabilities, OutboundMessage, Outcome, SendResult
from edm.providers.http import (
    HttpAdapter,
    accepted,
    classify_status,
    failure,
    json_or_none,
    retry_after_seconds,
)
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
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent

MAX_BATCH = 1000  # Mailgun's recipients per batch request
# Mailgun refuses messages above 25 MB; a batch carries every recipient's body, so requests stay well below.
MAX_BATCH_BYTES = 10_000_000
SIGNATURE_WINDOW_SECONDS = 600.0
RECIPIENT_MARKER = "%recipient."
TRACKING_OFF = {"o:tracking": "no", "o:tracking-clicks": "no", "o:tracking-opens": "no"}
# Outcomes that concern the whole service: the rest of the call would get the same answer.
_SPLIT_CODE = "batch_rejected"  # a batch refused because of some recipient: split it and send again
# Mailgun's 400 texts about an address: "'to' parameter is not a valid address. please check documentation".
# Narrow on purpose: a 400 that is our request's fault must not reject (and so suppress) recipients.
_ADDRESS_ERROR_RE = re.compile(r"not a valid (?:e-?mail )?address|invalid (?:e-?mail )?address", re.IGNORECASE)
_ENHANCED_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_VARIABLE_NAME_RE = re.compile(r"[^a-z0-9]+")


class MailgunAdapter(HttpAdapter):
    provider: ClassVar[str] = "mailgun"
    capabilities: ClassVar[Capabilities] = Capabilities(needs_mime=False, max_batch=MAX_BATCH)
    default_base_url: ClassVar[str] = "https://api.mailgun.net"
    regional_base_urls: ClassVar[Mapping[str, str]] = {
        "us": "https://api.mailgun.net",
        "eu": "https://api.eu.mailgun.net",
    }

    def default_headers(self) -> dict[str, str]:
        api_key = str(self.config.credentials.get("api_key", ""))
        token = base64.b64encode(f"api:{api_key}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    @property
    def sending_domain(self) -> str:
        return str(self.config.options.get("domain") or self.config.domain)

    def plan_requests(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        return plan_requests(messages)

    async def send_group(
        self, messages: Sequence[OutboundMessage], group: list[int], results: list[SendResult | None]
    ) -> None:
        answers = await self.send_request([messages[i] for i in group])
        if len(group) > 1 and any(answer.provider_code == _SPLIT_CODE for answer in answers):
            middle = len(group) // 2  # nothing was sent: halve until the refused address is alone
            await self.send_group(messages, group[:middle], results)
            await self.send_group(messages, group[middle:], results)
            return
        for index, answer in zip(group, answers, strict=True):
            results[index] = answer

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        fields = _single_fields(messages[0]) if len(messages) == 1 else _batch_fields(messages)
        path = f"/v3/{urllib.parse.quote(self.sending_domain, safe='')}/messages"
        return client.build_request("POST", path, data=fields)

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        status = response.status_code
        if 200 <= status < 300:
            message_id = str(response.json()["id"]).strip().strip("<>")  # ValueError/KeyError: not Mailgun
            if not message_id:
                raise ValueError("empty message id")
            return [accepted(m, message_id, status=status, latency_ms=latency_ms) for m in messages]
        text = _error_text(response)
        outcome = _classify(status)
        about_address = outcome is Outcome.PERMANENT and status == 400 and bool(_ADDRESS_ERROR_RE.search(text))
        if about_address and len(messages) > 1:
            return [
                failure(
                    m,
                    Outcome.TRANSIENT,
                    _SPLIT_CODE,
                    f"HTTP {status}: {text}",
                    status=status,
                    latency_ms=latency_ms,
                    recipient_level=True,
                )
                for m in messages
            ]
        retry_after = _retry_after(response) if outcome is Outcome.THROTTLED else None
        return [
            failure(
                m,
                outcome,
                f"http_{status}",
                f"HTTP {status}: {text}",
                status=status,
                retry_after=retry_after,
                latency_ms=latency_ms,
                recipient_rejected=about_address,
            )
            for m in messages
        ]


# --------------------------------------------------------------------------------------------------------
# Request planning and form fields
# --------------------------------------------------------------------------------------------------------


def plan_requests(messages: Sequence[OutboundMessage]) -> list[list[int]]:
    """Indexes of `messages` per provider request, in the order of their first message."""
    groups: list[list[int]] = []
    open_group: dict[tuple[Any, ...], _OpenRequest] = {}
    for index, message in enumerate(messages):
        if len(messages) == 1 or _has_marker(message):
            groups.append([index])
            continue
        key = _shape(message)
        address = message.to_address.strip().lower()
        size = _size(message)
        current = open_group.get(key)
        if current is None or not current.takes(address, size):
            current = _OpenRequest()
            open_group[key] = current
            groups.append(current.indexes)
        current.add(index, address, size)
    return groups


@dataclasses.dataclass(slots=True)
class _OpenRequest:
    indexes: list[int] = dataclasses.field(default_factory=list)
    addresses: set[str] = dataclasses.field(default_factory=set)
    size: int = 0

    def takes(self, address: str, size: int) -> bool:
        return address not in self.addresses and len(self.indexes) < MAX_BATCH and self.size + size <= MAX_BATCH_BYTES

    def add(self, index: int, address: str, size: int) -> None:
        self.indexes.append(index)
        self.addresses.add(address)
        self.size += size


def _size(message: OutboundMessage) -> int:
    parts = (message.subject, message.html, message.text, *message.headers.values())
    return sum(len(part.encode()) for part in parts)


def _shape(message: OutboundMessage) -> tuple[Any, ...]:
    """What must be equal for messages to share one request (the rest goes in recipient variables)."""
    return (
        message.from_address,
        message.from_name,
        message.reply_to or "",
        tuple(sorted(_headers(message))),
        tuple(sorted(message.custom_args)),
        bool(message.text),
        bool(message.html),
    )


def _has_marker(message: OutboundMessage) -> bool:
    parts = (message.subject, message.html, message.text, *message.headers.values())
    return any(RECIPIENT_MARKER in part for part in parts)


def _headers(message: OutboundMessage) -> dict[str, str]:
    headers = {name: value for name, value in message.headers.items() if value}
    subtask_id = message.custom_args.get("subtask_id")
    if subtask_id and not any(name.lower() == "x-edm-subtask-id" for name in headers):
        headers["X-EDM-SubTask-Id"] = str(subtask_id)
    return headers


def _header_variable(name: str) -> str:
    return "h_" + _VARIABLE_NAME_RE.sub("_", name.lower()).strip("_")


def _common_fields(message: OutboundMessage) -> dict[str, str | list[str]]:
    fields: dict[str, str | list[str]] = {"from": email.utils.formataddr((message.from_name, message.from_address))}
    if message.reply_to:
        fields["h:Reply-To"] = message.reply_to
    fields.update(TRACKING_OFF)
    return fields


def _single_fields(message: OutboundMessage) -> dict[str, str | list[str]]:
    if not message.text and not message.html:
        raise ValueError("the message has neither a text nor an HTML part")
    fields = _common_fields(message)
    fields["to"] = email.utils.formataddr((message.to_name, message.to_address))
    fields["subject"] = message.subject
    if message.text:
        fields["text"] = message.text
    if message.html:
        fields["html"] = message.html
    for name, value in _headers(message).items():
        fields[f"h:{name}"] = value
    for name, value in message.custom_args.items():
        fields[f"v:{name}"] = str(value)
    return fields


def _batch_fields(messages: Sequence[OutboundMessage]) -> dict[str, str | list[str]]:
    first = messages[0]
    fields = _common_fields(first)
    fields["to"] = [email.utils.formataddr((m.to_name, m.to_address)) for m in messages]
    fields["subject"] = "%recipient.subject%"
    if first.text:
        fields["text"] = "%recipient.text%"
    if first.html:
        fields["html"] = "%recipient.html%"
    for name in _headers(first):
        fields[f"h:{name}"] = f"%recipient.{_header_variable(name)}%"
    for name in first.custom_args:
        fields[f"v:{name}"] = f"%recipient.{name}%"
    variables = {m.to_address: _recipient_variables(m) for m in messages}
    fields["recipient-variables"] = orjson.dumps(variables).decode()
    return fields


def _recipient_variables(message: OutboundMessage) -> dict[str, str]:
    variables = {"subject": message.subject, "text": message.text, "html": message.html}
    variables.update({_header_variable(name): value for name, value in _headers(message).items()})
    variables.update({str(name): str(value) for name, value in message.custom_args.items()})
    return variables


# --------------------------------------------------------------------------------------------------------
# Answer classification
# --------------------------------------------------------------------------------------------------------


def _error_text(response: httpx.Response) -> str:
    body = json_or_none(response)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.text.strip()[:200] or response.reason_phrase


def _classify(status: int) -> Outcome:
    if status == 402:
        return Outcome.QUOTA_EXHAUSTED
    if status == 413:
        return Outcome.PERMANENT
    return classify_status(status)  # 404 "Domain not found" (wrong domain or region) is auth_config there


def _retry_after(response: httpx.Response) -> float | None:
    delay = retry_after_seconds(response)
    if delay is not None:
        return delay
    when = from_epoch(response.headers.get("x-ratelimit-reset"))  # seconds or milliseconds
    if when is None:
        return None
    return max(0.0, (when - clock.utc_now()).total_seconds())


# --------------------------------------------------------------------------------------------------------
# Webhook
# --------------------------------------------------------------------------------------------------------


def _signature_fields(request: WebhookRequest) -> tuple[str, str, str] | None:
    """(timestamp, token, signature) from a JSON event, or from the flat form fields of an inbound route."""
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            form = dict(urllib.parse.parse_qsl(request.body.decode("utf-8")))
        except UnicodeDecodeError:
            return None
        source: Any = form
    else:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return None
        source = body.get("signature") if isinstance(body, dict) else None
        if not isinstance(source, dict) and isinstance(body, dict):
            source = body  # the flat trio posted as JSON
    if not isinstance(source, dict):
        return None
    values = tuple(source.get(name) for name in ("timestamp", "token", "signature"))
    if not all(isinstance(value, (str, int, float)) and str(value) for value in values):
        return None
    timestamp, token, signature = (str(value) for value in values)
    return timestamp, token, signature


def expected_signature(secret: str, timestamp: str, token: str) -> str:
    """Mailgun's signature of (timestamp, token) with the signing key `secret`: HMAC-SHA256, hex (also the
    signature of its inbound routes)."""
    return hmac.new(secret.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


_SUPPRESSION_REASONS = frozenset({"suppress-bounce", "suppress-unsubscribe", "suppress-complaint"})
_SIMPLE_EVENTS: dict[str, EventType] = {
    "accepted": EventType.ACCEPTED,
    "delivered": EventType.DELIVERED,
    "opened": EventType.OPENED,
    "clicked": EventType.CLICKED,
    "complained": EventType.COMPLAINED,
    "unsubscribed": EventType.UNSUBSCRIBED,
}


class MailgunWebhook:
    provider: ClassVar[str] = "mailgun"
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        fields = _signature_fields(request)
        if fields is None:
            return False
        timestamp, token, signature = fields
        if not fresh(from_epoch(timestamp), ctx.now, seconds=SIGNATURE_WINDOW_SECONDS):
            return False
        matched = False
        for secret in target.secrets:
            matched |= same(expected_signature(secret, timestamp, token), signature.lower())  # no early exit
        return matched

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        fields = _signature_fields(request)
        return fields[1] if fields else None

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        body = parse_json(request)
        data = body.get("event-data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise MalformedPayload("Mailgun webhooks carry an 'event-data' object")
        name = data.get("event")
        if not isinstance(name, str) or not name:
            raise MalformedPayload("event-data has no 'event' name")
        return ParsedPayload(items=[parse_event(name, data)])


def parse_event(name: str, data: dict[str, Any]) -> NormalizedEvent:
    event_type, bounce_class = _event_type(name, data)
    status = _object(data.get("delivery-status"))  # null on some events
    variables = _user_variables(data.get("user-variables"))
    client_info = _object(data.get("client-info"))
    smtp_message = " ".join(str(status.get(key) or "") for key in ("message", "description"))
    code = status.get("code")
    enhanced = _ENHANCED_RE.search(smtp_message)
    return NormalizedEvent(
        event_type=event_type,
        provider_event=name,
        raw=data,
        occurred_at=from_epoch(data.get("timestamp")),
        subtask_id=_text(variables.get("subtask_id")),
        task_id=_text(variables.get("task_id")),
        provider_message_id=_message_id(data),
        provider_event_id=_event_id(data),
        recipient=_recipient(data),
        bounce_class=bounce_class,
        smtp_code=code if isinstance(code, int) and 200 <= code <= 599 else None,
        enhanced_code=enhanced.group(1) if enhanced else None,
        reason=_reason(data, status),
        url=_text(data.get("url")) if event_type is EventType.CLICKED else None,
        ip=_text(data.get("ip")),
        user_agent=text_or_none(client_info.get("user-agent")),
        details=_details(data, status),
    )


def _event_type(name: str, data: dict[str, Any]) -> tuple[EventType, BounceClass | None]:
    if name in _SIMPLE_EVENTS:
        return _SIMPLE_EVENTS[name], None
    if name == "rejected":  # Mailgun refused to send (sandbox, domain, policy): never the address's fault
        return EventType.REJECTED, BounceClass.BLOCK
    if name != "failed":
        return EventType.UNKNOWN, None
    if str(data.get("severity") or "").lower() == "temporary":
        return EventType.DEFERRED, BounceClass.SOFT  # Mailgun keeps retrying
    reason = str(data.get("reason") or "").lower()
    if reason in _SUPPRESSION_REASONS:  # on Mailgun's own lists: never attempted
        return EventType.REJECTED, BounceClass.SUPPRESSED
    if reason == "espblock":
        return EventType.REJECTED, BounceClass.BLOCK
    if reason == "old":  # temporary failures until Mailgun gave up: not proof the address is bad
        return EventType.SOFT_BOUNCED, BounceClass.SOFT
    return EventType.HARD_BOUNCED, BounceClass.HARD


def _user_variables(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # older payloads echo X-Mailgun-Variables as a JSON string
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def _message_id(data: dict[str, Any]) -> str | None:
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    value = headers.get("message-id") if isinstance(headers, dict) else None
    return _text(value.strip().strip("<>")) if isinstance(value, str) else None


def _event_id(data: dict[str, Any]) -> str | None:
    event_id, timestamp = _text(data.get("id")), data.get("timestamp")
    if event_id is None or timestamp is None:
        return None  # Mailgun ids are unique only within a day: never alone
    return f"{event_id}:{timestamp}"


def _recipient(data: dict[str, Any]) -> str | None:
    recipient = _text(data.get("recipient"))
    if recipient:
        return recipient
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    to = headers.get("to") if isinstance(headers, dict) else None
    if isinstance(to, str) and "," not in to:  # rejected events name the recipient only in the To header
        return _text(email.utils.parseaddr(to)[1])
    return None


def _reason(data: dict[str, Any], status: dict[str, Any]) -> str | None:
    reject = _object(data.get("reject"))
    for candidate in (
        status.get("description"),
        status.get("message"),
        reject.get("reason"),
        reject.get("description"),
        data.get("reason"),
    ):
        text = text_or_none(candidate)
        if text:
            return text
    return None


def _details(data: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    details = {key: data[key] for key in ("severity", "reason", "tags", "log-level") if data.get(key)}
    for key in ("attempt-no", "retry-seconds"):
        if status.get(key) is not None:
            details[key] = status[key]
    return details


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


webhook = MailgunWebhook()

__all__ = ["MailgunAdapter", "MailgunWebhook", "parse_event", "plan_requests", "webhook"]
