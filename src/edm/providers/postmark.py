"""Postmark: sending through the Email API (single and batch) and event webhooks.

Service configuration
---------------------
credentials  {"server_token": "…"}  (the server's API token, header `X-Postmark-Server-Token`)
options      {"message_stream": "broadcast" (default; bulk mail must use a Broadcast stream),
              "base_url": "https://api.postmarkapp.com" (optional)}
webhook secrets  "user:password" (Basic credentials put in the webhook URL) or a token sent by Postmark as
                 a custom webhook header (`Authorization: Bearer <token>` or `X-Webhook-Token: <token>`)

Sending
-------
One message: `POST /email`; several (≤ 500): `POST /email/batch` with an array, answered by an array of
per-message results in the same order, each with its own `ErrorCode`. Our ids travel in `Metadata`
(`subtask_id`, `task_id`, echoed in every event) and in the `X-EDM-SubTask-Id` header; tracking is off
(`TrackOpens=false`, `TrackLinks="None"`). Postmark keeps a custom `Message-ID` header, so ours is sent.

Classification (docs/providers.md#how-answers-are-classified): HTTP 401 → auth_config; 429 → throttled; 5xx → transient;
otherwise the `ErrorCode` decides (`classify_error_code`): 0 accepted, 10 bad token and 400/401 sender
signature → auth_config, 100 maintenance → transient, 300 invalid request → permanent, 406 inactive
recipient → permanent with `recipient_rejected`, 405/412/413 → quota_exhausted, 429 → throttled.

Webhooks
--------
One JSON object per POST, `RecordType` = Delivery | Bounce | SpamComplaint | Open | Click |
SubscriptionChange; inbound mail (no RecordType, or "Inbound") → one `replied` event without SubTask ids, whose mail
the event pipeline hands to conversations (`postmark_inbound.PostmarkInbound.event_mails`). Our ids come back in
`Metadata`; `provider_message_id` = `MessageID` (the id the send returned); the dedupe id is the bounce `ID` (Bounce
and SpamComplaint records live in Postmark's bounce store).
"""

from __future__ import annotations

import datetime as dt
import email.utils
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
    from_iso,
    parse_json,
    text_or_none,
)
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent

MAX_BATCH = 500
DEFAULT_MESSAGE_STREAM = "broadcast"
SUBTASK_HEADER = "X-EDM-SubTask-Id"

# Headers Postmark builds from the request fields (or from the MIME structure): never sent as Headers.
_RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)

_ERROR_CODES: Mapping[int, Outcome] = {
    0: Outcome.ACCEPTED,
    10: Outcome.AUTH_CONFIG,  # bad or missing server token
    100: Outcome.TRANSIENT,  # maintenance
    300: Outcome.PERMANENT,  # invalid email request
    400: Outcome.AUTH_CONFIG,  # sender signature not found
    401: Outcome.AUTH_CONFIG,  # sender signature not confirmed
    405: Outcome.QUOTA_EXHAUSTED,  # not allowed to send (out of credits)
    406: Outcome.PERMANENT,  # inactive recipient (bounced, complained, unsubscribed)
    412: Outcome.QUOTA_EXHAUSTED,  # account pending
    413: Outcome.QUOTA_EXHAUSTED,  # account may not send
    429: Outcome.THROTTLED,
}
INACTIVE_RECIPIENT = 406


# ========================================================================================================
# Sending
# ========================================================================================================


