"""Amazon SES v2: sending over the plain HTTP API (SigV4, no SDK) and events through SNS.

Service configuration
---------------------
credentials  {"access_key_id": "AKIA…", "secret_access_key": "…", "session_token": "…" (optional, STS)}
options      {"region": "eu-west-1" (required: the endpoint and the signature scope),
              "configuration_set": "edm-events" (ConfigurationSetName; its event destination publishes to
                                                 SNS, and it must have open/click tracking off),
              "base_url": "https://…" (optional, tests / VPC endpoints),
              "sns_topic_arns": ["arn:aws:sns:…"] (webhooks: the topics we accept events from)}

Sending
-------
`POST https://email.<region>.amazonaws.com/v2/email/outbound-emails`, JSON, signed with SigV4 (service
`ses`) by `httpx_auth.AWS4Auth`. One message per call (SES has no per-recipient batching for `Simple`
content). Our ids travel as `EmailTags` (`subtask_id`, `task_id`: they come back as `mail.tags.<name>[0]` in
the event-publishing format) and as the `X-EDM-SubTask-Id` header (it comes back in `mail.headers`, also
in the legacy notification format, which carries no tags). SES overwrites `Message-ID` and `Date`, so we do
not send them: replies to SES mail reference SES's own Message-ID (`<MessageId@<region>.amazonses.com>`).

Errors come as `x-amzn-ErrorType: <Name>:<url>` and/or a JSON body with `__type`/`code` and `message`;
`_ERROR_CLASSES` maps the names onto the classes of docs/providers.md#how-answers-are-classified (unknown names fall
back to the HTTP status).

Webhooks (SNS)
--------------
No shared secret (`needs_secret = False`): the SNS message is verified with its RSA signature (v1 SHA1,
v2 SHA256) against the certificate at `SigningCertURL`, fetched through `ctx.fetch` only when it is
`https://sns.<region>.amazonaws.com[.cn]/….pem`, and the `TopicArn` must be listed in the service's
`options["sns_topic_arns"]` (an empty list verifies nothing). Parsed certificates are cached per URL.

`SubscriptionConfirmation` → control message with `confirm_url` (the pipeline GETs it after verifying);
`UnsubscribeConfirmation` and SES's `AmazonSnsSubscriptionSucceeded` test message → control messages.
`Notification` → the SES event in `Message` (a JSON string), in the event-publishing format (`eventType`,
configuration sets) or the legacy identity-notification format (`notificationType`). Bounce, Complaint,
Delivery and DeliveryDelay list recipients: one event per recipient. SES receiving (`Received`) posted here becomes
one `replied` event with the receipt facts in `details` and the Message as `raw`; the event pipeline hands its mail
to conversations through `ses_inbound.SesInbound.event_mails` rather than storing it (docs/events.md#endpoints).
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import email.utils
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx
import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature as BadRsaSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from httpx_auth import AWS4Auth

from edm.providers.base import Capabilities, OutboundMessage, Outcome, SendResult, ServiceConfig
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
    from_iso,
    parse_json,
    same,
    text_or_none,
)
from edm.vocabulary.events import BounceClass, EventType, NormalizedEvent

SEND_PATH = "/v2/email/outbound-emails"
SIGNING_SERVICE = "ses"
SUBTASK_HEADER = "X-EDM-SubTask-Id"

# AWS region names: us-east-1, eu-central-2, us-gov-west-1, ap-southeast-5 …
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
# EmailTags names and values: ASCII letters, digits, "_" and "-" only, ≤ 256 characters.
_TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# SES rewrites these (Message-ID, Date) or builds them from the request fields: never sent as Headers.
_RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "return-path",
        "sender",
    }
)

_ERROR_CLASSES: Mapping[str, Outcome] = {
    # rate: "Maximum sending rate exceeded"
    "TooManyRequestsException": Outcome.THROTTLED,
    "ThrottlingException": Outcome.THROTTLED,
    "Throttling": Outcome.THROTTLED,
    # "Daily message quota exceeded"
    "LimitExceededException": Outcome.QUOTA_EXHAUSTED,
    # the account, the identity or the configuration set: an admin has to act
    "MailFromDomainNotVerifiedException": Outcome.AUTH_CONFIG,
    "AccountSuspendedException": Outcome.AUTH_CONFIG,
    "SendingPausedException": Outcome.AUTH_CONFIG,
    "NotFoundException": Outcome.AUTH_CONFIG,
    # SigV4 / IAM answers (HTTP 403)
    "UnrecognizedClientException": Outcome.AUTH_CONFIG,
    "InvalidSignatureException": Outcome.AUTH_CONFIG,
    "SignatureDoesNotMatch": Outcome.AUTH_CONFIG,
    "IncompleteSignatureException": Outcome.AUTH_CONFIG,
    "MissingAuthenticationTokenException": Outcome.AUTH_CONFIG,
    "InvalidClientTokenId": Outcome.AUTH_CONFIG,
    "ExpiredTokenException": Outcome.AUTH_CONFIG,
    "AccessDeniedException": Outcome.AUTH_CONFIG,
    # this message
    "MessageRejected": Outcome.PERMANENT,
    "BadRequestException": Outcome.PERMANENT,
    # AWS side
    "InternalFailure": Outcome.TRANSIENT,
    "InternalServiceErrorException": Outcome.TRANSIENT,
    "ServiceUnavailable": Outcome.TRANSIENT,
    "ServiceUnavailableException": Outcome.TRANSIENT,
}


# ========================================================================================================
# Sending
# ========================================================================================================


class SesAdapter(HttpAdapter):
    provider: ClassVar[str] = "ses"
    capabilities: ClassVar[Capabilities] = Capabilities(needs_mime=False, max_batch=1)
    required_credentials: ClassVar[tuple[str, ...]] = ("access_key_id", "secret_access_key")

    def __init__(self, config: ServiceConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.region = region_of(config.options)
        self._signer = _signer(config.credentials, self.region)
        super().__init__(config, transport=transport)

    @classmethod
    def resolve_base_url(cls, options: Mapping[str, Any]) -> str:
        explicit = options.get("base_url")
        if explicit:
            return str(explicit).rstrip("/")
        return f"https://email.{region_of(options)}.amazonaws.com"

    def default_headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def build_request(self, client: httpx.AsyncClient, messages: Sequence[OutboundMessage]) -> httpx.Request:
        if len(messages) != 1:
            raise ValueError(f"ses sends one message per call, got {len(messages)}")
        request = client.build_request("POST", SEND_PATH, json=self.payload(messages[0]))
        assert self._signer is not None  # send() checked
        # The signature covers the body hash and x-amz-date, so sign the finished request right before it goes.
        return next(self._signer.auth_flow(request))

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        simple: dict[str, Any] = {
            "Subject": _content(_one_line(message.subject)),
            "Body": _body(message),
        }
        headers = _headers(message)
        if headers:
            simple["Headers"] = headers
        body: dict[str, Any] = {
            "FromEmailAddress": mailbox(message.from_name, message.from_address),
            "Destination": {"ToAddresses": [mailbox(message.to_name, message.to_address)]},
            "Content": {"Simple": simple},
        }
        if message.reply_to:
            body["ReplyToAddresses"] = [ascii_address(message.reply_to)]
        tags = _email_tags(message.custom_args)
        if tags:
            body["EmailTags"] = tags
        configuration_set = self.config.options.get("configuration_set")
        if configuration_set:
            body["ConfigurationSetName"] = str(configuration_set)
        return body

    def parse_response(
        self, messages: Sequence[OutboundMessage], response: httpx.Response, latency_ms: int
    ) -> list[SendResult]:
        message = messages[0]
        status = response.status_code
        if 200 <= status < 300:
            message_id = response.json()["MessageId"]
            if not isinstance(message_id, str) or not message_id:
                raise ValueError("no MessageId in the answer")
            return [accepted(message, message_id, status=status, latency_ms=latency_ms)]
        name, text = error_of(response)
        outcome = _ERROR_CLASSES.get(name) or classify_status(status)
        if status >= 500:  # whatever the name says, a 5xx is AWS's side
            outcome = Outcome.TRANSIENT
        retry_after = retry_after_seconds(response) if outcome is Outcome.THROTTLED else None
        return [
            failure(
                message,
                outcome,
                name or str(status),
                f"ses {name or 'error'}: {text}".strip(),
                status=status,
                retry_after=retry_after,
                latency_ms=latency_ms,
            )
        ]


def region_of(options: Mapping[str, Any]) -> str:
    region = str(options.get("region") or "").strip()
    if not _REGION_RE.match(region):
        raise ValueError(f"ses: options.region must be an AWS region such as 'eu-west-1', got {region!r}")
    return region


def _signer(credentials: Mapping[str, Any], region: str) -> AWS4Auth | None:
    key_id = str(credentials.get("access_key_id") or "")
    secret = str(credentials.get("secret_access_key") or "")
    if not key_id or not secret:
        return None
    token = credentials.get("session_token")
    extra = {"security_token": str(token)} if token else {}
    return AWS4Auth(key_id, secret, region, SIGNING_SERVICE, **extra)


def error_of(response: httpx.Response) -> tuple[str, str]:
    """(error name, message) from `x-amzn-ErrorType` ("Name:http://…") or the JSON body (`__type`, `code`)."""
    body = json_or_none(response)
    body = body if isinstance(body, dict) else {}
    name = response.headers.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    if not name:
        name = str(body.get("__type") or body.get("code") or body.get("Code") or "")
    name = name.rsplit("#", 1)[-1]  # "com.amazonaws.ses#MessageRejected"
    text = body.get("message") or body.get("Message") or ""
    return name, str(text)


def mailbox(name: str, address: str) -> str:
    """`"Name" <addr>` with a non-ASCII name RFC 2047 encoded (SES wants ASCII headers) and an IDNA domain."""
    return email.utils.formataddr((_one_line(name), ascii_address(address)), charset="utf-8")


def ascii_address(address: str) -> str:
    """SES takes ASCII addresses only: the domain is IDNA-encoded; a non-ASCII local part cannot be sent."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local:
        raise ValueError(f"not an email address: {address!r}")
    if not local.isascii():
        raise ValueError("ses cannot send to or from a non-ASCII local part")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"invalid domain in {address!r}") from exc
    return f"{local}@{domain}"


