"""`provider = "sparkpost"`: SparkPost (Bird) Transmissions API and its event webhook.

Sending
-------
`POST {base}/api/v1/transmissions`, `Authorization: <API key>` (no scheme).

    credentials  {"api_key": "…"}
    options      {"region": "us" | "eu"}  (default us: https://api.sparkpost.com, eu: https://api.eu.sparkpost.com)
                 {"base_url": "…"}        (overrides the region)
                 {"ip_pool": "…"}         (optional: SparkPost IP pool id)

One transmission carries up to `MAX_BATCH` recipients. Every message of a batch has its own subject, body and
headers, so the transmission's content is made of SparkPost template substitutions and each recipient brings
its own values in `substitution_data`:

    content    {"subject": "{{{edm_subject}}}", "html": "{{{edm_html}}}", "text": "{{{edm_text}}}",
                "headers": {"List-Unsubscribe": "{{{edm_h0}}}", …}}
    recipient  {"address": {email, name}, "metadata": {subtask_id, task_id},
                "substitution_data": {"edm_subject": …, "edm_html": …, "edm_text": …, "edm_h0": …}}

Triple braces insert a value without HTML escaping (SparkPost's template language works in the subject,
headers, text and HTML). A single message is sent the same way, on purpose: substituted values are not parsed
as template code, so a literal `{{` in a mail can never break rendering, and there is one code path.
The sender (from address and name), Reply-To and the set of header names must be the same for every
recipient of a transmission: `send()` splits a batch into transmissions by that, and by `MAX_BATCH`.
`MAX_BATCH` is 100 (not SparkPost's recipient limit) because each recipient carries its whole rendered HTML in
its substitution data and a transmission must stay a few megabytes.

Our ids travel in `recipients[].metadata` (events return them as `rcpt_meta`) and in `X-EDM-SubTask-Id`.
Tracking is off in every request: `options.open_tracking = options.click_tracking = false`.

The answer names one transmission id for the whole batch, and events carry `transmission_id`: that id is the
provider message id of every recipient. It identifies the batch, not the recipient, so it is only a fallback
lookup; our metadata is the primary key. `total_rejected_recipients > 0` does not say which recipients were
refused; their `policy_rejection`/`generation_rejection` events follow, carrying their metadata, so every
message of a 200 answer is recorded as accepted and those events apply the rejection.

Errors (docs/providers.md#how-answers-are-classified, SparkPost's extended error codes): 420 (sending limit, codes
2101–2103) → quota_exhausted; 429 → throttled; 401/403 and sending-domain codes (7000 blacklisted, 7001
invalid/unconfigured, 1910 not configured) → auth_config; 1902 "Message generation rejected" (every recipient refused,
e.g. suppressed) → permanent, recipient rejected; 1502/1900 (resources unavailable) and 5xx → transient; other 400/422 →
permanent.

Webhook
-------
No signature: the webhook's Basic credentials (`user:password`) or OAuth2/bearer token is the service's
secret (`basic_or_token_matches`). The body is a JSON array of `{"msys": {"<class>_event": {...}}}`; the
creation ping is `[{"msys": {}}]`. Each element stands alone (batch); `event_id` is the dedupe key.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx

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
    basic_or_token_matches,
    from_epoch,
    from_iso,
    parse_json,
    text_or_none,
)
from edm.vocabulary.events import BadElement, BounceClass, EventType, NormalizedEvent

PROVIDER = "sparkpost"
MAX_BATCH = 100
SUBTASK_HEADER = "X-EDM-SubTask-Id"
# SparkPost takes these from content fields, not from `headers`.
_NOT_FORWARDED = frozenset({"from", "to", "subject", "reply-to", "cc"})
_QUOTA_CODES = frozenset({"2101", "2102", "2103"})
_CONFIG_CODES = frozenset({"1100", "1303", "1304", "1601", "1910", "7000", "7001"})
_TRANSIENT_CODES = frozenset({"1502", "1900"})
_REJECTED_CODES = frozenset({"1902"})


class SparkPostAdapter(HttpAdapter):
    provider: ClassVar[str] = PROVIDER
    capabilities: ClassVar[Capabilities] = Capabilities(needs_mime=False, max_batch=MAX_BATCH)
    default_base_url: ClassVar[str] = "https://api.sparkpost.com"
    regional_base_urls: ClassVar[Mapping[str, str]] = {
        "us": "https://api.sparkpost.com",
        "eu": "https://api.eu.sparkpost.com",
    }

    def default_headers(self) -> dict[str, str]:
        return {"authorization": str(self.config.credentials.get("api_key", "")), "accept": "application/json"}

    def plan_requests(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        return transmission_groups(messages, MAX_BATCH)

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        body = transmission(messages, ip_pool=self.config.options.get("ip_pool"))
        return client.build_request("POST", "/api/v1/transmissions", json=body)

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        status = response.status_code
        if 200 <= status < 300:
            transmission_id = str(response.json()["results"]["id"])
            if not transmission_id:
                raise ValueError("no transmission id in the answer")
            return [accepted(m, transmission_id, status=status, latency_ms=latency_ms) for m in messages]
        return classify_error(messages, response, latency_ms)


# --------------------------------------------------------------------------------------------------------
# Request
# --------------------------------------------------------------------------------------------------------


def message_headers(message: OutboundMessage) -> dict[str, str]:
    headers = {name: value for name, value in message.headers.items() if name.lower() not in _NOT_FORWARDED}
    subtask_id = message.custom_args.get("subtask_id")
    if subtask_id and not any(name.lower() == SUBTASK_HEADER.lower() for name in headers):
        headers[SUBTASK_HEADER] = subtask_id
    return headers


def _shape(message: OutboundMessage) -> tuple[str, str, str, tuple[str, ...]]:
    """What must be equal across the recipients of one transmission."""
    return (message.from_address, message.from_name, message.reply_to or "", tuple(message_headers(message)))


def transmission_groups(messages: Sequence[OutboundMessage], size: int) -> list[list[int]]:
    """Indexes of `messages` per transmission: same sender, Reply-To and header names; at most `size` each."""
    by_shape: dict[tuple[str, str, str, tuple[str, ...]], list[int]] = {}
    for index, message in enumerate(messages):
        by_shape.setdefault(_shape(message), []).append(index)
    return [indexes[start : start + size] for indexes in by_shape.values() for start in range(0, len(indexes), size)]


def transmission(messages: Sequence[OutboundMessage], *, ip_pool: Any = None) -> dict[str, Any]:
    """The transmission for messages of one shape (see `transmission_groups`)."""
    if not messages:
        raise ValueError("no message to send")
    first = messages[0]
    header_names = list(message_headers(first))
    content: dict[str, Any] = {
        "from": {"email": first.from_address, **({"name": first.from_name} if first.from_name else {})},
        "subject": "{{{edm_subject}}}",
        "html": "{{{edm_html}}}",
        "text": "{{{edm_text}}}",
    }
    if header_names:
        content["headers"] = {name: f"{{{{{{edm_h{i}}}}}}}" for i, name in enumerate(header_names)}
    if first.reply_to:
        content["reply_to"] = first.reply_to
    options: dict[str, Any] = {"open_tracking": False, "click_tracking": False}
    if ip_pool:
        options["ip_pool"] = str(ip_pool)
    return {
        "options": options,
        "content": content,
        "recipients": [recipient_entry(message, header_names) for message in messages],
    }


def recipient_entry(message: OutboundMessage, header_names: Sequence[str]) -> dict[str, Any]:
    headers = message_headers(message)
    if list(headers) != list(header_names):
        raise ValueError("messages of one transmission must carry the same header names")
    address = {"email": message.to_address, **({"name": message.to_name} if message.to_name else {})}
    substitution = {"edm_subject": message.subject, "edm_html": message.html, "edm_text": message.text}
    substitution.update({f"edm_h{i}": headers[name] for i, name in enumerate(header_names)})
    entry: dict[str, Any] = {"address": address, "substitution_data": substitution}
    metadata = {k: v for k, v in message.custom_args.items() if k in ("subtask_id", "task_id")}
    if metadata:
        entry["metadata"] = metadata
    return entry


def classify_error(messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int) -> list[SendResult]:
    status = response.status_code
    code, text = _first_error(json_or_none(response), response.reason_phrase)
    outcome = classify_status(status)
    if status == 420 or code in _QUOTA_CODES:
        outcome = Outcome.QUOTA_EXHAUSTED
    elif code in _CONFIG_CODES or "sending domain" in text.lower():
        outcome = Outcome.AUTH_CONFIG
    elif code in _TRANSIENT_CODES:
        outcome = Outcome.TRANSIENT
    recipient_rejected = outcome is Outcome.PERMANENT and code in _REJECTED_CODES
    retry_after = retry_after_seconds(response) if outcome is Outcome.THROTTLED else None
    return [
        failure(
            m,
            outcome,
            code or f"http_{status}",
            f"HTTP {status}: {text}",
            status=status,
            retry_after=retry_after,
            latency_ms=latency_ms,
            recipient_rejected=recipient_rejected,
        )
        for m in messages
    ]


def _first_error(body: Any, fallback: str) -> tuple[str | None, str]:
    """`{"errors": [{"message", "code", "description"}]}` → (code, "message: description")."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, fallback
    error = errors[0]
    code = str(error["code"]) if error.get("code") not in (None, "") else None
    parts = [str(error[key]) for key in ("message", "description") if error.get(key)]
    return code, ": ".join(parts) or fallback