class PostmarkAdapter(HttpAdapter):
    provider: ClassVar[str] = "postmark"
    credentials_probe: ClassVar[tuple[str, str] | None] = ("GET", "/server")  # answers any valid key
    required_credentials: ClassVar[tuple[str, ...]] = ("server_token",)
    capabilities: ClassVar[Capabilities] = Capabilities(needs_mime=False, max_batch=MAX_BATCH)
    default_base_url: ClassVar[str] = "https://api.postmarkapp.com"

    def default_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.config.credentials.get("server_token")
        if token:
            headers["X-Postmark-Server-Token"] = str(token)
        return headers

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        if not messages or len(messages) > MAX_BATCH:
            raise ValueError(f"postmark takes 1 to {MAX_BATCH} messages per call, got {len(messages)}")
        if len(messages) == 1:
            return client.build_request("POST", "/email", json=self.payload(messages[0]))
        return client.build_request("POST", "/email/batch", json=[self.payload(m) for m in messages])

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        body: dict[str, Any] = {
            "From": mailbox(message.from_name, message.from_address),
            "To": mailbox(message.to_name, message.to_address),
            "Subject": _one_line(message.subject),
            "TrackOpens": False,
            "TrackLinks": "None",
            "MessageStream": str(self.config.options.get("message_stream") or DEFAULT_MESSAGE_STREAM),
        }
        if message.html:
            body["HtmlBody"] = message.html
        if message.text:
            body["TextBody"] = message.text
        if "HtmlBody" not in body and "TextBody" not in body:
            raise ValueError("the message has neither a text nor an HTML body")
        if message.reply_to:
            body["ReplyTo"] = message.reply_to
        headers = [
            {"Name": name, "Value": _one_line(value)}
            for name, value in message.headers.items()
            if name.lower() not in _RESERVED_HEADERS and value
        ]
        if headers:
            body["Headers"] = headers
        if message.custom_args:
            body["Metadata"] = {name: str(value) for name, value in message.custom_args.items()}
        return body

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        status = response.status_code
        if 200 <= status < 300:
            body = response.json()
            items = [body] if len(messages) == 1 else body
            if not isinstance(items, list) or len(items) != len(messages):
                raise ValueError(f"expected {len(messages)} results")
            return [self._item_result(m, item, status, latency_ms) for m, item in zip(messages, items, strict=True)]
        return [self._request_failure(m, response, latency_ms) for m in messages]

    def _item_result(self, message: OutboundMessage, item: Any, status: int, latency_ms: int) -> SendResult:
        if not isinstance(item, dict) or not isinstance(item.get("ErrorCode"), int):
            raise ValueError("a result without ErrorCode")
        code = item["ErrorCode"]
        if code == 0:
            message_id = item["MessageID"]
            if not isinstance(message_id, str) or not message_id:
                raise ValueError("no MessageID in an accepted result")
            return accepted(message, message_id, status=status, latency_ms=latency_ms)
        outcome = classify_error_code(code, status)
        return failure(
            message,
            outcome,
            str(code),
            f"postmark {code}: {item.get('Message') or ''}".strip(),
            status=status,
            latency_ms=latency_ms,
            recipient_rejected=code == INACTIVE_RECIPIENT,
        )

    def _request_failure(self, message: OutboundMessage, response: httpx.Response, latency_ms: int) -> SendResult:
        status = response.status_code
        body = json_or_none(response)
        code = body.get("ErrorCode") if isinstance(body, dict) else None
        text = body.get("Message") if isinstance(body, dict) else None
        if status >= 500 or status in (401, 429) or not isinstance(code, int):
            outcome = classify_status(status)  # the HTTP status is decisive (token, rate, Postmark's side)
        else:
            outcome = classify_error_code(code, status)
        retry_after = retry_after_seconds(response) if outcome is Outcome.THROTTLED else None
        provider_code = str(code) if isinstance(code, int) else str(status)
        return failure(
            message,
            outcome,
            provider_code,
            f"postmark {provider_code}: {text or 'HTTP error'}",
            status=status,
            retry_after=retry_after,
            latency_ms=latency_ms,
            recipient_rejected=code == INACTIVE_RECIPIENT and outcome is Outcome.PERMANENT,
        )


def classify_error_code(code: int, status: int) -> Outcome:
    """Postmark's `ErrorCode` → class; an unknown code falls back to the HTTP status (a 422 is permanent)."""
    known = _ERROR_CODES.get(code)
    if known is not None:
        return known
    fallback = classify_status(status)
    return Outcome.PERMANENT if fallback is Outcome.ACCEPTED else fallback


def mailbox(name: str, address: str) -> str:
    """`"Name" <addr>` (quoted when needed, RFC 2047 when not ASCII): safe in Postmark's comma-separated To."""
    return email.utils.formataddr((_one_line(name), address.strip()), charset="utf-8")