def _one_line(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def _content(text: str) -> dict[str, str]:
    return {"Data": text, "Charset": "UTF-8"}


def _body(message: OutboundMessage) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if message.text:
        body["Text"] = _content(message.text)
    if message.html:
        body["Html"] = _content(message.html)
    if not body:
        raise ValueError("the message has neither a text nor an HTML body")
    return body


def _headers(message: OutboundMessage) -> list[dict[str, str]]:
    """Our headers (X-EDM-SubTask-Id, List-Unsubscribe, List-Unsubscribe-Post, Feedback-ID, In-Reply-To…)."""
    return [
        {"Name": name, "Value": _one_line(value)}
        for name, value in message.headers.items()
        if name.lower() not in _RESERVED_HEADERS and value
    ]


def _email_tags(custom_args: Mapping[str, str]) -> list[dict[str, str]]:
    # A value SES would refuse is left out rather than failing the send: the header still carries our id.
    return [
        {"Name": name, "Value": str(value)}
        for name, value in custom_args.items()
        if _TAG_RE.match(name) and _TAG_RE.match(str(value))
    ]


# ========================================================================================================
# SNS verification
# ========================================================================================================

_CERT_HOST_RE = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SUBSCRIPTION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_SIGNED_FIELDS = {
    "Notification": _NOTIFICATION_FIELDS,
    "SubscriptionConfirmation": _SUBSCRIPTION_FIELDS,
    "UnsubscribeConfirmation": _SUBSCRIPTION_FIELDS,
}
_OPTIONAL_FIELDS = frozenset({"Subject"})
_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# Parsed signing certificates by URL. SNS rotates them rarely; the bound keeps a flood of distinct (valid
# host) URLs from growing memory.
CERT_CACHE_SIZE = 16
_CERT_CACHE: collections.OrderedDict[str, x509.Certificate] = collections.OrderedDict()


def sns_url_ok(url: Any, *, suffix: str = "") -> bool:
    """https on `sns.<region>.amazonaws.com[.cn]` (exact host, no port, no credentials) and path ending `suffix`."""
    if not isinstance(url, str):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and port is None
        and not parts.username
        and not parts.password
        and bool(_CERT_HOST_RE.match(parts.hostname or ""))
        and parts.netloc == parts.hostname
        and parts.path.endswith(suffix)
    )


