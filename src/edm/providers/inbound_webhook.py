"""The inbound side of the provider contract: a provider's inbound webhook request → verified → `InboundMail`s
(docs/providers.md#inbound-mail-replies-through-a-provider).

A provider module `<provider>_inbound.py` exposes one `InboundHandler`. Like the event handlers of
`providers/webhook.py` they are pure: no database, no network (except the SNS certificate `fetch` the pipeline
lends them). The pipeline (`edm.api.inbound_webhooks`) reads the body (at most `EDM_INBOUND_MAX_BYTES`), finds the
candidate services and their secrets, calls `verify` per service until one succeeds, calls `parse`, and hands each
`InboundMail` to conversations.

Every mail leaves here as raw RFC 5322 bytes. Where the provider posts the raw message (SendGrid's "POST the raw,
full MIME message", Mailgun's `body-mime`, SES's SNS action, Postmark's `RawEmail`) those bytes are handed over
untouched; where it posts parsed fields, `rebuild` makes one MIME message of them: the provider's headers (so
Message-ID, In-Reply-To and References survive), the text and HTML bodies, and the attachments as parts. Each
message is at most `InboundLimits.message_max_bytes` (`EDM_INBOUND_MESSAGE_MAX_BYTES`): a larger one is refused
with 413 before anything is stored, never truncated.

This module also holds the two parsers of request bodies the inbound webhooks need and `providers/webhook.py`
does not: `multipart/form-data` (SendGrid, Mailgun with attachments) and `application/x-www-form-urlencoded`
(Mailgun without).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.policy
import quopri
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import cached_property
from typing import Any, ClassVar, Protocol

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from edm.providers.inbound import InboundMail
from edm.providers.webhook import (
    MalformedPayload,
    VerifyContext,
    WebhookError,
    WebhookRequest,
    WebhookTarget,
    basic_or_token_matches,
)
from edm.vocabulary.events import NormalizedEvent

MAX_FORM_PARTS = 1000  # fields and files of one multipart or urlencoded body
MAX_RECIPIENTS = 50  # envelope recipients of one message: one InboundMail each
MAX_ITEMS = 100  # messages in one request (Brevo's `items`)

# The serialization of rebuilt messages: CRLF line ends, 7-bit clean (non-ASCII headers as RFC 2047 encoded words,
# bodies as quoted-printable or base64), so the bytes are valid on any transport and parse back the same.
MIME_POLICY = email.policy.SMTP.clone(cte_type="7bit")
# Headers a rebuilt message sets itself from its parts: the provider's copies describe the original body structure.
_STRUCTURAL = frozenset({"content-type", "content-transfer-encoding", "mime-version", "content-length"})
# Marks a message EDM put together from a provider's parsed fields (the raw original was not posted).
REBUILT_HEADER = "X-EDM-Inbound-Rebuilt"


# --------------------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------------------


class MessageTooLarge(WebhookError):
    status = 413
    code = "message_too_large"


class NoContent(WebhookError):
    """A verified notification that does not carry the message (an SES receipt rule with an S3 action)."""

    status = 400
    code = "no_content"


@dataclass(frozen=True, slots=True)
class InboundLimits:
    message_max_bytes: int = 10 * 1024 * 1024


@dataclass(slots=True)
class InboundPayload:
    mails: list[InboundMail] = field(default_factory=list)
    # A provider control message that carries no mail ("subscription_confirmation", "not_inbound", ...).
    control: str | None = None
    confirm_url: str | None = None  # SNS SubscribeURL, fetched by the pipeline after verification


class InboundRequest:
    """One inbound webhook request: the raw body and what came with it, and its form fields decoded once (the
    signature of a Mailgun route lives in the form, so verification and parsing both read it)."""

    def __init__(
        self,
        body: bytes,
        headers: Mapping[str, str],
        query: Mapping[str, str] | None = None,
        *,
        service_id: int | None = None,
    ) -> None:
        self.body = body
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.query = dict(query or {})
        self.service_id = service_id  # the service the URL names, else the one whose secret verified
        self.content_type = self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @cached_property
    def webhook(self) -> WebhookRequest:
        """The same request for the event handlers' verification helpers."""
        return WebhookRequest(
            body=self.body, headers=self.headers, query=self.query, content_type=self.content_type, inbound=True
        )

    @cached_property
    def form(self) -> Form:
        """The form fields (MalformedPayload when the body is no form)."""
        return parse_form(self.body, self.headers.get("content-type", ""))

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise MalformedPayload(f"body is not valid JSON: {exc}") from None


