"""Brevo inbound parsing → InboundMail (docs/providers.md#inbound-mail-replies-through-a-provider).

Brevo posts `{"items": [...]}`, one item per message (several may come in one request): `Uuid` (Brevo's ids),
`MessageId`, `InReplyTo`, `From` (`{Name, Address}`), `To`, `Cc`, `ReplyTo`, `Recipients` (the addresses of the
receiving domain it was delivered to), `SentAtDate`, `Subject`, `Headers` (an object: name → value, or a list
of values for a repeated header), `RawHtmlBody`, `RawTextBody`, and `Attachments` — metadata only (`Name`,
`ContentType`, `ContentLength`, `ContentID`, `DownloadToken`): Brevo keeps the content, to be fetched from
`GET /v3/inbound/attachments/{DownloadToken}` with the account's API key. Each message is rebuilt from those
fields; an attachment becomes a `message/external-body` part (RFC 2046 §5.2.3) naming that URL, its type and
size, so nothing is fetched while Brevo waits for the answer.

Authentication as Brevo's event webhooks: a token (`Authorization: Bearer`, `X-Webhook-Token`, `?token=`) or
Basic credentials in the webhook URL, the secret being `user:password`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar

from edm.providers.inbound import InboundMail
from edm.providers.inbound_webhook import (
    MAX_ITEMS,
    Attachment,
    InboundLimits,
    InboundPayload,
    InboundRequest,
    SecretInBasicOrToken,
    mails_for,
    rebuild,
    text_or_none,
)
from edm.providers.webhook import MalformedPayload
from edm.vocabulary.events import EventType, NormalizedEvent

PROVIDER = "brevo"
ATTACHMENT_URL = "https://api.brevo.com/v3/inbound/attachments/{token}"


class BrevoInbound(SecretInBasicOrToken):
    provider: ClassVar[str] = PROVIDER

    def parse(self, request: InboundRequest, limits: InboundLimits) -> InboundPayload:
        if request.content_type not in ("", "application/json"):
            raise MalformedPayload(f"Brevo posts application/json, not {request.content_type!r}")
        body = request.json()
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise MalformedPayload('a Brevo inbound body is {"items": [...]}')
        if len(items) > MAX_ITEMS:
            raise MalformedPayload(f"{len(items)} items in one request (at most {MAX_ITEMS})")
        mails: list[InboundMail] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise MalformedPayload(f"items[{index}] is not an object")
            mails.extend(_mails(item, f"items[{index}]", request.service_id, limits))
        return InboundPayload(mails=mails)

    def event_mails(
        self, event: NormalizedEvent, service_id: int | None, limits: InboundLimits
    ) -> list[InboundMail] | None:
        """The event parser makes one `inbound` event of each item, the item as its `raw`."""
        if event.event_type is not EventType.REPLIED or event.provider_event != "inbound":
            return None
        if not isinstance(event.raw, dict):
            raise MalformedPayload("the inbound item is not an object")
        return _mails(event.raw, "the inbound item", service_id, limits)


def _mails(item: Mapping[str, Any], where: str, service_id: int | None, limits: InboundLimits) -> list[InboundMail]:
    """The mails of one item; `where` names it in errors."""
    if not isinstance(item.get("From"), dict) and not item.get("MessageId"):
        raise MalformedPayload(f"{where} is not a Brevo inbound message: no From and no MessageId")
    uuid = item.get("Uuid")
    provider_id = uuid[0] if isinstance(uuid, list) and uuid and isinstance(uuid[0], str) else text_or_none(uuid)
    headers = _headers(item.get("Headers"), where)
    message_id = text_or_none(item.get("MessageId"))
    raw = rebuild(
        provider=PROVIDER,
        headers=headers,
        text=text_or_none(item.get("RawTextBody")),
        html=text_or_none(item.get("RawHtmlBody")),
        attachments=_attachments(item.get("Attachments"), where),
        defaults=[
            ("From", _mailbox(item.get("From"))),
            ("To", _mailboxes(item.get("To"))),
            ("Cc", _mailboxes(item.get("Cc"))),
            ("Reply-To", _mailbox(item.get("ReplyTo"))),
            ("Subject", text_or_none(item.get("Subject"))),
            ("Date", text_or_none(item.get("SentAtDate"))),
            ("Message-ID", message_id or (f"<{provider_id}@inbound.brevo.com>" if provider_id else None)),
            ("In-Reply-To", text_or_none(item.get("InReplyTo"))),
        ],
        limits=limits,
    )
    recipients = item.get("Recipients")
    return_path = next((value for name, value in headers if name.lower() == "return-path"), None)
    return mails_for(
        raw,
        source=PROVIDER,
        service_id=service_id,
        recipients=[r for r in recipients if isinstance(r, str)] if isinstance(recipients, list) else [],
        sender=return_path.strip().strip("<>") if return_path else None,
        provider_message_id=provider_id,
        limits=limits,
    )


def _headers(value: Any, where: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where}.Headers is not an object")
    headers: list[tuple[str, str]] = []
    for name, values in value.items():
        for one in values if isinstance(values, list) else [values]:
            if isinstance(one, str):
                headers.append((str(name), one))
    return headers


def _mailbox(value: Any) -> str | None:
    if not isinstance(value, dict) or not isinstance(value.get("Address"), str) or not value["Address"]:
        return None
    name = value.get("Name") if isinstance(value.get("Name"), str) else ""
    if not name:
        return str(value["Address"])
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{value["Address"]}>'


def _mailboxes(value: Any) -> str | None:
    if not isinstance(value, list):
        return None
    boxes = [box for box in (_mailbox(item) for item in value) if box]
    return ", ".join(boxes) or None


def _attachment_url(token: str | None) -> str:
    return ATTACHMENT_URL.format(token=urllib.parse.quote(token, safe="")) if token else "about:blank"


def _attachments(value: Any, where: str) -> list[Attachment]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{where}.Attachments is not a list")
    attachments: list[Attachment] = []
    for position, meta in enumerate(value):
        if not isinstance(meta, dict):
            raise MalformedPayload(f"{where}.Attachments[{position}] is not an object")
        token = text_or_none(meta.get("DownloadToken"))
        size = meta.get("ContentLength")
        attachments.append(
            Attachment(
                filename=text_or_none(meta.get("Name")),
                content_type=text_or_none(meta.get("ContentType")) or "application/octet-stream",
                content_id=text_or_none(meta.get("ContentID")),
                external_url=_attachment_url(token),
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            )
        )
    return attachments