def string_to_sign(message: Mapping[str, Any]) -> bytes | None:
    """The canonical `key\\nvalue\\n` string SNS signs, or None when a field it needs is missing."""
    fields = _SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        return None
    lines: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            return None
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


def topic_allowed(topic_arn: Any, target: WebhookTarget) -> bool:
    allowed = target.options.get("sns_topic_arns") or ()
    if isinstance(allowed, str):
        allowed = (allowed,)
    if not isinstance(topic_arn, str) or not topic_arn:
        return False
    matched = False
    for arn in allowed:
        matched |= isinstance(arn, str) and same(arn, topic_arn)
    return matched


async def signing_certificate(url: str, ctx: VerifyContext) -> x509.Certificate:
    cached = _CERT_CACHE.get(url)
    if cached is not None:
        _CERT_CACHE.move_to_end(url)
        return cached
    certificate = x509.load_pem_x509_certificate(await ctx.fetch(url))
    _CERT_CACHE[url] = certificate
    while len(_CERT_CACHE) > CERT_CACHE_SIZE:
        _CERT_CACHE.popitem(last=False)
    return certificate


def clear_certificate_cache() -> None:
    _CERT_CACHE.clear()


def signature_valid(
    certificate: x509.Certificate, signature: bytes, signed: bytes, algorithm: hashes.HashAlgorithm, now: dt.datetime
) -> bool:
    if not (certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc):
        return False
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm)
    except BadRsaSignature:
        return False
    return True


