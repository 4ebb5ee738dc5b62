"""SendGrid (Twilio SendGrid) v3: the `mail/send` adapter and the signed Event Webhook handler.

Credentials: {"api_key": "SG.…"} (sent as `Authorization: Bearer`).
Options: `region` ("global" → https://api.sendgrid.com, "eu" → https://api.eu.sendgrid.com for EU-pinned
subusers) or `base_url` (overrides both).

Sending
-------
* One personalization per message, each with its own `to`, `subject`, `headers` (X-EDM-SubTask-Id,
  Message-ID, List-Unsubscribe, List-Unsubscribe-Post, Feedback-ID…) and `custom_args` (string values:
  subtask_id, task_id). From and Reply-To are request-level, so only messages sharing them share a request;
  SendGrid refuses a request naming the same address twice, so a repeated address goes into another request.
* Every message of a batch has its own rendered body (distinct unsubscribe links, personal data), but
  `content` is request-level: it holds two substitution tags and each personalization carries its html and
  text as `substitutions`. SendGrid caps substitutions at 10,000 bytes per personalization, so a message
  over that limit (or whose parts contain a tag, or lack a part) is sent alone with its content inline, in
  another request of the same `send()` call. A request of one message always carries its content inline.
* Open, click, subscription tracking and Google Analytics link decoration are disabled per request.
* 202 answers carry one `X-Message-Id` for the whole request; every message of that request records it as
  its provider_message_id. SendGrid events carry `sg_message_id = "<X-Message-Id>.filter…"`, so a lookup by
  provider id is a prefix match (the webhook side hands the part before ".filter" to the pipeline) and is
  ambiguous within a batch: our `subtask_id` in custom_args is the primary key.
* Errors: 401 "Maximum credits exceeded" → quota_exhausted; other 401/403 → auth_config; 429 → throttled
  (Retry-After, else X-RateLimit-Reset); 400/413 → permanent; 5xx → transient. A 400 whose errors name
  personalizations (`personalizations.3.to.0.email`) fails only those messages (recipient_rejected when the
  field is an address); the others were not sent and go again once, without the culprits, in this call.
* After a throttled / quota / auth answer the remaining requests of the call are not attempted: they get the
  same class, since the service-level problem applies to them too.

Webhook
-------
Secret: the verification public key shown by SendGrid's "Signed Event Webhook" settings (base64 DER
SubjectPublicKeyInfo, `MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE…`); PEM is accepted too. ECDSA P-256/SHA-256
over `X-Twilio-Email-Event-Webhook-Timestamp` + raw body; timestamp within 10 minutes. The body is a JSON
array; our custom_args come back flattened into each event (`subtask_id`, `task_id`); dedupe on
`sg_event_id`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
    text_or_none,
)
from edm.vocabulary.events import BadElement, BounceClass, EventType, NormalizedEvent

MAX_PERSONALIZATIONS = 1000
SUBSTITUTIONS_LIMIT_BYTES = 10_000  # SendGrid's cap on one personalization's substitutions (keys + values)
HTML_TAG = "[%edm_html_part%]"
TEXT_TAG = "[%edm_text_part%]"
# Headers SendGrid refuses in `headers` (they come from other fields or belong to SendGrid).
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"
SIGNATURE_WINDOW_SECONDS = 600.0
# Outcomes that concern the whole service: the rest of the call would get the same answer.
_SIBLING_CODE = "not_sent_batch_rejected"  # a 400 blamed other messages of the request: send this one again
_RESEND_ROUNDS = 2
_PERSONALIZATION_FIELD_RE = re.compile(r"^personalizations\[?\.?(\d+)\]?\.?(\w+)?")
_SMTP_CODE_RE = re.compile(r"^\s*([245]\d\d)\b")
_ENHANCED_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class SendGridAdapter(HttpAdapter):
    provider: ClassVar[str] = "sendgrid"
    credentials_probe: ClassVar[tuple[str, str] | None] = ("GET", "/v3/scopes")  # answers any valid key
    capabilities: ClassVar[Capabilities] = Capabilities(needs_mime=False, max_batch=MAX_PERSONALIZATIONS)
    default_base_url: ClassVar[str] = "https://api.sendgrid.com"
    regional_base_urls: ClassVar[Mapping[str, str]] = {
        "global": "https://api.sendgrid.com",
        "eu": "https://api.eu.sendgrid.com",
    }

    def default_headers(self) -> dict[str, str]:
        api_key = str(self.config.credentials.get("api_key", ""))
        return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def plan_requests(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        return plan_requests(messages)

    async def send_group(
        self, messages: Sequence[OutboundMessage], group: list[int], results: list[SendResult | None]
    ) -> None:
        for _ in range(_RESEND_ROUNDS + 1):
            answers = await self.send_request([messages[i] for i in group])
            retry = [i for i, answer in zip(group, answers, strict=True) if answer.provider_code == _SIBLING_CODE]
            for index, answer in zip(group, answers, strict=True):
                results[index] = answer
            if not retry or len(retry) == len(group):
                return
            group = retry  # the culprits failed for good; the rest was never sent

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        first = messages[0]
        payload: dict[str, Any] = {
            "from": _address(first.from_address, first.from_name),
            "tracking_settings": {
                "click_tracking": {"enable": False, "enable_text": False},
                "open_tracking": {"enable": False},
                "subscription_tracking": {"enable": False},
                "ganalytics": {"enable": False},
            },
        }
        if first.reply_to:
            payload["reply_to"] = {"email": first.reply_to}
        if len(messages) == 1:
            payload["personalizations"] = [_personalization(first)]
            payload["content"] = _inline_content(first)
        else:
            payload["personalizations"] = [_personalization(m, substitutions=_substitutions(m)) for m in messages]
            payload["content"] = [{"type": "text/plain", "value": TEXT_TAG}, {"type": "text/html", "value": HTML_TAG}]
        return client.build_request("POST", "/v3/mail/send", json=payload)

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        status = response.status_code
        if 200 <= status < 300:
            message_id = response.headers["x-message-id"]  # KeyError: not SendGrid's answer (auth_config)
            if not message_id.strip():
                raise ValueError("empty X-Message-Id")
            return [accepted(m, message_id.strip(), status=status, latency_ms=latency_ms) for m in messages]
        errors = _errors(response)
        text = f"HTTP {status}: " + ("; ".join(_describe(e) for e in errors) or response.reason_phrase)
        outcome = _classify(status, errors)
        if outcome is Outcome.PERMANENT and status == 400:
            return _blame_personalizations(messages, errors, text, status, latency_ms)
        retry_after = _retry_after(response) if outcome is Outcome.THROTTLED else None
        code = "maximum_credits_exceeded" if outcome is Outcome.QUOTA_EXHAUSTED else _first_field(errors)
        return [
            failure(m, outcome, code, text, status=status, retry_after=retry_after, latency_ms=latency_ms)
            for m in messages
        ]


# --------------------------------------------------------------------------------------------------------
# Request planning and payload parts
# --------------------------------------------------------------------------------------------------------


def plan_requests(messages: Sequence[OutboundMessage]) -> list[list[int]]:
    """Indexes of `messages` per provider request, in the order of their first message.

    Messages that can share a request (same From and Reply-To, content fitting in substitutions) are
    grouped; an address already in a group opens a new one; every other message goes alone."""
    groups: list[list[int]] = []
    open_group: dict[tuple[str, str, str], tuple[list[int], set[str]]] = {}
    for index, message in enumerate(messages):
        if len(messages) == 1 or not _fits_substitutions(message):
            groups.append([index])
            continue
        key = (message.from_address, message.from_name, message.reply_to or "")
        address = message.to_address.strip().lower()
        current = open_group.get(key)
        if current is None or address in current[1] or len(current[0]) >= MAX_PERSONALIZATIONS:
            current = ([], set())
            open_group[key] = current
            groups.append(current[0])
        current[0].append(index)
        current[1].add(address)
    return groups


def _fits_substitutions(message: OutboundMessage) -> bool:
    if not message.html or not message.text:
        return False  # the shared content has both parts: a message without one goes alone
    parts = (message.html, message.text, message.subject)
    if any(tag in part for part in parts for tag in (HTML_TAG, TEXT_TAG)):
        return False  # SendGrid would substitute inside it
    size = sum(len(part.encode()) for part in (HTML_TAG, message.html, TEXT_TAG, message.text))
    return size <= SUBSTITUTIONS_LIMIT_BYTES


def _substitutions(message: OutboundMessage) -> dict[str, str]:
    return {HTML_TAG: message.html, TEXT_TAG: message.text}


def _address(email: str, name: str) -> dict[str, str]:
    return {"email": email, "name": name} if name else {"email": email}


def _personalization(message: OutboundMessage, *, substitutions: dict[str, str] | None = None) -> dict[str, Any]:
    custom_args = {str(k): str(v) for k, v in message.custom_args.items()}  # SendGrid wants string values
    personalization: dict[str, Any] = {
        "to": [_address(message.to_address, message.to_name)],
        "subject": message.subject,
        "headers": _headers(message),
        "custom_args": custom_args,
    }
    if substitutions is not None:
        personalization["substitutions"] = substitutions
    return personalization


def _headers(message: OutboundMessage) -> dict[str, str]:
    headers = {name: value for name, value in message.headers.items() if value and name.lower() not in RESERVED_HEADERS}
    subtask_id = message.custom_args.get("subtask_id")
    if subtask_id and not any(name.lower() == "x-edm-subtask-id" for name in headers):
        headers["X-EDM-SubTask-Id"] = str(subtask_id)
    return headers


def _inline_content(message: OutboundMessage) -> list[dict[str, str]]:
    content = [
        {"type": kind, "value": value}
        for kind, value in (("text/plain", message.text), ("text/html", message.html))
        if value
    ]
    if not content:
        raise ValueError("the message has neither a text nor an HTML part")
    return content


# --------------------------------------------------------------------------------------------------------
# Answer classification
# --------------------------------------------------------------------------------------------------------


def _errors(response: httpx.Response) -> list[dict[str, Any]]:
    body = json_or_none(response)
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [e for e in errors if isinstance(e, dict)]


def _describe(error: dict[str, Any]) -> str:
    message = str(error.get("message") or "").strip()
    field = error.get("field")
    return f"{message} ({field})" if field else message


def _first_field(errors: list[dict[str, Any]]) -> str | None:
    for error in errors:
        if error.get("field"):
            return str(error["field"])[:100]
    return None


def _classify(status: int, errors: list[dict[str, Any]]) -> Outcome:
    if status == 401 and any("maximum credits exceeded" in str(e.get("message", "")).lower() for e in errors):
        return Outcome.QUOTA_EXHAUSTED  # the account ran out of credits: the key is fine
    if status == 413:
        return Outcome.PERMANENT
    return classify_status(status)


def _retry_after(response: httpx.Response) -> float | None:
    delay = retry_after_seconds(response)
    if delay is not None:
        return delay
    reset = response.headers.get("x-ratelimit-reset")  # epoch seconds when the window resets
    try:
        when = float(reset) if reset else None
    except ValueError:
        return None
    if when is None:
        return None
    if when > 1e11:
        when /= 1000.0
    return max(0.0, when - clock.utc_now().timestamp())


def _blame_personalizations(
    messages: Sequence[OutboundMessage], errors: list[dict[str, Any]], text: str, status: int, latency_ms: int
) -> list[SendResult]:
    """A 400 fails the whole request. When its errors name personalizations, only those messages are at
    fault; the others are marked for a resend in this call. Otherwise every message fails."""
    blamed: dict[int, bool] = {}  # personalization index -> the error is about its address
    for error in errors:
        match = _PERSONALIZATION_FIELD_RE.match(str(error.get("field") or ""))
        if match and int(match.group(1)) < len(messages):
            index = int(match.group(1))
            blamed[index] = blamed.get(index, False) or match.group(2) in ("to", "cc", "bcc")
    code = _first_field(errors)
    if not blamed or len(messages) == 1:
        address_bad = bool(blamed) and all(blamed.values())
        return [
            failure(
                m, Outcome.PERMANENT, code, text, status=status, latency_ms=latency_ms, recipient_rejected=address_bad
            )
            for m in messages
        ]
    results = []
    for index, message in enumerate(messages):
        if index in blamed:
            results.append(
                failure(
                    message,
                    Outcome.PERMANENT,
                    code,
                    text,
                    status=status,
                    latency_ms=latency_ms,
                    recipient_rejected=blamed[index],
                )
            )
        else:
            results.append(
                failure(
                    message,
                    Outcome.TRANSIENT,
                    _SIBLING_CODE,
                    "not sent: another message of the request was refused",
                    status=status,
                    latency_ms=latency_ms,
                    recipient_level=True,
                )
            )
    return results


# --------------------------------------------------------------------------------------------------------
# Event Webhook
# --------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def public_key(secret: str) -> ec.EllipticCurvePublicKey | None:
    """The configured verification key (base64 DER SubjectPublicKeyInfo, or PEM), or None if unusable."""
    try:
        if "-----BEGIN" in secret:
            key = serialization.load_pem_public_key(secret.strip().encode())
        else:
            der = base64.b64decode("".join(secret.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def _signature_valid(key: ec.EllipticCurvePublicKey, signature: bytes, signed: bytes) -> bool:
    try:
        key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# dropped reasons: the address is on SendGrid's suppression lists, or not an address at all
_SUPPRESSED_REASONS = frozenset(
    {"bounced address", "unsubscribed address", "spam reporting address", "unsubscribed group"}
)
_INVALID_REASONS = frozenset({"invalid"})
_BLOCK_REASONS = frozenset({"spam content"})

_SIMPLE_EVENTS: dict[str, EventType] = {
    "processed": EventType.ACCEPTED,
    "delivered": EventType.DELIVERED,
    "open": EventType.OPENED,
    "click": EventType.CLICKED,
    "spamreport": EventType.COMPLAINED,
    "unsubscribe": EventType.UNSUBSCRIBED,
    "group_unsubscribe": EventType.UNSUBSCRIBED,
    "group_resubscribe": EventType.UNKNOWN,
}
# Kept in `details` when present.
_DETAIL_KEYS = (
    "sg_message_id",
    "smtp-id",
    "category",
    "asm_group_id",
    "attempt",
    "tls",
    "type",
    "bounce_classification",
    "sg_machine_open",
    "url_offset",
    "marketing_campaign_id",
)


class SendGridWebhook:
    provider: ClassVar[str] = "sendgrid"
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        signature_b64 = request.header(SIGNATURE_HEADER)
        timestamp = request.header(TIMESTAMP_HEADER)
        if not signature_b64 or not timestamp:
            return False
        if not fresh(from_epoch(timestamp.strip()), ctx.now, seconds=SIGNATURE_WINDOW_SECONDS):
            return False
        try:
            signature = base64.b64decode(signature_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        signed = timestamp.encode() + request.body
        verified = False
        for secret in target.secrets:
            key = public_key(secret)
            if key is not None and _signature_valid(key, signature, signed):
                verified = True
        return verified

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        return None  # no nonce; duplicates are absorbed by sg_event_id dedupe

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        body = parse_json(request)
        if not isinstance(body, list):
            raise MalformedPayload("SendGrid posts a JSON array of events")
        return ParsedPayload(items=[parse_event(element) for element in body], batch=True)


def parse_event(element: Any) -> NormalizedEvent | BadElement:
    if not isinstance(element, dict):
        return BadElement(raw=element, error="event is not a JSON object")
    name = element.get("event")
    if not isinstance(name, str) or not name:
        return BadElement(raw=element, error="event has no 'event' name")
    event_type, bounce_class = _event_type(name, element)
    reason = text_or_none(element.get("reason") or element.get("response"))
    smtp_code, enhanced_code = _codes(element, reason)
    return NormalizedEvent(
        event_type=event_type,
        provider_event=name,
        raw=element,
        occurred_at=from_epoch(element.get("timestamp")),
        subtask_id=_id_text(element.get("subtask_id")),
        task_id=_id_text(element.get("task_id")),
        provider_message_id=x_message_id(element.get("sg_message_id")),
        provider_event_id=_id_text(element.get("sg_event_id")),
        recipient=_id_text(element.get("email")),
        bounce_class=bounce_class,
        smtp_code=smtp_code,
        enhanced_code=enhanced_code,
        reason=reason,
        url=_id_text(element.get("url")) if event_type is EventType.CLICKED else None,
        ip=_id_text(element.get("ip")),
        user_agent=text_or_none(element.get("useragent")),
        details={key: element[key] for key in _DETAIL_KEYS if key in element},
    )


def _event_type(name: str, element: dict[str, Any]) -> tuple[EventType, BounceClass | None]:
    if name in _SIMPLE_EVENTS:
        return _SIMPLE_EVENTS[name], None
    if name == "deferred":
        return EventType.DEFERRED, BounceClass.SOFT
    if name == "bounce":
        kind = str(element.get("type") or "bounce").lower()
        if kind == "blocked":  # refused by the receiving server's policy: never suppresses the address
            return EventType.REJECTED, BounceClass.BLOCK
        if kind == "expired":  # SendGrid gave up retrying a deferral
            return EventType.SOFT_BOUNCED, BounceClass.SOFT
        return EventType.HARD_BOUNCED, BounceClass.HARD
    if name == "dropped":
        return EventType.REJECTED, _dropped_class(element.get("reason"))
    return EventType.UNKNOWN, None


def _dropped_class(reason: Any) -> BounceClass:
    text = str(reason or "").strip().lower()
    if text in _SUPPRESSED_REASONS:
        return BounceClass.SUPPRESSED
    if text in _INVALID_REASONS:
        return BounceClass.INVALID
    if text in _BLOCK_REASONS:
        return BounceClass.BLOCK
    return BounceClass.UNDETERMINED


def _codes(element: dict[str, Any], reason: str | None) -> tuple[int | None, str | None]:
    smtp_match = _SMTP_CODE_RE.match(reason or "")
    status = element.get("status")
    enhanced_match = _ENHANCED_RE.search(str(status)) if status else _ENHANCED_RE.search(reason or "")
    return (int(smtp_match.group(1)) if smtp_match else None, enhanced_match.group(1) if enhanced_match else None)


def x_message_id(sg_message_id: Any) -> str | None:
    """The X-Message-Id our send recorded, from `sg_message_id = "<X-Message-Id>.filter…"`.

    Legacy ids without the prefix ("filter0093p1las1.…") name no request of ours: None."""
    if not isinstance(sg_message_id, str) or not sg_message_id:
        return None
    prefix, separator, _ = sg_message_id.partition(".filter")
    if separator:
        return prefix or None
    return None if sg_message_id.startswith("filter") else sg_message_id


def _id_text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


webhook = SendGridWebhook()

__all__ = ["SendGridAdapter", "SendGridWebhook", "parse_event", "plan_requests", "webhook", "x_message_id"]