class InboundHandler(Protocol):
    provider: ClassVar[str]
    # False when verification does not use `WebhookTarget.secrets` (SES checks certificates and topic ARNs).
    needs_secret: ClassVar[bool]

    def usable_secrets(self, target: WebhookTarget) -> tuple[str, ...]:
        """The secrets of `target` that may authenticate an inbound request (SendGrid: not its event key)."""
        ...

    async def verify(self, request: InboundRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        """True when the request is authentic for this service. Never raises for a bad or missing signature:
        returns False. Constant-time comparisons."""
        ...

    def replay_nonce(self, request: InboundRequest) -> str | None:
        """A value that must never be accepted twice (Mailgun's token), or None."""
        ...

    def parse(self, request: InboundRequest, limits: InboundLimits) -> InboundPayload:
        """The mails of the request. MalformedPayload (400) for a body that is not the provider's format, with what
        is wrong; MessageTooLarge (413) for a message above the limit."""
        ...

    def event_mails(
        self, event: NormalizedEvent, service_id: int | None, limits: InboundLimits
    ) -> list[InboundMail] | None:
        """Inbound mail the provider posted to its *event* URL (its inbound feature pointed there): the mails of
        the `replied` event the event parser made of it, read as `parse` reads them, or None when `event` is no
        such mail. Raises as `parse` does (the event pipeline keeps the event as a bad element then)."""
        ...


# --------------------------------------------------------------------------------------------------------
# Building InboundMails
# --------------------------------------------------------------------------------------------------------


def mails_for(
    raw: bytes,
    *,
    source: str,
    service_id: int | None,
    recipients: Iterable[str | None],
    sender: str | None,
    provider_message_id: str | None,
    limits: InboundLimits,
) -> list[InboundMail]:
    """One InboundMail per distinct envelope recipient (a message to two of our addresses may belong to two
    users; conversations stores it once per user and Message-ID), or one without a recipient when the provider
    names none. Refuses a message above the size limit."""
    check_size(len(raw), limits)
    distinct: list[str] = []
    for recipient in recipients:
        address = (recipient or "").strip()
        if address and address.lower() not in (known.lower() for known in distinct):
            distinct.append(address)
    if len(distinct) > MAX_RECIPIENTS:
        raise MalformedPayload(f"{len(distinct)} envelope recipients for one message (at most {MAX_RECIPIENTS})")
    sender = (sender or "").strip() or None
    return [
        InboundMail(
            raw=raw,
            source=source,
            service_id=service_id,
            recipient=recipient,
            sender=sender,
            provider_message_id=provider_message_id,
        )
        for recipient in (distinct or [None])  # type: ignore[list-item]
    ]


def check_size(size: int, limits: InboundLimits) -> None:
    if size > limits.message_max_bytes:
        raise MessageTooLarge(
            f"the message is {size} bytes, above the {limits.message_max_bytes}-byte limit for inbound mail"
        )


# --------------------------------------------------------------------------------------------------------
# Rebuilding one MIME message from a provider's parsed fields
# --------------------------------------------------------------------------------------------------------


class SecretInBasicOrToken:
    """The authentication of a provider whose inbound posts carry one of the service's webhook secrets as Basic
    credentials in the URL or as a token (Postmark, Brevo), as their event webhooks do; no replay nonce."""

    needs_secret: ClassVar[bool] = True

    def usable_secrets(self, target: WebhookTarget) -> tuple[str, ...]:
        return target.secrets

    async def verify(self, request: InboundRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        return basic_or_token_matches(request.webhook, target.secrets)

    def replay_nonce(self, request: InboundRequest) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str | None
    content_type: str
    data: bytes = b""
    content_id: str | None = None
    inline: bool = False
    # Content the provider keeps and did not post (Brevo): a message/external-body part points at it.
    external_url: str | None = None
    size: int | None = None


def rebuild(
    *,
    provider: str,
    headers: Sequence[tuple[str, str]],
    text: str | None,
    html: str | None,
    attachments: Sequence[Attachment] = (),
    defaults: Sequence[tuple[str, str | None]] = (),
    limits: InboundLimits,
) -> bytes:
    """One RFC 5322 message from a provider's parsed fields.

    `headers` are the original headers as the provider reports them, in order (Received, From, To, Subject,
    Date, Message-ID, In-Reply-To, References, ... ; encoded words or UTF-8 both work), except the ones that
    describe the original body structure, which the rebuilt message sets from its own parts. `defaults` fill in
    headers the provider reported as separate fields when `headers` lacks them (From, To, Subject, Message-ID).
    The body is text/plain and text/html as multipart/alternative, inline parts (with a Content-ID) in a
    multipart/related beside the HTML, and the other attachments in a multipart/mixed."""
    check_size(sum(len(a.data) for a in attachments) + len(text or "") + len(html or ""), limits)
    message = EmailMessage(policy=MIME_POLICY)
    present: set[str] = set()
    for name, value in headers:
        if name.lower() in _STRUCTURAL or not _header_name_ok(name):
            continue
        if _set_header(message, name, value):
            present.add(name.lower())
    for name, default in defaults:
        if default and name.lower() not in present and _set_header(message, name, default):
            present.add(name.lower())
    message[REBUILT_HEADER] = provider
    if text is not None or html is None:
        message.set_content(text or "", charset="utf-8")
    inline = [a for a in attachments if html is not None and a.inline and a.content_id and not a.external_url]
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html", charset="utf-8")
            html_part = message
        else:  # text first: readers prefer the last alternative (RFC 2046 §5.1.4)
            message.add_alternative(html, subtype="html", charset="utf-8")
            payload: Any = message.get_payload()
            html_part = payload[-1]
        for part in inline:
            maintype, subtype = _split_type(part.content_type)
            html_part.add_related(
                part.data,
                maintype=maintype,
                subtype=subtype,
                cid=_angle(part.content_id),
                filename=part.filename,
                disposition="inline",
            )
    for attachment in attachments:
        if not any(attachment is part for part in inline):
            _attach(message, attachment)
    raw = message.as_bytes(policy=MIME_POLICY)
    check_size(len(raw), limits)
    return raw


def _attach(message: EmailMessage, attachment: Attachment) -> None:
    maintype, subtype = _split_type(attachment.content_type)
    if attachment.external_url:
        # RFC 2046 §5.2.3 / RFC 2017: the body lives elsewhere; the inner header says what it is.
        part = EmailMessage(policy=MIME_POLICY)
        part["Content-Type"] = f'message/external-body; access-type=URL; URL="{attachment.external_url}"'
        inner = f"Content-Type: {maintype}/{subtype}\r\n"
        if attachment.content_id:
            inner += f"Content-ID: {_angle(attachment.content_id)}\r\n"
        if attachment.size is not None:
            inner += f"Content-Length: {attachment.size}\r\n"
        part.set_payload(inner + "\r\n")
        disposition = 'attachment; filename="{}"'.format((attachment.filename or "attachment").replace('"', "'"))
        part["Content-Disposition"] = disposition
        if message.get_content_type() != "multipart/mixed":
            message.make_mixed()
        message.attach(part)
        return
    # As bytes whatever the type (base64): a text attachment keeps its own charset and line ends.
    message.add_attachment(
        attachment.data,
        maintype=maintype,
        subtype=subtype,
        filename=attachment.filename,
        cid=_angle(attachment.content_id) if attachment.content_id else None,
        disposition="inline" if attachment.inline else "attachment",
    )


_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}$")
_HEADER_NAME_RE = re.compile(r"^[!-9;-~]{1,100}$")  # RFC 5322 ftext


def _split_type(content_type: str | None) -> tuple[str, str]:
    value = (content_type or "").split(";", 1)[0].strip().lower()
    if not _TYPE_RE.match(value) or value.startswith(("multipart/", "message/")):
        return "application", "octet-stream"
    maintype, subtype = value.split("/", 1)
    return maintype, subtype


def _angle(content_id: str | None) -> str:
    value = (content_id or "").strip().strip("<>")
    return f"<{value}>"


def _header_name_ok(name: str) -> bool:
    return bool(_HEADER_NAME_RE.match(name))


def _set_header(message: EmailMessage, name: str, value: Any) -> bool:
    """Append one header; False (left out) when the value cannot be a header. Folded values are unfolded."""
    if value is None:
        return False
    # Raw 8-bit bytes read with surrogateescape become U+FFFD; folded or broken lines become one line.
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")
    if "\n" in text or "\r" in text:
        text = " ".join(text.split())
    limit = MIME_POLICY.header_max_count(name)
    if limit is not None and len(message.get_all(name, ())) >= limit:
        return False  # a second Subject, Message-ID, From...: the first one stands
    try:
        MIME_POLICY.fold_binary(name, MIME_POLICY.header_factory(name, text))  # what as_bytes will do
        message[name] = text
    except Exception:  # the header registry raises several kinds on hostile values: leave the header out
        return False
    return True


# --------------------------------------------------------------------------------------------------------
# Form bodies
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FormValue:
    data: bytes
    filename: str | None = None
    content_type: str | None = None  # of a file part
    charset: str | None = None  # from the part's Content-Type, if any


@dataclass(slots=True)
class Form:
    """Fields in order of appearance; a name may repeat."""

    values: list[tuple[str, FormValue]] = dataclasses.field(default_factory=list)

    def get(self, name: str) -> FormValue | None:
        for key, value in self.values:
            if key == name:
                return value
        return None

    def text(self, name: str, charset: str | None = None) -> str | None:
        """The field as text: its own charset, else `charset`, else UTF-8 (undecodable bytes replaced)."""
        value = self.get(name)
        if value is None:
            return None
        return decode_text(value.data, value.charset or charset)

    def files(self) -> list[tuple[str, FormValue]]:
        return [(name, value) for name, value in self.values if value.filename is not None]


def decode_text(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:  # an unknown charset name
        return data.decode("utf-8", "replace")


def parse_form(body: bytes, content_type_header: str) -> Form:
    """A multipart/form-data or application/x-www-form-urlencoded body; MalformedPayload otherwise."""
    media_type, params = parse_options_header(content_type_header)
    if media_type == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise MalformedPayload("multipart/form-data without a boundary")
        return _parse_multipart(body, boundary)
    if media_type == b"application/x-www-form-urlencoded":
        try:  # through Latin-1 both ways: every byte of a value survives (an 8-bit body-mime too)
            pairs = urllib.parse.parse_qsl(
                body.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FORM_PARTS, encoding="latin-1"
            )
        except ValueError:
            raise MalformedPayload(f"more than {MAX_FORM_PARTS} form fields") from None
        return Form(
            [
                (name.encode("latin-1").decode("utf-8", "replace"), FormValue(value.encode("latin-1")))
                for name, value in pairs
            ]
        )
    shown = media_type.decode("latin-1") or "none"
    raise MalformedPayload(
        f"content type {shown!r} is not accepted here "
        "(expected multipart/form-data or application/x-www-form-urlencoded)"
    )


class _PartCollector:
    def __init__(self) -> None:
        self.form = Form()
        self.headers: dict[str, str] = {}
        self.header_name = b""
        self.header_value = b""
        self.chunks: list[bytes] = []
        self.parts = 0

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise MalformedPayload(f"more than {MAX_FORM_PARTS} form parts")
        self.headers, self.chunks = {}, []

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.chunks.append(data[start:end])

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.decode("latin-1").strip().lower()] = self.header_value.decode("utf-8", "replace")
        self.header_name, self.header_value = b"", b""

    def on_part_end(self) -> None:
        disposition, params = parse_options_header(self.headers.get("content-disposition", ""))
        name_bytes = params.get(b"name")
        if disposition != b"form-data" or name_bytes is None:
            raise MalformedPayload("a multipart part has no Content-Disposition: form-data with a name")
        filename_bytes = params.get(b"filename")
        part_type, type_params = parse_options_header(self.headers.get("content-type", ""))
        charset = type_params.get(b"charset")
        data = _transfer_decoded(b"".join(self.chunks), self.headers.get("content-transfer-encoding", ""))
        self.form.values.append(
            (
                name_bytes.decode("utf-8", "replace"),
                FormValue(
                    data=data,
                    filename=None if filename_bytes is None else filename_bytes.decode("utf-8", "replace"),
                    content_type=part_type.decode("latin-1") or None if filename_bytes is not None else None,
                    charset=charset.decode("latin-1") if charset else None,
                ),
            )
        )


def _transfer_decoded(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "base64":
        try:
            return base64.b64decode(data)
        except (binascii.Error, ValueError):
            raise MalformedPayload("a base64 form part does not decode") from None
    if encoding == "quoted-printable":
        return quopri.decodestring(data)
    return data


def _parse_multipart(body: bytes, boundary: bytes) -> Form:
    collector = _PartCollector()
    callbacks: Any = {
        "on_part_begin": collector.on_part_begin,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
    }
    ended: list[bool] = []
    callbacks["on_end"] = lambda: ended.append(True)
    try:
        parser = MultipartParser(boundary, callbacks, max_header_count=32, max_header_size=16 * 1024)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedPayload(f"the multipart/form-data body does not parse: {exc}") from None
    if not ended:
        raise MalformedPayload("the multipart/form-data body ends before its closing boundary")
    return collector.form


# --------------------------------------------------------------------------------------------------------
# Small helpers shared by the provider parsers
# --------------------------------------------------------------------------------------------------------


def json_field(text: str | None, what: str) -> Any:
    """A form field that holds JSON (SendGrid `envelope`, Mailgun `message-headers`); MalformedPayload naming it."""
    if text is None or not text.strip():
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise MalformedPayload(f"the {what} field is not valid JSON") from None


def b64_content(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedPayload(f"{what} is not a base64 string")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedPayload(f"{what} is not valid base64") from None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None