def _one_line(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


# ========================================================================================================
# Webhooks
# ========================================================================================================

# Bounce `Type` → (event type, bounce class). Blocks (spam filters, DMARC, ISP blocks) are `rejected` with
# class block, so they never suppress the address (docs/events.md#applying-events); auto-replies and address changes are
# no failure.
_BOUNCE_TYPES: Mapping[str, tuple[EventType, BounceClass | None]] = {
    "HardBounce": (EventType.HARD_BOUNCED, BounceClass.HARD),
    "BadEmailAddress": (EventType.HARD_BOUNCED, BounceClass.INVALID),
    "Transient": (EventType.SOFT_BOUNCED, BounceClass.SOFT),
    "SoftBounce": (EventType.SOFT_BOUNCED, BounceClass.SOFT),
    "DnsError": (EventType.SOFT_BOUNCED, BounceClass.SOFT),
    "Unknown": (EventType.SOFT_BOUNCED, BounceClass.UNDETERMINED),
    "SpamNotification": (EventType.REJECTED, BounceClass.BLOCK),
    "VirusNotification": (EventType.REJECTED, BounceClass.BLOCK),
    "Blocked": (EventType.REJECTED, BounceClass.BLOCK),
    "DMARCPolicy": (EventType.REJECTED, BounceClass.BLOCK),
    "SMTPApiError": (EventType.REJECTED, BounceClass.BLOCK),
    "TemplateRenderingFailed": (EventType.REJECTED, BounceClass.BLOCK),
    "Unconfirmed": (EventType.REJECTED, BounceClass.BLOCK),
    "ManuallyDeactivated": (EventType.REJECTED, BounceClass.SUPPRESSED),
    "SpamComplaint": (EventType.COMPLAINED, None),
    "Unsubscribe": (EventType.UNSUBSCRIBED, None),
    "Subscribe": (EventType.UNKNOWN, None),
    "AutoResponder": (EventType.UNKNOWN, None),
    "AddressChange": (EventType.UNKNOWN, None),
    "ChallengeVerification": (EventType.UNKNOWN, None),
    "OpenRelayTest": (EventType.UNKNOWN, None),
    "InboundError": (EventType.UNKNOWN, None),
}
# TypeCode → Type, for payloads that carry only the number.
_BOUNCE_TYPE_CODES: Mapping[int, str] = {
    1: "HardBounce",
    2: "Transient",
    16: "Unsubscribe",
    32: "Subscribe",
    64: "AutoResponder",
    128: "AddressChange",
    256: "DnsError",
    512: "SpamNotification",
    1024: "OpenRelayTest",
    2048: "Unknown",
    4096: "SoftBounce",
    8192: "VirusNotification",
    16384: "ChallengeVerification",
    100000: "BadEmailAddress",
    100001: "SpamComplaint",
    100002: "ManuallyDeactivated",
    100003: "Unconfirmed",
    100006: "Blocked",
    100007: "SMTPApiError",
    100008: "InboundError",
    100009: "DMARCPolicy",
    100010: "TemplateRenderingFailed",
}
_SMTP_CODE_RE = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")
_ENHANCED_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_CONTENT_SUBTASK_RE = re.compile(r"^X-EDM-SubTask-Id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def bounce_outcome(record: Mapping[str, Any]) -> tuple[EventType, BounceClass | None, str]:
    """(event type, bounce class, Type name) of a Bounce record; an unrecognised Type is `unknown`."""
    type_name = _str(record.get("Type"))
    if type_name is None and isinstance(record.get("TypeCode"), int):
        type_name = _BOUNCE_TYPE_CODES.get(record["TypeCode"])
    event_type, bounce_class = _BOUNCE_TYPES.get(type_name or "", (EventType.UNKNOWN, None))
    return event_type, bounce_class, type_name or ""


def subscription_change_outcome(record: Mapping[str, Any]) -> tuple[EventType, BounceClass | None]:
    """SuppressSending=true means Postmark now suppresses the address; *why* decides what it was:
    ManualSuppression (the recipient unsubscribed, or we suppressed it) → unsubscribed, HardBounce → hard bounce
    on Postmark's suppression list, SpamComplaint → complaint. SuppressSending=false (reactivated) → unknown."""
    if record.get("SuppressSending") is not True:
        return EventType.UNKNOWN, None
    reason = record.get("SuppressionReason")
    if reason == "HardBounce":
        return EventType.HARD_BOUNCED, BounceClass.SUPPRESSED
    if reason == "SpamComplaint":
        return EventType.COMPLAINED, None
    return EventType.UNSUBSCRIBED, None


def _base(record: Mapping[str, Any], event_type: EventType, provider_event: str, **fields: Any) -> NormalizedEvent:
    metadata = _dict(record.get("Metadata"))
    subtask_id = _str(metadata.get("subtask_id")) or _subtask_from_content(record.get("Content"))
    return NormalizedEvent(
        event_type=event_type,
        provider_event=provider_event,
        raw=dict(record),
        subtask_id=subtask_id,
        task_id=_str(metadata.get("task_id")),
        provider_message_id=_str(record.get("MessageID")),
        recipient=_str(record.get("Recipient")) or _str(record.get("Email")),
        **fields,
    )


def _delivery(record: Mapping[str, Any]) -> NormalizedEvent:
    details = _str(record.get("Details"))
    return _base(
        record,
        EventType.DELIVERED,
        "Delivery",
        occurred_at=from_iso(record.get("DeliveredAt")),
        smtp_code=_smtp_code(details),
        enhanced_code=_enhanced(details),
        reason=text_or_none(details),
        details=_pick(record, "MessageStream", "Tag", "ServerID", "ServerId"),
    )


def _bounce(record: Mapping[str, Any]) -> NormalizedEvent:
    event_type, bounce_class, type_name = bounce_outcome(record)
    details_text = _str(record.get("Details"))
    return _base(
        record,
        event_type,
        f"Bounce:{type_name}" if type_name else "Bounce",
        occurred_at=from_iso(record.get("BouncedAt")),
        provider_event_id=_id(record.get("ID")),
        bounce_class=bounce_class,
        smtp_code=_smtp_code(details_text),
        enhanced_code=_enhanced(details_text),
        reason=text_or_none(details_text) or text_or_none(record.get("Description")),
        details=_pick(
            record, "Type", "TypeCode", "Name", "Inactive", "CanActivate", "MessageStream", "Tag", "ServerID"
        ),
    )


def _spam_complaint(record: Mapping[str, Any]) -> NormalizedEvent:
    return _base(
        record,
        EventType.COMPLAINED,
        "SpamComplaint",
        occurred_at=from_iso(record.get("BouncedAt")),
        provider_event_id=_id(record.get("ID")),
        reason=text_or_none(record.get("Details")) or text_or_none(record.get("Description")),
        details=_pick(record, "Type", "TypeCode", "Inactive", "CanActivate", "MessageStream", "Tag"),
    )


def _geo_ip(record: Mapping[str, Any]) -> str | None:
    geo = record.get("Geo")
    return _str(geo.get("IP")) if isinstance(geo, dict) else None


def _open(record: Mapping[str, Any]) -> NormalizedEvent:
    return _base(
        record,
        EventType.OPENED,
        "Open",
        occurred_at=from_iso(record.get("ReceivedAt")),
        ip=_geo_ip(record),
        user_agent=_str(record.get("UserAgent")),
        details=_pick(record, "FirstOpen", "Platform", "ReadSeconds", "MessageStream", "Tag"),
    )


def _click(record: Mapping[str, Any]) -> NormalizedEvent:
    return _base(
        record,
        EventType.CLICKED,
        "Click",
        occurred_at=from_iso(record.get("ReceivedAt")),
        url=_str(record.get("OriginalLink")),
        ip=_geo_ip(record),
        user_agent=_str(record.get("UserAgent")),
        details=_pick(record, "ClickLocation", "Platform", "MessageStream", "Tag"),
    )


def _subscription_change(record: Mapping[str, Any]) -> NormalizedEvent:
    event_type, bounce_class = subscription_change_outcome(record)
    return _base(
        record,
        event_type,
        "SubscriptionChange",
        occurred_at=from_iso(record.get("ChangedAt")),
        bounce_class=bounce_class,
        reason=text_or_none(record.get("SuppressionReason")),
        details=_pick(record, "SuppressSending", "SuppressionReason", "Origin", "MessageStream", "Tag"),
    )


def _inbound(record: Mapping[str, Any]) -> NormalizedEvent:
    """Postmark inbound: a `replied` event without SubTask ids (threading uses the headers), the record as `raw`;
    its mail goes to conversations (`postmark_inbound.PostmarkInbound.event_mails`)."""
    headers = {
        str(h.get("Name", "")).lower(): h.get("Value") for h in _list(record.get("Headers")) if isinstance(h, dict)
    }
    sender = _dict(record.get("FromFull"))
    to_full = [t for t in _list(record.get("ToFull")) if isinstance(t, dict)]
    details = {
        "inbound": True,
        "from": _str(sender.get("Email")) or _str(record.get("From")),
        "original_recipient": _str(record.get("OriginalRecipient")),
        "to": [t.get("Email") for t in to_full if t.get("Email")],
        "mailbox_hashes": [t.get("MailboxHash") for t in to_full if t.get("MailboxHash")],
        "subject": _str(record.get("Subject")),
        "header_message_id": headers.get("message-id"),
        "in_reply_to": headers.get("in-reply-to"),
        "references": headers.get("references"),
    }
    return NormalizedEvent(
        event_type=EventType.REPLIED,
        provider_event="Inbound",
        raw=dict(record),
        occurred_at=_rfc2822(record.get("Date")),
        provider_event_id=_str(record.get("MessageID")),  # Postmark's id of the inbound mail: dedupe only
        details={k: v for k, v in details.items() if v},
    )


def _unknown(record: Mapping[str, Any]) -> NormalizedEvent:
    when = next(
        (from_iso(record.get(k)) for k in ("ReceivedAt", "DeliveredAt", "BouncedAt", "ChangedAt") if record.get(k)),
        None,
    )
    return _base(record, EventType.UNKNOWN, str(record.get("RecordType")), occurred_at=when)


_RECORD_PARSERS = {
    "Delivery": _delivery,
    "Bounce": _bounce,
    "SpamComplaint": _spam_complaint,
    "Open": _open,
    "Click": _click,
    "SubscriptionChange": _subscription_change,
    "Inbound": _inbound,
}


class PostmarkWebhook:
    provider: ClassVar[str] = "postmark"
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        # Postmark signs nothing: the webhook URL carries Basic credentials or Postmark sends a custom header.
        return basic_or_token_matches(request, target.secrets)

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        return None

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        record = parse_json(request)
        if not isinstance(record, dict):
            raise MalformedPayload("a Postmark webhook body is one JSON object")
        kind = record.get("RecordType")
        if kind is None and (request.inbound or "FromFull" in record):
            return ParsedPayload(items=[_inbound(record)])
        if not isinstance(kind, str) or not kind:
            raise MalformedPayload("no RecordType in the Postmark payload")
        return ParsedPayload(items=[_RECORD_PARSERS.get(kind, _unknown)(record)])


webhook = PostmarkWebhook()


# ========================================================================================================
# Small helpers
# ========================================================================================================


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return _str(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _pick(source: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {name: source[name] for name in names if source.get(name) is not None}


def _smtp_code(text: str | None) -> int | None:
    match = _SMTP_CODE_RE.search(text or "")
    return int(match.group(1)) if match else None


def _enhanced(text: str | None) -> str | None:
    match = _ENHANCED_RE.search(text or "")
    return match.group(1) if match else None


def _subtask_from_content(content: Any) -> str | None:
    """A bounce with "include content" carries the original message: our header is in it."""
    if not isinstance(content, str):
        return None
    match = _CONTENT_SUBTASK_RE.search(content)
    return match.group(1) if match else None


def _rfc2822(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.astimezone(dt.UTC) if parsed.tzinfo is not None else None
