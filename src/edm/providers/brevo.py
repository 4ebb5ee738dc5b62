"""`provider = "brevo"`: Brevo (ex-Sendinblue) transactional email API and its event webhook.

Sending
-------
`POST https://api.brevo.com/v3/smtp/email`, header `api-key`, one message per call (Brevo's
`messageVersions` batch is not used: each version would need its own `X-Mailin-custom`, which Brevo only
takes as a message-level header).

    credentials  {"api_key": "xkeysib-…"}
    options      {"base_url": "…"}  (optional; tests, proxies)

Our ids travel in the `X-Mailin-custom` header as compact ASCII JSON `{"subtask_id":…,"task_id":…}` (Brevo
copies 8-bit header values raw, so `ensure_ascii` keeps it valid), and in `X-EDM-SubTask-Id`. Our other
headers (List-Unsubscribe, List-Unsubscribe-Post, Feedback-ID, In-Reply-To…) go in `headers` too, except
`Message-ID`: Brevo documents `headers` as custom, non-standard headers and assigns its own Message-ID, which
it returns and which every event carries (`message-id`), so that id is our provider message id.

Brevo documents an `idempotencyKey` header (changelog "Email API now supports idempotency", TTL 15 minutes);
we send the SubTask key in it, but declare `honours_idempotency=False` (docs/sending.md#crashes-and-uncertain-sends):
a 15-minute window is shorter than our retry schedule can guarantee, so a lost answer stays `uncertain` rather than
risking a second mail.

Open/click tracking can only be switched off in the Brevo account, not per message: its open/click events are
parsed and stored, and the pipeline ignores them (docs/providers.md#the-providers).

Errors (docs/providers.md#how-answers-are-classified): 400 `{code, message}` → permanent (a sender/domain complaint
→ auth_config, since every message of the service would fail the same way); 401/403 → auth_config; 402 (not enough
credits) → quota_exhausted; 429 → throttled (`Retry-After`, else `x-sib-ratelimit-reset`); 5xx → transient.

Webhook
-------
Brevo does not sign events. The service's secret is `user:password` (Basic credentials embedded in the webhook
URL) or a token (`Authorization: Bearer`, `X-Webhook-Token`, or `?token=` in the URL); see
`basic_or_token_matches`. The body is one JSON object, or an array when the webhook was created with
`batched: true`. Events carry no event id, so `provider_event_id` is None and the pipeline dedupes on its
composite key. Brevo inbound parsing (`{"items": [...]}`) is parsed into `replied` events, one per item, whose
mail the event pipeline hands to conversations (`brevo_inbound.BrevoInbound.event_mails`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx
import orjson

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
    parse_json,
    text_or_none,
)
from edm.vocabulary.events import BadElement, BounceClass, EventType, NormalizedEvent

PROVIDER = "brevo"
SUBTASK_HEADER = "X-EDM-SubTask-Id"
METADATA_HEADER = "X-Mailin-custom"
# Headers Brevo sets itself: sending ours would be ignored at best.
_NOT_FORWARDED = frozenset({"message-id", "from", "to", "subject", "reply-to"})
# "Sending has been rejected because the sender you used … is not valid", "SMTP account is not yet activated"
_SENDER_PROBLEM_RE = re.compile(r"\bsender\b|not (?:yet )?(?:validated|activated)", re.IGNORECASE)
# "email is not valid in to": the recipient address itself
_RECIPIENT_PROBLEM_RE = re.compile(r"\bin to\b|\brecipient", re.IGNORECASE)
_ACCOUNT_CODES = frozenset({"unauthorized", "permission_denied", "account_under_validation"})
_QUOTA_CODES = frozenset({"not_enough_credits", "insufficient_credits"})


class BrevoAdapter(HttpAdapter):
    provider: ClassVar[str] = PROVIDER
    credentials_probe: ClassVar[tuple[str, str] | None] = ("GET", "/v3/account")  # answers any valid key
    capabilities: ClassVar[Capabilities] = Capabilities(needs_mime=False, max_batch=1)
    default_base_url: ClassVar[str] = "https://api.brevo.com"

    def default_headers(self) -> dict[str, str]:
        return {"api-key": str(self.config.credentials.get("api_key", "")), "accept": "application/json"}

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        (message,) = messages
        return client.build_request("POST", "/v3/smtp/email", json=request_body(message))

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        (message,) = messages
        status = response.status_code
        if 200 <= status < 300:
            return [accepted(message, sent_message_id(response.json()), status=status, latency_ms=latency_ms)]
        return [classify_error(message, response, latency_ms)]


def request_body(message: OutboundMessage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sender": {"email": message.from_address, **({"name": message.from_name} if message.from_name else {})},
        "to": [{"email": message.to_address, **({"name": message.to_name} if message.to_name else {})}],
        "subject": message.subject,
        "htmlContent": message.html,
        "textContent": message.text,
        "headers": request_headers(message),
    }
    if message.reply_to:
        body["replyTo"] = {"email": message.reply_to}
    return body


def request_headers(message: OutboundMessage) -> dict[str, str]:
    headers = {name: value for name, value in message.headers.items() if name.lower() not in _NOT_FORWARDED}
    subtask_id = message.custom_args.get("subtask_id")
    if subtask_id and not any(name.lower() == SUBTASK_HEADER.lower() for name in headers):
        headers[SUBTASK_HEADER] = subtask_id
    if message.custom_args:
        headers[METADATA_HEADER] = metadata_header(message.custom_args)
    headers["idempotencyKey"] = message.key
    return headers


def metadata_header(custom_args: Mapping[str, str]) -> str:
    """Our ids as compact ASCII JSON: Brevo puts header values on the wire byte for byte."""
    return json.dumps(dict(custom_args), separators=(",", ":"), ensure_ascii=True)


def sent_message_id(body: Any) -> str:
    """`{"messageId": "<…>"}`; `{"messageIds": [...]}` for message versions. KeyError when absent."""
    if isinstance(body, dict):
        versions = body.get("messageIds")
        first_version = versions[0] if isinstance(versions, list) and versions else None
        for candidate in (body.get("messageId"), first_version):
            message_id = normalize_message_id(candidate) if isinstance(candidate, str) else None
            if message_id:
                return message_id
    raise KeyError("messageId")


def classify_error(message: OutboundMessage, response: httpx.Response, latency_ms: int) -> SendResult:
    status = response.status_code
    body = json_or_none(response)
    code = str(body.get("code")) if isinstance(body, dict) and body.get("code") else None
    text = str(body.get("message")) if isinstance(body, dict) and body.get("message") else response.reason_phrase
    outcome = classify_status(status)
    recipient_rejected = False
    if status == 402 or code in _QUOTA_CODES:
        outcome = Outcome.QUOTA_EXHAUSTED
    elif code in _ACCOUNT_CODES:
        outcome = Outcome.AUTH_CONFIG
    elif outcome is Outcome.PERMANENT and _SENDER_PROBLEM_RE.search(text):
        outcome = Outcome.AUTH_CONFIG  # unverified sender/domain: every message of this service would fail
    elif outcome is Outcome.PERMANENT:
        recipient_rejected = bool(_RECIPIENT_PROBLEM_RE.search(text))
    retry_after = _retry_after(response) if outcome is Outcome.THROTTLED else None
    return failure(
        message,
        outcome,
        code or f"http_{status}",
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
        return max(0.0, float(response.headers.get("x-sib-ratelimit-reset", "")))
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------------
# Webhook
# --------------------------------------------------------------------------------------------------------

# Brevo event name -> (our type, bounce class)
_EVENTS: dict[str, tuple[EventType, BounceClass | None]] = {
    "request": (EventType.ACCEPTED, None),
    "sent": (EventType.ACCEPTED, None),
    "delivered": (EventType.DELIVERED, None),
    "deferred": (EventType.DEFERRED, None),
    "soft_bounce": (EventType.SOFT_BOUNCED, BounceClass.SOFT),
    "hard_bounce": (EventType.HARD_BOUNCED, BounceClass.HARD),
    # "the address is invalid": counted with the hard bounces (docs/events.md#event-vocabulary); the class says why.
    "invalid_email": (EventType.HARD_BOUNCED, BounceClass.INVALID),
    # Brevo blocks a contact that is on its blocklist (unsubscribed, hard-bounced before, blocked by hand):
    # that is the provider's own suppression list, not a content or reputation block.
    "blocked": (EventType.REJECTED, BounceClass.SUPPRESSED),
    "error": (EventType.REJECTED, BounceClass.UNDETERMINED),
    "opened": (EventType.OPENED, None),
    "unique_opened": (EventType.OPENED, None),
    "proxy_open": (EventType.OPENED, None),
    "unique_proxy_open": (EventType.OPENED, None),
    "click": (EventType.CLICKED, None),
    "spam": (EventType.COMPLAINED, None),
    "complaint": (EventType.COMPLAINED, None),
    "unsubscribe": (EventType.UNSUBSCRIBED, None),
    "unsubscribed": (EventType.UNSUBSCRIBED, None),
}
# Opens fetched by a proxy (Apple Mail Privacy Protection…), not a person.
_MACHINE_OPENS = frozenset({"proxy_open", "unique_proxy_open"})
_SMTP_PAIR_RE = re.compile(r"\b([245]\d\d)[\s-]+([245]\.\d{1,3}\.\d{1,3})\b")  # "550 5.1.1"
_SMTP_CODE_RE = re.compile(r"\b([245]\d\d)\b")
_ENHANCED_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class BrevoWebhook:
    provider: ClassVar[str] = PROVIDER
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        return basic_or_token_matches(request, target.secrets)

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        return None  # no signature, no nonce: duplicates are caught by the dedupe key

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        body = parse_json(request)
        if isinstance(body, dict) and isinstance(body.get("items"), list):
            return ParsedPayload(items=[parse_inbound_item(item) for item in body["items"]], batch=True)
        if isinstance(body, dict):
            return ParsedPayload(items=[parse_event(body)], batch=False)
        if isinstance(body, list):
            return ParsedPayload(items=[parse_element(element) for element in body], batch=True)
        raise MalformedPayload("expected a Brevo event object or an array of them")


WEBHOOK = BrevoWebhook()


def parse_element(element: Any) -> NormalizedEvent | BadElement:
    if not isinstance(element, dict):
        return BadElement(raw=element, error="element is not a JSON object")
    try:
        return parse_event(element)
    except (TypeError, ValueError, KeyError) as exc:
        return BadElement(raw=element, error=f"unreadable Brevo event: {exc}")


def parse_event(event: dict[str, Any]) -> NormalizedEvent:
    name = str(event.get("event") or "")
    event_type, bounce_class = _EVENTS.get(name.lower(), (EventType.UNKNOWN, None))
    ids = our_ids(event.get(METADATA_HEADER))
    reason = text_or_none(event.get("reason"))
    smtp_code, enhanced = smtp_codes(reason)
    details: dict[str, Any] = {}
    if name.lower() in _MACHINE_OPENS:
        details["machine"] = True
    return NormalizedEvent(
        event_type=event_type,
        provider_event=name,
        raw=event,
        occurred_at=event_time(event),
        subtask_id=ids.get("subtask_id"),
        task_id=ids.get("task_id"),
        provider_message_id=normalize_message_id(event.get("message-id")),
        provider_event_id=None,  # Brevo has no event id ("id" is the webhook's id)
        recipient=text_or_none(event.get("email")),
        bounce_class=bounce_class,
        smtp_code=smtp_code,
        enhanced_code=enhanced,
        reason=reason,
        url=text_or_none(event.get("link"), 2000) if event_type is EventType.CLICKED else None,
        ip=text_or_none(event.get("ip")),
        user_agent=text_or_none(event.get("user_agent")),
        details=details,
    )


def parse_inbound_item(item: Any) -> NormalizedEvent | BadElement:
    """One Brevo inbound-parsing item: a `replied` event, the item as `raw`; its mail goes to conversations
    (`brevo_inbound.BrevoInbound.event_mails`), which thread it by In-Reply-To/References."""
    if not isinstance(item, dict):
        return BadElement(raw=item, error="inbound item is not a JSON object")
    sender: dict[str, Any] = item["From"] if isinstance(item.get("From"), dict) else {}
    headers: dict[str, Any] = item["Headers"] if isinstance(item.get("Headers"), dict) else {}
    subtask_id = headers.get(SUBTASK_HEADER) or headers.get(SUBTASK_HEADER.lower())
    return NormalizedEvent(
        event_type=EventType.REPLIED,
        provider_event="inbound",
        raw=item,
        occurred_at=_rfc2822(item.get("SentAtDate")),
        subtask_id=subtask_id if isinstance(subtask_id, str) else None,
        provider_message_id=None,
        recipient=text_or_none(sender.get("Address")),
        details={
            "message_id": item.get("MessageId"),
            "in_reply_to": item.get("InReplyTo"),
            "subject": item.get("Subject"),
        },
    )


def our_ids(value: Any) -> dict[str, str]:
    """Our ids from the `X-Mailin-custom` string (JSON text); anything else yields none."""
    if isinstance(value, dict):
        data: Any = value
    elif isinstance(value, str) and value.strip():
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
    else:
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: str(data[key]) for key in ("subtask_id", "task_id") if data.get(key) not in (None, "")}


def event_time(event: Mapping[str, Any]) -> dt.datetime | None:
    """`ts_epoch` (ms) is the reliable one; `s_epoch` appears in Brevo's proxy_open sample; then `ts_event`,
    `ts` (seconds). `date` has no zone in Brevo's payloads, so it is not trusted."""
    for key in ("ts_epoch", "s_epoch", "ts_event", "ts"):
        when = from_epoch(event.get(key)) if event.get(key) not in (None, "") else None
        if when is not None:
            return when
    return None


def normalize_message_id(value: Any) -> str | None:
    """Brevo returns `<…@smtp-relay.mailin.fr>` at send time, and events carry it with or without the angle
    brackets: always the bracketed form, so the lookup matches what the send stored."""
    text = (text_or_none(value, 998) or "").strip()
    if not text:
        return None
    return text if text.startswith("<") else f"<{text}>"


def smtp_codes(reason: str | None) -> tuple[int | None, str | None]:
    if not reason:
        return None, None
    pair = _SMTP_PAIR_RE.search(reason)
    if pair is not None:
        return int(pair.group(1)), pair.group(2)
    code, enhanced = _SMTP_CODE_RE.search(reason), _ENHANCED_RE.search(reason)
    return (int(code.group(1)) if code else None), (enhanced.group(1) if enhanced else None)


def _rfc2822(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else None
