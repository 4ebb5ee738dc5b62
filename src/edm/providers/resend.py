"""`provider = "resend"`: Resend's email API and its Svix-signed webhook.

Sending
-------
`POST https://api.resend.com/emails`, `Authorization: Bearer re_…`, one message per call.

    credentials  {"api_key": "re_…"}
    options      {"base_url": "…"}  (optional; tests, proxies)

Our ids travel as `tags` `[{name: "subtask_id"}, {name: "task_id"}]` (Resend allows only ASCII letters,
digits, `_` and `-` in tag values: a value outside that set is left out rather than altered, and still
travels in the header) and in the `X-EDM-SubTask-Id` header. Our other headers go in `headers`, except
`Message-ID` (Resend assigns its own and returns its id; events carry `data.email_id`).

Idempotency: Resend's documentation (dashboard/emails/idempotency-keys, changelog "Idempotency Keys") says a
request carrying an `Idempotency-Key` header (≤ 256 chars) is processed once within 24 hours and a repeat
gets the same answer. We send the SubTask key there and declare `honours_idempotency=True`, 86 400 s.

Open/click tracking is a per-domain setting at Resend, not per message: its events are parsed and stored,
and the pipeline ignores them (docs/providers.md#the-providers).

Errors (docs/providers.md#how-answers-are-classified), from the HTTP status and the body's `name`: 429
`daily_quota_exceeded` / `monthly_quota_exceeded` → quota_exhausted, other 429 → throttled (`Retry-After`, else
`ratelimit-reset`); 401/403 (missing/invalid/restricted key, unverified domain, test-mode restrictions) → auth_config;
422/400 → permanent, except `invalid_from_address` (the service's domain) and any "API key is invalid" answer →
auth_config; 409 `concurrent_idempotent_requests` (the first attempt is still running) → transient; 409
`invalid_idempotent_request` (the key was used with another payload) → permanent; 5xx → transient.

Webhook
-------
Svix: headers `svix-id`, `svix-timestamp`, `svix-signature` ("v1,<base64> v1,<base64>…"; the unbranded
`webhook-*` names are accepted too). The secret is the endpoint's signing secret `whsec_<base64>`; the HMAC
key is the base64-decoded part after the prefix. Signed content: `{id}.{timestamp}.{raw body}`, HMAC-SHA256.
The timestamp must be within 5 minutes of now. One event per POST; `svix-id` (the same on every retry of a
message) is the event id used for dedupe.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
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
    fresh,
    from_epoch,
    from_iso,
    parse_json,
    same,
    text_or_none,
)
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent

PROVIDER = "resend"
SUBTASK_HEADER = "X-EDM-SubTask-Id"
IDEMPOTENCY_WINDOW_SECONDS = 86_400
SIGNATURE_TOLERANCE_SECONDS = 300
_TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_NOT_FORWARDED = frozenset({"message-id", "from", "to", "subject", "reply-to"})
_QUOTA_NAMES = frozenset({"daily_quota_exceeded", "monthly_quota_exceeded"})
_CONFIG_NAMES = frozenset(
    {"missing_api_key", "invalid_api_key", "restricted_api_key", "invalid_from_address", "invalid_access"}
)
_TRANSIENT_NAMES = frozenset({"concurrent_idempotent_requests", "internal_server_error", "application_error"})


class ResendAdapter(HttpAdapter):
    provider: ClassVar[str] = PROVIDER
    capabilities: ClassVar[Capabilities] = Capabilities(
        needs_mime=False, max_batch=1, honours_idempotency=True, idempotency_window_seconds=IDEMPOTENCY_WINDOW_SECONDS
    )
    default_base_url: ClassVar[str] = "https://api.resend.com"

    def default_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.config.credentials.get('api_key', '')}"}

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        (message,) = messages
        return client.build_request(
            "POST", "/emails", json=request_body(message), headers={"Idempotency-Key": message.key}
        )

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        (message,) = messages
        status = response.status_code
        if 200 <= status < 300:
            email_id = response.json()["id"]
            if not isinstance(email_id, str) or not email_id:
                raise ValueError("no email id in the answer")
            return [accepted(message, email_id, status=status, latency_ms=latency_ms)]
        return [classify_error(message, response, latency_ms)]


def request_body(message: OutboundMessage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": email.utils.formataddr((message.from_name, message.from_address)),
        "to": [email.utils.formataddr((message.to_name, message.to_address))],
        "subject": message.subject,
        "html": message.html,
        "text": message.text,
        "headers": request_headers(message),
    }
    if message.reply_to:
        body["reply_to"] = message.reply_to
    tags = [
        {"name": name, "value": value}
        for name, value in message.custom_args.items()
        if name in ("subtask_id", "task_id") and _TAG_VALUE_RE.match(str(value))
    ]
    if tags:
        body["tags"] = tags
    return body


def request_headers(message: OutboundMessage) -> dict[str, str]:
    headers = {name: value for name, value in message.headers.items() if name.lower() not in _NOT_FORWARDED}
    subtask_id = message.custom_args.get("subtask_id")
    if subtask_id and not any(name.lower() == SUBTASK_HEADER.lower() for name in headers):
        headers[SUBTASK_HEADER] = subtask_id
    return headers


def classify_error(message: OutboundMessage, response: httpx.Response, latency_ms: int) -> SendResult:
    status = response.status_code
    body = json_or_none(response)
    name = str(body.get("name")) if isinstance(body, dict) and body.get("name") else None
    text = str(body.get("message")) if isinstance(body, dict) and body.get("message") else response.reason_phrase
    outcome = classify_status(status)
    if name in _QUOTA_NAMES:
        outcome = Outcome.QUOTA_EXHAUSTED
    elif name in _CONFIG_NAMES or "api key" in text.lower():
        outcome = Outcome.AUTH_CONFIG  # Resend also answers a bad key with 400/401 `validation_error`
    elif name in _TRANSIENT_NAMES:
        outcome = Outcome.TRANSIENT
    recipient_rejected = outcome is Outcome.PERMANENT and "`to`" in text
    retry_after = _retry_after(response) if outcome in (Outcome.THROTTLED, Outcome.QUOTA_EXHAUSTED) else None
    return failure(
        message,
        outcome,
        name or f"http_{status}",
        f"HTTP {status}: {text}",
        status=status,
        retry_after=retry_after,
        latency_ms=latency_ms,
        recipient_rejected=recipient_rejected,
    )


def _retry_after(response: httpx.Response) -> float | None:
    standard = retry_after_seconds(response)
    if standard is not None:
        return standard
    try:
        return max(0.0, float(response.headers.get("ratelimit-reset", "")))
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------------
# Webhook
# --------------------------------------------------------------------------------------------------------

_EVENTS: dict[str, EventType] = {
    "email.sent": EventType.ACCEPTED,
    "email.delivered": EventType.DELIVERED,
    "email.delivery_delayed": EventType.DEFERRED,
    "email.bounced": EventType.HARD_BOUNCED,  # refined by data.bounce below
    "email.complained": EventType.COMPLAINED,
    "email.opened": EventType.OPENED,
    "email.clicked": EventType.CLICKED,
    "email.failed": EventType.REJECTED,
    "email.suppressed": EventType.REJECTED,
    "email.received": EventType.REPLIED,
}
_ACTION_KEYS = {"email.clicked": "click", "email.opened": "open"}
_BLOCK_SUBTYPES = frozenset({"contentrejected", "attachmentrejected"})


class ResendWebhook:
    provider: ClassVar[str] = PROVIDER
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        msg_id, timestamp, signatures = _svix_headers(request)
        if not (msg_id and timestamp and signatures):
            return False
        if not fresh(from_epoch(timestamp), ctx.now, seconds=SIGNATURE_TOLERANCE_SECONDS):
            return False
        offered = [sig for version, _, sig in (part.partition(",") for part in signatures.split()) if version == "v1"]
        signed = f"{msg_id}.{timestamp}.".encode() + request.body
        matched = False
        for secret in target.secrets:
            key = signing_key(secret)
            if key is None:
                continue
            expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            for candidate in offered:
                matched |= same(candidate, expected)  # no early exit: every comparison runs
        return matched

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        return None  # svix-id repeats on legitimate retries; it is the dedupe key instead

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        body = parse_json(request)
        if not (isinstance(body, dict) and isinstance(body.get("type"), str) and isinstance(body.get("data"), dict)):
            raise MalformedPayload("expected a Resend event object with `type` and `data`")
        msg_id, _, _ = _svix_headers(request)
        return ParsedPayload(items=[parse_event(body, event_id=msg_id)], batch=False)


WEBHOOK = ResendWebhook()


def signing_key(secret: str) -> bytes | None:
    """The HMAC key of a `whsec_<base64>` secret (a bare base64 secret is accepted too); None if unreadable."""
    encoded = secret.strip().removeprefix("whsec_")
    try:
        return base64.b64decode(encoded, validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _svix_headers(request: WebhookRequest) -> tuple[str | None, str | None, str | None]:
    def header(name: str) -> str | None:
        return request.header(f"svix-{name}") or request.header(f"webhook-{name}")

    return header("id"), header("timestamp"), header("signature")


def parse_event(body: dict[str, Any], *, event_id: str | None) -> NormalizedEvent:
    name = str(body["type"])
    data: dict[str, Any] = body["data"]
    event_type = _EVENTS.get(name, EventType.UNKNOWN)
    bounce_class: BounceClass | None = None
    reason: str | None = None
    if name == "email.bounced":
        event_type, bounce_class, reason = bounce(data.get("bounce"))
    elif name == "email.failed":
        bounce_class = BounceClass.UNDETERMINED
        reason = _reason(data.get("failed"))
    elif name == "email.suppressed":
        bounce_class = BounceClass.SUPPRESSED
        reason = _reason(data.get("suppressed"))
    ids = our_ids(data)
    action = _action(data, name)
    return NormalizedEvent(
        event_type=event_type,
        provider_event=name,
        raw=body,
        occurred_at=from_iso(body.get("created_at")) or from_iso(data.get("created_at")),
        subtask_id=ids.get("subtask_id"),
        task_id=ids.get("task_id"),
        provider_message_id=text_or_none(data.get("email_id")),
        provider_event_id=event_id,
        recipient=recipient(data, event_type),
        bounce_class=bounce_class,
        reason=reason,
        url=text_or_none(action.get("link"), 2000) if event_type is EventType.CLICKED else None,
        ip=text_or_none(action.get("ipAddress")),
        user_agent=text_or_none(action.get("userAgent")),
        details=_details(data, event_type),
    )


def bounce(value: Any) -> tuple[EventType, BounceClass, str | None]:
    """`data.bounce = {message, type: Permanent|Transient|Undetermined, subType}`; older payloads carry only the
    message, which then decides suppression ("Resend has suppressed sending to this address …")."""
    info: Mapping[str, Any] = value if isinstance(value, dict) else {}
    message = text_or_none(info.get("message"))
    kind = str(info.get("type") or "").lower()
    subtype = str(info.get("subType") or info.get("subtype") or "").lower()
    if "suppress" in subtype or (message and "suppressed sending" in message.lower()):
        return EventType.REJECTED, BounceClass.SUPPRESSED, message
    if subtype in _BLOCK_SUBTYPES:
        return EventType.REJECTED, BounceClass.BLOCK, message
    if kind == "transient":
        return EventType.SOFT_BOUNCED, BounceClass.SOFT, message
    if kind == "undetermined":
        return EventType.SOFT_BOUNCED, BounceClass.UNDETERMINED, message
    return EventType.HARD_BOUNCED, BounceClass.HARD, message


def our_ids(data: Mapping[str, Any]) -> dict[str, str]:
    """From `data.tags` (an object in events, a list of {name, value} as sent) or our header in `data.headers`."""
    ids: dict[str, str] = {}
    tags = data.get("tags")
    if isinstance(tags, dict):
        ids.update({k: str(v) for k, v in tags.items() if k in ("subtask_id", "task_id") and v not in (None, "")})
    elif isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, dict) and tag.get("name") in ("subtask_id", "task_id") and tag.get("value"):
                ids[str(tag["name"])] = str(tag["value"])
    if "subtask_id" not in ids:
        header = _header(data.get("headers"), SUBTASK_HEADER)
        if header:
            ids["subtask_id"] = header
    return ids


def _header(headers: Any, wanted: str) -> str | None:
    if isinstance(headers, dict):
        items = list(headers.items())
    elif isinstance(headers, list):
        items = [(h.get("name"), h.get("value")) for h in headers if isinstance(h, dict)]
    else:
        return None
    for name, value in items:
        if isinstance(name, str) and name.lower() == wanted.lower() and isinstance(value, str) and value:
            return value.strip()
    return None


def recipient(data: Mapping[str, Any], event_type: EventType) -> str | None:
    """The contact's address: the (first) `to` of our mail, or the sender of a received reply."""
    value = data.get("from") if event_type is EventType.REPLIED else data.get("to")
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value:
        return None
    return email.utils.parseaddr(value)[1] or None


def _action(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The `click` / `open` object of engagement events."""
    key = _ACTION_KEYS.get(name)
    value = data.get(key) if key else None
    return value if isinstance(value, dict) else {}


def _reason(value: Any) -> str | None:
    if isinstance(value, dict):
        return text_or_none(value.get("reason") or value.get("message"))
    return text_or_none(value)


def _details(data: Mapping[str, Any], event_type: EventType) -> dict[str, Any]:
    if event_type is not EventType.REPLIED:
        return {}
    return {key: data.get(key) for key in ("message_id", "subject", "to") if data.get(key) is not None}
