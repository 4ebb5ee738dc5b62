"""`provider = "engagelab"`: EngageLab Email (the original system's provider), send API and webhooks.

Credentials (`ServiceConfig.credentials`)::

    {"api_user": "...", "api_key": "...",        # Basic auth of the send API (a dashboard sending account)
     "webhook_secrets": ["<app key>" | "<url token>", ...]}   # read by the webhook pipeline

(The original system stored API_USER under `api_key` and API_KEY under `api_secret`: a migration must
rename them.)

Options (`ServiceConfig.options`, all optional)::

    data_centre / region   "sg" (Singapore, default) or "tr" (Turkey); credentials work in their own DC only
    base_url               overrides both (tests, proxies)

Send: `POST {base}/v1/mail/send`, one recipient per call (send_mode 0), `request_id` = our idempotency key
(EngageLab returns the first result for a duplicate within 1 h), our ids in top-level `custom_args` and the
`X-EDM-SubTask-Id` header, EngageLab's open/click/unsubscribe tracking off. The per-recipient
`email_ids[0]` is what webhooks echo, so it is the provider message id.

Webhook: one JSON envelope per request (an array is tolerated and treated as a batch). Two kinds of event:
`status.message_status` (target, sent, delivered, invalid_email, soft_bounce) and `response.event` (open,
click, unsubscribe, report_spam, route = inbound reply). EngageLab sends no event id: dedupe falls back to
the pipeline's hash. Verification: see `EngageLabWebhook.verify`.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.message
import email.parser
import email.policy
import email.utils
import hashlib
import hmac
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
from edm.providers.inbound import InboundMail
from edm.providers.webhook import (
    MalformedPayload,
    ParsedPayload,
    VerifyContext,
    WebhookRequest,
    WebhookTarget,
    basic_or_token_matches,
    fresh,
    from_epoch,
    parse_json,
    same,
    text_or_none,
)
from edm.vocabulary.events import BadElement, BounceClass, EventType, NormalizedEvent

SEND_PATH = "/v1/mail/send"
IDEMPOTENCY_WINDOW_SECONDS = 3600
SIGNATURE_WINDOW_SECONDS = 600  # ±10 min (docs/providers.md#webhooks-where-events-come-back)

# Our headers EngageLab lets through (none is on its forbidden list); the rest of ours is not sent.
_PASSED_HEADERS = (
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "X-EDM-SubTask-Id",
    "Feedback-ID",
    "In-Reply-To",
    "References",
)
_WRONG_DATA_CENTRE_CODE = 30000
_QUOTA_WORDS = re.compile(r"quota|credit|balance", re.IGNORECASE)
_SMTP_CODE_RE = re.compile(r"^\s*([245]\d\d)\b")
_ENHANCED_CODE_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_ADDRESS_SPECIALS = re.compile(r'[()<>@,;:\\".\[\]]')


# --------------------------------------------------------------------------------------------------------
# Send
# --------------------------------------------------------------------------------------------------------


class EngageLabAdapter(HttpAdapter):
    provider: ClassVar[str] = "engagelab"
    required_credentials: ClassVar[tuple[str, ...]] = ("api_user", "api_key")
    capabilities: ClassVar[Capabilities] = Capabilities(
        needs_mime=False,
        max_batch=1,
        honours_idempotency=True,
        idempotency_window_seconds=IDEMPOTENCY_WINDOW_SECONDS,
    )
    default_base_url: ClassVar[str] = "https://email.api.engagelab.cc"
    regional_base_urls: ClassVar[Mapping[str, str]] = {
        "sg": "https://email.api.engagelab.cc",
        "tr": "https://emailapi-tr.engagelab.com",
    }

    @classmethod
    def resolve_base_url(cls, options: Mapping[str, Any]) -> str:
        # EngageLab calls it a data centre; accept that name as an alias of the generic `region`.
        if options.get("data_centre") and not options.get("region"):
            options = {**options, "region": str(options["data_centre"]).lower()}
        return super().resolve_base_url(options)

    def default_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json;charset=utf-8", "Accept": "application/json"}
        if self._has_credentials():
            pair = f"{self.config.credentials['api_user']}:{self.config.credentials['api_key']}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return headers

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        if len(messages) != 1:
            raise ValueError(f"engagelab sends one message per call, got {len(messages)}")
        body = orjson.dumps(send_body(messages[0]))
        return client.build_request("POST", SEND_PATH, content=body)

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        status = response.status_code
        if 200 <= status < 300:
            email_ids = response.json()["email_ids"]  # KeyError/TypeError: not the API's answer -> auth_config
            if not isinstance(email_ids, list) or len(email_ids) < len(messages):
                raise ValueError("answer has no email_ids for the recipient")
            return [
                accepted(m, str(email_ids[i]), status=status, latency_ms=latency_ms) for i, m in enumerate(messages)
            ]
        outcome, code, text = classify_error(response)
        retry_after = retry_after_seconds(response) if outcome is Outcome.THROTTLED else None
        return [
            failure(m, outcome, code, text, status=status, retry_after=retry_after, latency_ms=latency_ms)
            for m in messages
        ]

    def _has_credentials(self) -> bool:
        credentials = self.config.credentials
        return bool(credentials.get("api_user")) and bool(credentials.get("api_key"))


def send_body(message: OutboundMessage) -> dict[str, Any]:
    """The `/v1/mail/send` JSON for one message (samples/engagelab/api_mail_send_request.json)."""
    content = {part: value for part, value in (("html", message.html), ("text", message.text)) if value}
    if not content:
        raise ValueError("message has neither an HTML nor a text part")
    body: dict[str, Any] = {
        "subject": _one_line(message.subject),
        "content": content,
        "headers": _passed_headers(message),
        "settings": {
            "send_mode": 0,  # one mail per recipient; cc/bcc unused
            "return_email_id": True,
            "open_tracking": False,  # EDM tracks opens/clicks/unsubscribes itself (docs/tracking.md)
            "click_tracking": False,
            "unsubscribe_tracking": False,
        },
    }
    if message.reply_to:
        body["reply_to"] = [message.reply_to]
    return {
        "from": display_address(message.from_name, message.from_address),
        # Address only: the per-recipient email_id EngageLab returns ends in "$<address>".
        "to": [message.to_address],
        "body": body,
        "custom_args": {k: v for k, v in message.custom_args.items() if "." not in k},  # dots are refused
        "request_id": message.key,
    }


def display_address(name: str, address: str) -> str:
    name = _one_line(name)
    if not name:
        return address
    if _ADDRESS_SPECIALS.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _passed_headers(message: OutboundMessage) -> dict[str, str]:
    ours = {name.lower(): value for name, value in message.headers.items()}
    if "x-edm-subtask-id" not in ours and message.custom_args.get("subtask_id"):
        ours["x-edm-subtask-id"] = message.custom_args["subtask_id"]
    return {name: _one_line(ours[name.lower()]) for name in _PASSED_HEADERS if ours.get(name.lower())}


def _one_line(value: str) -> str:
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())


def classify_error(response: httpx.Response) -> tuple[Outcome, str | None, str]:
    """(outcome, provider code, message) of a non-2xx answer (docs/providers.md#how-answers-are-classified)."""
    status = response.status_code
    payload = json_or_none(response)
    code = payload.get("code") if isinstance(payload, dict) else None
    said = text_or_none(payload.get("message")) if isinstance(payload, dict) else None
    text = f"HTTP {status}" + (f" code {code}" if code is not None else "") + (f": {said}" if said else "")
    provider_code = str(code) if code is not None else None
    if status == 401 and _as_int(code) == _WRONG_DATA_CENTRE_CODE:
        return Outcome.AUTH_CONFIG, provider_code, text + " (check api_user/api_key and the data centre: sg or tr)"
    # The quota answer is undocumented (docs/providers.md#how-answers-are-classified): 402 or a message about
    # quota/credits.
    if status == 402 or (400 <= status < 500 and status not in (401, 403, 429) and _QUOTA_WORDS.search(said or "")):
        return Outcome.QUOTA_EXHAUSTED, provider_code, text
    # 401/403 -> auth_config, 429 -> throttled, 5xx -> transient, 404/405 (wrong base URL) -> auth_config,
    # other 4xx (30801, 30893, ...) -> permanent for this message.
    return classify_status(status), provider_code, text


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------
# Webhook
# --------------------------------------------------------------------------------------------------------

_STATUS_EVENTS: dict[str, EventType] = {
    "target": EventType.ACCEPTED,  # request accepted
    "sent": EventType.ACCEPTED,  # left EngageLab
    "delivered": EventType.DELIVERED,
    "invalid_email": EventType.HARD_BOUNCED,
    "soft_bounce": EventType.SOFT_BOUNCED,
}
_RESPONSE_EVENTS: dict[str, EventType] = {
    "open": EventType.OPENED,
    "click": EventType.CLICKED,
    "unsubscribe": EventType.UNSUBSCRIBED,
    "report_spam": EventType.COMPLAINED,
    "route": EventType.REPLIED,
}
# Documented delivery-status sub-codes (docs/events.md#event-vocabulary) -> (event type, bounce class).
_INVALID_SUB_STATS: dict[int, tuple[EventType, BounceClass]] = {
    401: (EventType.REJECTED, BounceClass.SUPPRESSED),  # on EngageLab's blacklist
    402: (EventType.REJECTED, BounceClass.SUPPRESSED),  # unsubscribed at EngageLab
    403: (EventType.HARD_BOUNCED, BounceClass.HARD),  # server unreachable
    404: (EventType.HARD_BOUNCED, BounceClass.INVALID),  # bad address format
    405: (EventType.HARD_BOUNCED, BounceClass.BLOCK),  # IP/domain rejected
    406: (EventType.HARD_BOUNCED, BounceClass.INVALID),  # address does not exist
    407: (EventType.HARD_BOUNCED, BounceClass.BLOCK),  # spam
    408: (EventType.HARD_BOUNCED, BounceClass.BLOCK),  # sender/recipient rejected
}
_SOFT_SUB_STATS: dict[int, BounceClass] = {505: BounceClass.BLOCK, 507: BounceClass.BLOCK}  # IP / spam rejected
_SUB_STAT_KEYS = ("sub_stat", "subStat", "sub_status", "substat")
_SUB_STAT_DESC_KEYS = ("sub_stat_desc", "subStatDesc", "sub_status_desc")


class EngageLabWebhook:
    provider: ClassVar[str] = "engagelab"
    needs_secret: ClassVar[bool] = True

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        """The URL/header token (`?token=`, Basic, Bearer), or EngageLab's signature headers.

        The signature covers only the timestamp, never the body (docs/providers.md#webhooks-where-events-come-back), so
        the per-service URL with a `?token=` secret is the stronger option; both are accepted. EngageLab's two documents
        disagree on the algorithm: md5(timestamp + app key header + secret) or HMAC-SHA256(secret,
        timestamp), hex; both are accepted, with the timestamp in seconds or milliseconds within ±10 min.
        """
        if not target.secrets:
            return False
        if basic_or_token_matches(request, target.secrets):
            return True
        return _signature_matches(request, target.secrets, ctx.now)

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        # The signature depends on the timestamp only: two genuine events in the same second share it.
        return None

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        document = parse_json(request)
        if isinstance(document, list):
            return ParsedPayload(
                items=[item for element in document for item in _parse_batch_element(element)], batch=True
            )
        if not isinstance(document, dict) or not _is_envelope(document):
            raise MalformedPayload("not an EngageLab event: expected an object with `status` or `response`")
        return ParsedPayload(items=list(parse_envelope(document)))

    def inbound_mail(self, event: NormalizedEvent, service_id: int | None) -> InboundMail | None:
        return inbound_mail(event, service_id)


webhook = EngageLabWebhook()


def inbound_mail(event: NormalizedEvent, service_id: int | None) -> InboundMail | None:
    """The inbound mail a `route` event carries, for conversations (docs/conversations.md#sources): its
    `raw_message` as received, or, when the payload has none, one MIME message rebuilt from its headers, text and
    html. None for any other event. The envelope recipient is `x_mx_rcptto` (else the envelope's `to`)."""
    if event.event_type is not EventType.REPLIED or event.provider_event != "route" or not isinstance(event.raw, dict):
        return None
    data = _mapping(_mapping(event.raw.get("response")).get("response_data"))
    raw_message = data.get("raw_message")
    if isinstance(raw_message, str) and raw_message.strip():
        raw = raw_message.encode("utf-8", "surrogateescape")
    else:
        raw = _rebuilt_mime(data)
    return InboundMail(
        raw=raw,
        source="engagelab",
        service_id=service_id,
        recipient=_address(data.get("x_mx_rcptto")) or _address(event.raw.get("to")),
        sender=_address(data.get("x_mx_mailfrom")),
        provider_message_id=event.provider_message_id,
    )


def _rebuilt_mime(data: Mapping[str, Any]) -> bytes:
    message = email.message.EmailMessage(policy=email.policy.default)
    headers = _mapping(data.get("headers"))
    for name in ("From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References"):
        value = headers.get(name) or headers.get(name.lower())
        if isinstance(value, str) and value.strip():
            try:
                message[name] = " ".join(value.split())
            except (ValueError, TypeError):
                continue
    if "From" not in message and isinstance(data.get("from"), str):
        message["From"] = str(data["from"])
    if "Subject" not in message and isinstance(data.get("subject"), str):
        message["Subject"] = " ".join(str(data["subject"]).split())
    if "In-Reply-To" not in message and isinstance(data.get("reference"), str):
        message["In-Reply-To"] = " ".join(str(data["reference"]).split())
    text = data.get("text") if isinstance(data.get("text"), str) else ""
    html = data.get("html") if isinstance(data.get("html"), str) else None
    message.set_content(text or "")
    if html:
        message.add_alternative(html, subtype="html")
    return message.as_bytes()


def _signature_matches(request: WebhookRequest, secrets: Sequence[str], now: dt.datetime) -> bool:
    timestamp = (request.header("x-webhook-timestamp") or "").strip()
    signature = (request.header("x-webhook-signature") or "").strip().lower()
    app_key_header = (request.header("x-webhook-appkey") or "").strip()
    if not timestamp or not signature or not fresh(from_epoch(timestamp), now, seconds=SIGNATURE_WINDOW_SECONDS):
        return False
    matched = False
    for secret in secrets:
        md5_form = hashlib.md5(f"{timestamp}{app_key_header}{secret}".encode()).hexdigest()
        hmac_form = hmac.new(secret.encode(), timestamp.encode(), hashlib.sha256).hexdigest()
        matched |= same(md5_form, signature)  # no early exit: every comparison runs
        matched |= same(hmac_form, signature)
    return matched


def _is_envelope(element: Mapping[str, Any]) -> bool:
    return isinstance(element.get("status"), dict) or isinstance(element.get("response"), dict)


def _parse_batch_element(element: Any) -> list[NormalizedEvent | BadElement]:
    if not isinstance(element, dict) or not _is_envelope(element):
        return [BadElement(raw=element, error="not an EngageLab event: no `status` or `response` object")]
    try:
        return list(parse_envelope(element))
    except (TypeError, ValueError, AttributeError) as exc:  # defensive: a strange element never drops the rest
        return [BadElement(raw=element, error=f"{type(exc).__name__}: {exc}")]


def parse_envelope(envelope: Mapping[str, Any]) -> list[NormalizedEvent]:
    """The normalized events of one EngageLab envelope (several for a `target` with several email_ids)."""
    if isinstance(envelope.get("status"), dict):
        return _status_events(envelope, envelope["status"])
    return [_response_event(envelope, envelope["response"])]


def _common(envelope: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    custom_args = _custom_args(envelope.get("custom_args"))
    details = {"engagelab_message_id": envelope["message_id"]} if envelope.get("message_id") else {}
    details.update(
        {f"engagelab_{key}": data[key] for key in ("task_id", "api_user", "label_id") if data.get(key) is not None}
    )
    return {
        "raw": dict(envelope),
        "occurred_at": from_epoch(envelope.get("itime")),
        "subtask_id": _id_text(custom_args.get("subtask_id")),
        "task_id": _id_text(custom_args.get("task_id")),
        "details": details,
    }


def _status_events(envelope: Mapping[str, Any], status: Mapping[str, Any]) -> list[NormalizedEvent]:
    name = str(status.get("message_status") or "status")  # a nameless status still parses, as unknown
    data = _mapping(status.get("status_data"))
    common = _common(envelope, data)
    if name == "target":
        return _target_events(envelope, data, common)
    email_id = _id_text(data.get("email_id")) or _first(data.get("email_ids"))
    event_type = _STATUS_EVENTS.get(name, EventType.UNKNOWN)
    reason = text_or_none(data.get("message")) or text_or_none(_first_of(data, _SUB_STAT_DESC_KEYS))
    bounce_class: BounceClass | None = None
    if event_type in (EventType.HARD_BOUNCED, EventType.SOFT_BOUNCED):
        event_type, bounce_class = _bounce(event_type, data, common["details"])
    smtp_code, enhanced_code = smtp_codes(data.get("message"))
    return [
        NormalizedEvent(
            event_type=event_type,
            provider_event=name,
            provider_message_id=email_id,
            recipient=_recipient(envelope.get("to"), email_id),
            bounce_class=bounce_class,
            smtp_code=smtp_code,
            enhanced_code=enhanced_code,
            reason=reason,
            **common,
        )
    ]


def _target_events(
    envelope: Mapping[str, Any], data: Mapping[str, Any], common: dict[str, Any]
) -> list[NormalizedEvent]:
    """`target` lists every recipient of the request: one accepted event per email id (or address)."""
    email_ids = [_id_text(item) for item in _listed(data.get("email_ids")) if _id_text(item)]
    tos = [str(item) for item in _listed(data.get("tos")) if item]
    pairs: list[tuple[str | None, str | None]]
    if email_ids:
        pairs = [(email_id, tos[i] if len(tos) == len(email_ids) else None) for i, email_id in enumerate(email_ids)]
    else:
        pairs = [(None, to) for to in tos] or [(None, None)]
    reason = text_or_none(data.get("message"))
    return [
        NormalizedEvent(
            event_type=EventType.ACCEPTED,
            provider_event="target",
            provider_message_id=email_id,
            recipient=_recipient(to or envelope.get("to"), email_id),
            reason=reason,
            **common,
        )
        for email_id, to in pairs
    ]


def _listed(value: Any) -> list[Any]:
    """A list field as a list: a lone value is one item, anything else (a number, an object) none."""
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, str) and value else []


def _bounce(event_type: EventType, data: Mapping[str, Any], details: dict[str, Any]) -> tuple[EventType, BounceClass]:
    """Refine a bounce by its sub-code (key unverified: `sub_stat` in our samples), kept in details."""
    sub_stat = _as_int(_first_of(data, _SUB_STAT_KEYS))
    description = _first_of(data, _SUB_STAT_DESC_KEYS)
    if sub_stat is not None:
        details["sub_stat"] = sub_stat
    if description is not None:
        details["sub_stat_desc"] = str(description)
    if event_type is EventType.SOFT_BOUNCED:
        return event_type, _SOFT_SUB_STATS.get(sub_stat or 0, BounceClass.SOFT)
    return _INVALID_SUB_STATS.get(sub_stat or 0, (EventType.HARD_BOUNCED, BounceClass.HARD))


def _response_event(envelope: Mapping[str, Any], response: Mapping[str, Any]) -> NormalizedEvent:
    name = str(response.get("event") or "response")
    data = _mapping(response.get("response_data"))
    common = _common(envelope, data)
    email_id = _id_text(data.get("email_id"))
    event_type = _RESPONSE_EVENTS.get(name, EventType.UNKNOWN)
    if event_type is EventType.REPLIED:
        return _reply_event(envelope, data, email_id, common)
    return NormalizedEvent(
        event_type=event_type,
        provider_event=name,
        provider_message_id=email_id,
        recipient=_recipient(envelope.get("to"), email_id),
        url=text_or_none(data.get("url"), 2000),
        ip=text_or_none(data.get("ip")),
        user_agent=text_or_none(data.get("user_agent")),
        reason=text_or_none(data.get("reason") or data.get("message")),
        **common,
    )


def _reply_event(
    envelope: Mapping[str, Any], data: Mapping[str, Any], email_id: str | None, common: dict[str, Any]
) -> NormalizedEvent:
    """An inbound reply (Inbound Route). No custom_args are expected: a reply is matched by its headers
    (docs/overview.md#conversations-replies)."""
    sender = _address(data.get("from")) or _address(_mapping(data.get("headers")).get("From"))
    details = common["details"]
    details.update(
        {
            key: text_or_none(data.get(key), 1000)
            for key in ("from_name", "subject", "reference", "raw_message_url")
            if data.get(key)
        }
    )
    if sender:
        details["from"] = sender
    if envelope.get("to"):
        details["to"] = str(envelope["to"])
    details.update(_threading_headers(data.get("raw_message")))
    return NormalizedEvent(
        event_type=EventType.REPLIED, provider_event="route", provider_message_id=email_id, recipient=sender, **common
    )


def _threading_headers(raw_message: Any) -> dict[str, str]:
    """In-Reply-To / References of the reply's MIME, for matching it to our send
    (docs/overview.md#conversations-replies)."""
    if not isinstance(raw_message, str) or not raw_message:
        return {}
    headers = email.parser.HeaderParser().parsestr(raw_message, headersonly=True)
    found = {"in_reply_to": headers.get("In-Reply-To"), "references": headers.get("References")}
    return {key: " ".join(str(value).split()) for key, value in found.items() if value}


def _custom_args(value: Any) -> dict[str, Any]:
    """Top-level custom_args: an object, or (tolerated) the same object as a JSON string."""
    if isinstance(value, (str, bytes)) and value:
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def _recipient(to: Any, email_id: str | None) -> str | None:
    """The recipient address: the envelope's `to`, else the part after "$" of the per-recipient email id."""
    address = _address(to)
    if address:
        return address
    if email_id and "$" in email_id:
        return email_id.rsplit("$", 1)[1] or None
    return None


def _address(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    address = email.utils.parseaddr(value)[1]
    return address if address and "@" in address else None


def smtp_codes(message: Any) -> tuple[int | None, str | None]:
    """SMTP reply code and enhanced status code at the start of a remote server's answer, if any."""
    if not isinstance(message, str):
        return None, None
    code = _SMTP_CODE_RE.match(message)
    enhanced = _ENHANCED_CODE_RE.search(message)
    return (int(code.group(1)) if code else None), (enhanced.group(1) if enhanced else None)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _id_text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


def _first(values: Any) -> str | None:
    return _id_text(values[0]) if isinstance(values, list) and values else None


def _first_of(data: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if data.get(key) not in (None, ""):
            return data[key]
    return None