# ========================================================================================================
# SES event parsing
# ========================================================================================================

_SUPPRESSED_SUBTYPES = frozenset({"Suppressed", "OnAccountSuppressionList", "UnsubscribedRecipient"})
_BLOCKING_SUBTYPES = frozenset({"ContentRejected", "AttachmentRejected"})
_SMTP_CODE_RE = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")
_ENHANCED_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class _Context:
    """What every event of one SNS notification shares."""

    def __init__(self, envelope: Mapping[str, Any], message: Mapping[str, Any], kind: str) -> None:
        mail = _dict(message.get("mail"))
        self.kind = kind
        self.message = message
        self.mail = mail
        self.sns_message_id = _str(envelope.get("MessageId"))
        self.sent_at = from_iso(mail.get("timestamp"))
        self.published_at = from_iso(envelope.get("Timestamp"))
        self.subtask_id = _tag(mail, "subtask_id") or _header(mail, SUBTASK_HEADER)
        self.task_id = _tag(mail, "task_id") or _task_from_feedback_id(_header(mail, "Feedback-ID"))
        self.details = {
            k: v
            for k, v in (("sns_message_id", self.sns_message_id), ("topic_arn", _str(envelope.get("TopicArn"))))
            if v
        }

    @property
    def destination(self) -> list[str]:
        return [d for d in _list(self.mail.get("destination")) if isinstance(d, str)]

    @property
    def only_destination(self) -> str | None:
        destination = self.destination
        return destination[0] if len(destination) == 1 else None

    def event(
        self,
        event_type: EventType,
        *,
        at: Any = None,
        recipient: str | None = None,
        several: bool = False,
        **fields: Any,
    ) -> NormalizedEvent:
        event_id = self.sns_message_id
        if several and event_id and recipient:  # one SNS message, several recipients: one key each
            event_id = f"{event_id}:{recipient}"
        details = {**self.details, **fields.pop("details", {})}
        return NormalizedEvent(
            event_type=event_type,
            provider_event=self.kind,
            raw=dict(self.message),
            occurred_at=from_iso(at) or self.sent_at or self.published_at,
            subtask_id=self.subtask_id,
            task_id=self.task_id,
            provider_message_id=_str(self.mail.get("messageId")),
            provider_event_id=event_id,
            recipient=recipient,
            details=details,
            **fields,
        )


def _send(c: _Context, _: Mapping[str, Any]) -> list[NormalizedEvent]:
    return [c.event(EventType.ACCEPTED, at=c.mail.get("timestamp"), recipient=c.only_destination)]


def _delivery(c: _Context, delivery: Mapping[str, Any]) -> list[NormalizedEvent]:
    response = _str(delivery.get("smtpResponse"))
    recipients = [r for r in _list(delivery.get("recipients")) if isinstance(r, str)] or c.destination
    several = len(recipients) > 1
    return [
        c.event(
            EventType.DELIVERED,
            at=delivery.get("timestamp"),
            recipient=r,
            several=several,
            smtp_code=_smtp_code(response),
            enhanced_code=_enhanced(response),
            reason=text_or_none(response),
            details=_pick(delivery, "reportingMTA", "processingTimeMillis", "remoteMtaIp"),
        )
        for r in recipients
    ]


