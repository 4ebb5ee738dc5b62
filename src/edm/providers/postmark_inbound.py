"""Postmark inbound webhook → InboundMail (docs/providers.md#inbound-mail-replies-through-a-provider).

Postmark posts one JSON object per message: `FromFull`, `ToFull`, `CcFull`, `OriginalRecipient` (the address it
was delivered to), `Subject`, `Date`, `ReplyTo`, `MessageID` (Postmark's id), `TextBody`, `HtmlBody`, `Headers`
(`[{Name, Value}]`: Message-ID, In-Reply-To, References, Received, …), `Attachments` (`[{Name, Content (base64),
ContentType, ContentLength, ContentID}]`). Text is UTF-8 JSON, so a Chinese subject arrives as itself; the
rebuilt message encodes it (RFC 2047). With the server's "Include raw email content in JSON payload" setting
the `RawEmail` field holds the message as received, which is handed over instead.

Authentication as Postmark's event webhooks: Basic credentials in the webhook URL (`https://user:password@…`,
the secret `user:password`), or a token (`?token=`, or a custom header `Authorization: Bearer` /
`X-Webhook-Token`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from edm.providers.inbound import InboundMail
from edm.providers.inbound_webhook import (
    Attachment,
    InboundLimits,
    InboundPayload,
    InboundRequest,
    SecretInBasicOrToken,
    b64_content,
    check_size,
    mails_for,
    rebuild,
    text_or_none,
)
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import EventType, NormalizedEvent

PROVIDER = "postmark"


class PostmarkInbound(SecretInBasicOrToken):
    provider: ClassVar[str] = PROVIDER

    def parse(self, request: InboundRequest, limits: InboundLimits) -> InboundPayload:
        if request.content_type not in ("", "application/json"):
            raise MalformedPayload(f"Postmark posts application/json, not {request.content_type!r}")
        record = request.json()
        if not isinstance(record, dict):
            raise MalformedPayload("a Postmark inbound body is one JSON object")
        if record.get("RecordType") not in (None, "Inbound"):
            raise MalformedPayload(
                f"a Postmark {record.get('RecordType')!r} event was posted to the inbound URL (use the events URL)"
            )
        return InboundPayload(mails=_mails(record, request.service_id, limits))

    def event_mails(
        self, event: NormalizedEvent, service_id: int | None, limits: InboundLimits
    ) -> list[InboundMail] | None:
        """The event parser's `Inbound` event keeps the whole record as its `raw`."""
        if event.event_type is not EventType.REPLIED or event.provider_event != "Inbound":
            return None
        if not isinstance(event.raw, dict):
            raise MalformedPayload("a Postmark inbound message is one JSON object")
        return _mails(event.raw, service_id, limits)


def _mails(record: Mapping[str, Any], service_id: int | None, limits: InboundLimits) -> list[InboundMail]:
    raw_email = record.get("RawEmail")
    if isinstance(raw_email, str) and raw_email.strip():
        check_size(len(raw_email), limits)
        raw = raw_email.encode("utf-8", "surrogateescape")
    elif isinstance(record.get("FromFull"), dict) or isinstance(record.get("From"), str):
        raw = _rebuilt(record, limits)
    else:
        raise MalformedPayload("not a Postmark inbound message: no FromFull, From or RawEmail")
    headers = _headers(record)
    return_path = next((value for name, value in headers if name.lower() == "return-path"), None)
    return mails_for(
        raw,
        source=PROVIDER,
        service_id=service_id,
        recipients=[text_or_none(record.get("OriginalRecipient"))],
        sender=return_path.strip().strip("<>") if return_path else None,
        provider_message_id=text_or_none(record.get("MessageID")),
        limits=limits,
    )


def _headers(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    headers = record.get("Headers")
    if headers is None:
        return []
    if not isinstance(headers, list):
        raise MalformedPayload("Headers is not a list of {Name, Value} objects")
    return [
        (h["Name"], h["Value"])
        for h in headers
        if isinstance(h, dict) and isinstance(h.get("Name"), str) and isinstance(h.get("Value"), str)
    ]


def _rebuilt(record: Mapping[str, Any], limits: InboundLimits) -> bytes:
    message_id = text_or_none(record.get("MessageID"))
    return rebuild(
        provider=PROVIDER,
        headers=_headers(record),
        text=text_or_none(record.get("TextBody")),
        html=text_or_none(record.get("HtmlBody")),
        attachments=_attachments(record.get("Attachments")),
        defaults=[
            ("From", _mailbox(record.get("FromFull")) or text_or_none(record.get("From"))),
            ("To", _mailboxes(record.get("ToFull")) or text_or_none(record.get("To"))),
            ("Cc", _mailboxes(record.get("CcFull")) or text_or_none(record.get("Cc"))),
            ("Reply-To", text_or_none(record.get("ReplyTo"))),
            ("Subject", text_or_none(record.get("Subject"))),
            ("Date", text_or_none(record.get("Date"))),
            # Postmark lists Message-ID among Headers; a message without one gets Postmark's id, so a retry of the
            # same post is still recognised.
            ("Message-ID", f"<{message_id}@inbound.postmarkapp.com>" if message_id else None),
        ],
        limits=limits,
    )


def _mailbox(value: Any) -> str | None:
    if not isinstance(value, dict) or not isinstance(value.get("Email"), str) or not value["Email"]:
        return None
    name = value.get("Name") if isinstance(value.get("Name"), str) else ""
    if not name:
        return str(value["Email"])
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{value["Email"]}>'


def _mailboxes(value: Any) -> str | None:
    if not isinstance(value, list):
        return None
    boxes = [box for box in (_mailbox(item) for item in value) if box]
    return ", ".join(boxes) or None


def _attachments(value: Any) -> list[Attachment]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload("Attachments is not a list")
    attachments: list[Attachment] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise MalformedPayload(f"Attachments[{index}] is not an object")
        content_id = text_or_none(item.get("ContentID"))
        attachments.append(
            Attachment(
                filename=text_or_none(item.get("Name")),
                content_type=text_or_none(item.get("ContentType")) or "application/octet-stream",
                data=b64_content(item.get("Content", ""), f"Attachments[{index}].Content"),
                content_id=content_id,
                inline=content_id is not None,
            )
        )
    return attachments