# --------------------------------------------------------------------------------------------------------
# Webhook
# --------------------------------------------------------------------------------------------------------

_SIMPLE_EVENTS: dict[str, EventType] = {
    "injection": EventType.ACCEPTED,
    "delivery": EventType.DELIVERED,
    "delay": EventType.DEFERRED,
    "spam_complaint": EventType.COMPLAINED,
    "open": EventType.OPENED,
    "initial_open": EventType.OPENED,
    "amp_open": EventType.OPENED,
    "amp_initial_open": EventType.OPENED,
    "click": EventType.CLICKED,
    "amp_click": EventType.CLICKED,
    "list_unsubscribe": EventType.UNSUBSCRIBED,
    "link_unsubscribe": EventType.UNSUBSCRIBED,
}
_BOUNCES = frozenset({"bounce", "out_of_band"})
_REJECTIONS = frozenset({"policy_rejection", "generation_rejection"})

# SparkPost bounce classification codes (support.sparkpost.com, "Bounce Classification Codes"), by category.
_HARD_CLASSES = frozenset({10, 30, 90})  # invalid recipient, no RCPT, unsubscribe request
_SOFT_CLASSES = frozenset({20, 21, 22, 23, 24, 40, 60, 70, 100})  # soft, DNS, full, size, timeout, generic…
_BLOCK_CLASSES = frozenset({50, 51, 52, 53, 54})  # the receiver blocked us: never the recipient's fault
_ADMIN_CLASSES = frozenset({25, 26})  # failed by SparkPost's own policies (suppression list, Smart Send)
_ENHANCED_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class SparkPostWebhook:
    provider: ClassVar[str] = PROVIDER
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        return basic_or_token_matches(request, target.secrets)

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        return None  # no signature; `event_id` dedupes redeliveries

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        body = parse_json(request)
        if isinstance(body, dict) and "msys" in body:
            body = [body]  # a lone element, tolerated
        if not isinstance(body, list):
            raise MalformedPayload('expected a SparkPost array of {"msys": {...}} elements')
        if is_ping(body):
            return ParsedPayload(items=[], batch=True, control="ping")
        return ParsedPayload(items=[parse_element(element) for element in body], batch=True)