def bounce_outcome(bounce_type: str, sub_type: str) -> tuple[EventType, BounceClass]:
    """SES bounceType/bounceSubType → (event type, bounce class).

    Suppressed / OnAccountSuppressionList / UnsubscribedRecipient: SES never tried the address (its own
    suppression list), so it is a rejection of a provider-suppressed address, which suppresses it here too
    (docs/suppression.md#what-is-added-automatically-the-bounce-policy). Undetermined: no reason given; treated as soft
    so one unexplained bounce does not suppress.
    """
    if bounce_type == "Permanent":
        if sub_type in _SUPPRESSED_SUBTYPES:
            return EventType.REJECTED, BounceClass.SUPPRESSED
        return EventType.HARD_BOUNCED, BounceClass.HARD
    if bounce_type == "Transient":
        if sub_type in _BLOCKING_SUBTYPES:
            return EventType.SOFT_BOUNCED, BounceClass.BLOCK
        return EventType.SOFT_BOUNCED, BounceClass.SOFT
    return EventType.SOFT_BOUNCED, BounceClass.UNDETERMINED


def _bounce(c: _Context, bounce: Mapping[str, Any]) -> list[NormalizedEvent]:
    bounce_type, sub_type = _str(bounce.get("bounceType")) or "", _str(bounce.get("bounceSubType")) or ""
    event_type, bounce_class = bounce_outcome(bounce_type, sub_type)
    recipients = [r for r in _list(bounce.get("bouncedRecipients")) if isinstance(r, dict)]
    several = len(recipients) > 1
    details = {
        "bounce_type": bounce_type,
        "bounce_sub_type": sub_type,
        **_pick(bounce, "feedbackId", "reportingMTA", "remoteMtaIp"),
    }
    events = []
    for item in recipients:
        diagnostic = _str(item.get("diagnosticCode"))
        events.append(
            c.event(
                event_type,
                at=bounce.get("timestamp"),
                recipient=_str(item.get("emailAddress")),
                several=several,
                bounce_class=bounce_class,
                smtp_code=_smtp_code(diagnostic),
                enhanced_code=_str(item.get("status")) or _enhanced(diagnostic),
                reason=text_or_none(diagnostic) or text_or_none(f"{bounce_type} {sub_type}"),
                details={**details, **_pick(item, "action")},
            )
        )
    return events


def _complaint(c: _Context, complaint: Mapping[str, Any]) -> list[NormalizedEvent]:
    feedback_type = _str(complaint.get("complaintFeedbackType"))
    sub_type = _str(complaint.get("complaintSubType"))
    # OnAccountSuppressionList: SES did not send at all (an earlier complaint suppressed the address).
    if sub_type == "OnAccountSuppressionList":
        event_type, bounce_class = EventType.REJECTED, BounceClass.SUPPRESSED
    elif feedback_type == "not-spam":  # the recipient withdrew a spam verdict: no complaint
        event_type, bounce_class = EventType.UNKNOWN, None
    else:
        event_type, bounce_class = EventType.COMPLAINED, None
    recipients = [r for r in _list(complaint.get("complainedRecipients")) if isinstance(r, dict)]
    several = len(recipients) > 1
    details = _pick(complaint, "feedbackId", "userAgent", "arrivalDate", "complaintSubType")
    return [
        c.event(
            event_type,
            at=complaint.get("timestamp"),
            recipient=_str(item.get("emailAddress")),
            several=several,
            bounce_class=bounce_class,
            reason=text_or_none(feedback_type),
            details=details,
        )
        for item in recipients
    ]


def _delivery_delay(c: _Context, delay: Mapping[str, Any]) -> list[NormalizedEvent]:
    recipients = [r for r in _list(delay.get("delayedRecipients")) if isinstance(r, dict)]
    several = len(recipients) > 1
    delay_type = _str(delay.get("delayType"))
    details = _pick(delay, "delayType", "expirationTime", "reportingMTA")
    events = []
    for item in recipients:
        diagnostic = _str(item.get("diagnosticCode"))
        events.append(
            c.event(
                EventType.DEFERRED,
                at=delay.get("timestamp"),
                recipient=_str(item.get("emailAddress")),
                several=several,
                smtp_code=_smtp_code(diagnostic),
                enhanced_code=_str(item.get("status")) or _enhanced(diagnostic),
                reason=text_or_none(diagnostic) or text_or_none(delay_type),
                details=details,
            )
        )
    return events


def _reject(c: _Context, reject: Mapping[str, Any]) -> list[NormalizedEvent]:
    # SES refused the message itself (virus, content): a block, never the address's fault.
    return [
        c.event(
            EventType.REJECTED,
            at=c.mail.get("timestamp"),
            recipient=c.only_destination,
            bounce_class=BounceClass.BLOCK,
            reason=text_or_none(reject.get("reason")),
        )
    ]


def _rendering_failure(c: _Context, failure_: Mapping[str, Any]) -> list[NormalizedEvent]:
    # A template error on SES's side (we send Simple content, so it should not happen): never sent, and not
    # the recipient's fault, hence a block.
    return [
        c.event(
            EventType.REJECTED,
            recipient=c.only_destination,
            bounce_class=BounceClass.BLOCK,
            reason=text_or_none(failure_.get("errorMessage")),
            details=_pick(failure_, "templateName"),
        )
    ]


def _open(c: _Context, opened: Mapping[str, Any]) -> list[NormalizedEvent]:
    return [
        c.event(
            EventType.OPENED,
            at=opened.get("timestamp"),
            recipient=c.only_destination,
            ip=_str(opened.get("ipAddress")),
            user_agent=_str(opened.get("userAgent")),
        )
    ]


def _click(c: _Context, click: Mapping[str, Any]) -> list[NormalizedEvent]:
    return [
        c.event(
            EventType.CLICKED,
            at=click.get("timestamp"),
            recipient=c.only_destination,
            url=_str(click.get("link")),
            ip=_str(click.get("ipAddress")),
            user_agent=_str(click.get("userAgent")),
            details=_pick(click, "linkTags"),
        )
    ]


def _subscription(c: _Context, subscription: Mapping[str, Any]) -> list[NormalizedEvent]:
    """SES list management: an unsubscribe from all topics or from any topic counts as unsubscribed."""
    preferences = _dict(subscription.get("newTopicPreferences"))
    topics = [t for t in _list(preferences.get("topicSubscriptionStatus")) if isinstance(t, dict)]
    opted_out = preferences.get("unsubscribeAll") is True or any(
        t.get("subscriptionStatus") == "OptOut" for t in topics
    )
    return [
        c.event(
            EventType.UNSUBSCRIBED if opted_out else EventType.UNKNOWN,
            at=subscription.get("timestamp"),
            recipient=c.only_destination,
            details=_pick(subscription, "contactList", "source", "newTopicPreferences"),
        )
    ]


def _received(c: _Context, receipt: Mapping[str, Any]) -> list[NormalizedEvent]:
    """SES receiving: a `replied` event without SubTask or message ids (threading reads the MIME message, in
    `content` or in S3); its mail goes to conversations (`ses_inbound.SesInbound.event_mails`)."""
    common = _dict(c.mail.get("commonHeaders"))
    action = _dict(receipt.get("action"))
    details = {
        "inbound": True,
        "source": c.mail.get("source"),
        "destination": c.mail.get("destination"),
        "receipt_recipients": receipt.get("recipients"),
        "subject": common.get("subject"),
        "header_message_id": common.get("messageId"),
        "ses_message_id": c.mail.get("messageId"),
        "action": _pick(action, "type", "bucketName", "objectKey", "topicArn"),
        "spam_verdict": _dict(receipt.get("spamVerdict")).get("status"),
        "has_content": isinstance(c.message.get("content"), str),
    }
    event = NormalizedEvent(
        event_type=EventType.REPLIED,
        provider_event=c.kind,
        raw=dict(c.message),
        occurred_at=from_iso(receipt.get("timestamp")) or c.sent_at or c.published_at,
        provider_event_id=c.sns_message_id,
        details={**c.details, **{k: v for k, v in details.items() if v is not None}},
    )
    return [event]


# event name -> (key of its detail object, handler)
_EVENT_HANDLERS = {
    "Send": ("send", _send),
    "Delivery": ("delivery", _delivery),
    "Bounce": ("bounce", _bounce),
    "Complaint": ("complaint", _complaint),
    "DeliveryDelay": ("deliveryDelay", _delivery_delay),
    "Reject": ("reject", _reject),
    "Rendering Failure": ("failure", _rendering_failure),
    "Open": ("open", _open),
    "Click": ("click", _click),
    "Subscription": ("subscription", _subscription),
    "Received": ("receipt", _received),
}