WEBHOOK = SparkPostWebhook()


def is_ping(body: Sequence[Any]) -> bool:
    """The webhook-creation test: one element whose `msys` is empty."""
    return len(body) == 1 and isinstance(body[0], dict) and body[0].get("msys") == {}


def parse_element(element: Any) -> NormalizedEvent | BadElement:
    if not isinstance(element, dict) or not isinstance(element.get("msys"), dict):
        return BadElement(raw=element, error="element has no msys object")
    events = [value for value in element["msys"].values() if isinstance(value, dict)]
    if len(events) != 1:
        return BadElement(raw=element, error=f"expected one event object in msys, found {len(events)}")
    try:
        return parse_event(element, events[0])
    except (TypeError, ValueError, KeyError) as exc:
        return BadElement(raw=element, error=f"unreadable SparkPost event: {exc}")


def parse_event(element: dict[str, Any], event: Mapping[str, Any]) -> NormalizedEvent:
    name = str(event.get("type") or "")
    event_type, bounce_class = classify_event(name, event)
    meta: Mapping[str, Any] = event["rcpt_meta"] if isinstance(event.get("rcpt_meta"), dict) else {}
    reason = text_or_none(event.get("raw_reason") or event.get("reason"))
    enhanced = _ENHANCED_RE.search(reason) if reason else None
    return NormalizedEvent(
        event_type=event_type,
        provider_event=name,
        raw=element,
        occurred_at=event_time(event.get("timestamp")),
        subtask_id=_id(meta.get("subtask_id")),
        task_id=_id(meta.get("task_id")),
        provider_message_id=_id(event.get("transmission_id")),
        provider_event_id=_id(event.get("event_id")),
        recipient=text_or_none(event.get("rcpt_to") or event.get("raw_rcpt_to")),
        bounce_class=bounce_class,
        smtp_code=_smtp_code(event.get("error_code")),
        enhanced_code=enhanced.group(1) if enhanced else None,
        reason=reason,
        url=text_or_none(event.get("target_link_url"), 2000) if event_type is EventType.CLICKED else None,
        ip=text_or_none(event.get("ip_address")),
        user_agent=text_or_none(event.get("user_agent")),
        details=_details(event),
    )


def classify_event(name: str, event: Mapping[str, Any]) -> tuple[EventType, BounceClass | None]:
    if name in _SIMPLE_EVENTS:
        return _SIMPLE_EVENTS[name], None
    bounce_class = _int(event.get("bounce_class"))
    if name in _BOUNCES:
        return classify_bounce(bounce_class)
    if name in _REJECTIONS:
        return EventType.REJECTED, rejection_class(bounce_class, event)
    if name == "generation_failure":  # our content failed to render at SparkPost: not the recipient's doing
        return EventType.REJECTED, BounceClass.UNDETERMINED
    return EventType.UNKNOWN, None


def classify_bounce(bounce_class: int | None) -> tuple[EventType, BounceClass]:
    if bounce_class in _HARD_CLASSES:
        return EventType.HARD_BOUNCED, BounceClass.HARD
    if bounce_class in _SOFT_CLASSES:
        return EventType.SOFT_BOUNCED, BounceClass.SOFT
    if bounce_class in _BLOCK_CLASSES:
        return EventType.REJECTED, BounceClass.BLOCK
    if bounce_class in _ADMIN_CLASSES:
        return EventType.REJECTED, BounceClass.SUPPRESSED
    # 1 undetermined, 80 subscribe request, or a class SparkPost added later: not enough to suppress anyone.
    return EventType.SOFT_BOUNCED, BounceClass.UNDETERMINED


def rejection_class(bounce_class: int | None, event: Mapping[str, Any]) -> BounceClass:
    """A policy/generation rejection is the provider's suppression list (class 25, or "suppressed" in the
    reason) or a policy block."""
    reason = str(event.get("raw_reason") or event.get("reason") or "").lower()
    if bounce_class in _ADMIN_CLASSES or "suppress" in reason:
        return BounceClass.SUPPRESSED
    return BounceClass.BLOCK


def event_time(value: Any) -> dt.datetime | None:
    """`timestamp` is epoch seconds as a string, or ISO 8601 in some event types."""
    return from_epoch(value) or from_iso(value)


def _details(event: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("message_id", "bounce_class", "campaign_id", "target_link_name", "num_retries", "fbtype")
    return {key: event[key] for key in keys if event.get(key) not in (None, "")}


def _id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _smtp_code(value: Any) -> int | None:
    code = _int(value)
    return code if code is not None and 200 <= code <= 599 else None