def ses_events(envelope: Mapping[str, Any], message: Mapping[str, Any]) -> list[NormalizedEvent]:
    kind = _str(message.get("eventType")) or _str(message.get("notificationType")) or ""
    context = _Context(envelope, message, kind)
    known = _EVENT_HANDLERS.get(kind)
    if known is None:
        return [context.event(EventType.UNKNOWN, recipient=context.only_destination)]
    detail_key, handler = known
    events = handler(context, _dict(message.get(detail_key)))
    # A recipient array that came empty still leaves a trace rather than silently dropping the event.
    return events or [context.event(EventType.UNKNOWN, recipient=context.only_destination)]


# ========================================================================================================
# The handler
# ========================================================================================================


class SesWebhook:
    provider: ClassVar[str] = "ses"
    needs_secret: ClassVar[bool] = False

    async def verify(self, request: WebhookRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        try:
            envelope = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(envelope, dict) or not topic_allowed(envelope.get("TopicArn"), target):
            return False
        algorithm = _HASHES.get(str(envelope.get("SignatureVersion")))
        signed = string_to_sign(envelope)
        url = envelope.get("SigningCertURL")
        if algorithm is None or signed is None or not sns_url_ok(url, suffix=".pem"):
            return False
        try:
            signature = base64.b64decode(str(envelope.get("Signature") or ""), validate=True)
        except (binascii.Error, ValueError):
            return False
        try:
            certificate = await signing_certificate(str(url), ctx)
        except Exception:  # fetch failed (network, 404) or not a PEM certificate: unverifiable; SNS retries
            return False
        return signature_valid(certificate, signature, signed, algorithm(), ctx.now)

    def replay_nonce(self, request: WebhookRequest) -> str | None:
        return None  # SNS redelivers with the same MessageId on purpose: dedupe, not replay refusal, handles it

    def parse(self, request: WebhookRequest) -> ParsedPayload:
        envelope = parse_json(request, content_types=("text/plain", "application/json"))
        if not isinstance(envelope, dict):
            raise MalformedPayload("an SNS message is a JSON object")
        kind = envelope.get("Type")
        if kind == "SubscriptionConfirmation":
            url = envelope.get("SubscribeURL")
            if not sns_url_ok(url):
                raise MalformedPayload("SubscribeURL is not an https URL on sns.<region>.amazonaws.com")
            return ParsedPayload(control="subscription_confirmation", confirm_url=str(url))
        if kind == "UnsubscribeConfirmation":
            return ParsedPayload(control="unsubscribe_confirmation")
        if kind != "Notification":
            raise MalformedPayload(f"unknown SNS message type {kind!r}")
        message = _decode_message(envelope.get("Message"))
        if message.get("notificationType") == "AmazonSnsSubscriptionSucceeded":
            return ParsedPayload(control="ses_subscription_succeeded")  # SES's test message on setup
        if not (message.get("eventType") or message.get("notificationType")):
            raise MalformedPayload("the SNS Message is not an SES event (no eventType/notificationType)")
        return ParsedPayload(items=list(ses_events(envelope, message)))


def _decode_message(value: Any) -> dict[str, Any]:
    if not isinstance(value, str):
        raise MalformedPayload("the SNS Notification has no Message string")
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise MalformedPayload("the SNS Message is not JSON") from None
    if not isinstance(message, dict):
        raise MalformedPayload("the SNS Message is not a JSON object")
    return message


webhook = SesWebhook()


# ========================================================================================================
# Small helpers
# ========================================================================================================


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _pick(source: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {name: source[name] for name in names if source.get(name) is not None}


def _tag(mail: Mapping[str, Any], name: str) -> str | None:
    values = _dict(mail.get("tags")).get(name)
    if isinstance(values, list) and values:
        return _str(values[0])
    return _str(values)


def _header(mail: Mapping[str, Any], name: str) -> str | None:
    wanted = name.lower()
    for header in _list(mail.get("headers")):
        if isinstance(header, dict) and str(header.get("name", "")).lower() == wanted:
            return _str(str(header.get("value") or "").strip())
    return None


def _task_from_feedback_id(value: str | None) -> str | None:
    """Feedback-ID is `<task id>:<user id>:edm` (docs/sending.md#the-message)."""
    if not value:
        return None
    parts = value.split(":")
    return parts[0] if len(parts) == 3 and parts[2] == "edm" and parts[0] else None


def _smtp_code(text: str | None) -> int | None:
    match = _SMTP_CODE_RE.search(text or "")
    return int(match.group(1)) if match else None


def _enhanced(text: str | None) -> str | None:
    match = _ENHANCED_RE.search(text or "")
    return match.group(1) if match else None
