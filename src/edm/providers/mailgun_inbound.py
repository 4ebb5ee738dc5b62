"""Mailgun routes (`forward("https://…/inbound")`) → InboundMail
(docs/providers.md#inbound-mail-replies-through-a-provider).

Mailgun posts `application/x-www-form-urlencoded`, or `multipart/form-data` when the message has attachments:

* **parsed** (a URL not ending in `mime`): `recipient` and `sender` (the SMTP envelope), `from`, `subject`,
  `message-headers` (JSON: the original headers as `[name, value]` pairs, in order), `body-plain`, `body-html`,
  `attachment-count`, the files `attachment-1` … `attachment-N`, `content-id-map` (JSON: `<cid>` → the
  attachment field of an inline image); the message is rebuilt from them;
* **raw** (a URL ending in `mime`: EDM's `…/inbound/mime`): `body-mime` holds the message as received, handed
  over untouched.

Authentication is the event webhooks' scheme (`edm.providers.mailgun`): `timestamp`, `token` and `signature`
form fields, HMAC-SHA256(webhook signing key, timestamp + token) in hex, the timestamp within 10 minutes, the
token single-use (the pipeline records it with the mail, in the same transaction).
"""

from __future__ import annotations

from typing import ClassVar

from edm.providers.inbound import InboundMail
from edm.providers.inbound_webhook import (
    Attachment,
    Form,
    InboundLimits,
    InboundPayload,
    InboundRequest,
    json_field,
    mails_for,
    rebuild,
)
from edm.providers.mailgun import SIGNATURE_WINDOW_SECONDS, expected_signature
from edm.providers.webhook import (
    MalformedPayload,
    VerifyContext,
    WebhookError,
    WebhookTarget,
    fresh,
    from_epoch,
    same,
)
from edm.vocabulary.events import NormalizedEvent

PROVIDER = "mailgun"


class MailgunInbound:
    provider: ClassVar[str] = PROVIDER
    needs_secret: ClassVar[bool] = True

    def usable_secrets(self, target: WebhookTarget) -> tuple[str, ...]:
        return target.secrets

    async def verify(self, request: InboundRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        fields = _signature_fields(request)
        if fields is None:
            return False
        timestamp, token, signature = fields
        if not fresh(from_epoch(timestamp), ctx.now, seconds=SIGNATURE_WINDOW_SECONDS):
            return False
        matched = False
        for secret in target.secrets:
            matched |= same(expected_signature(secret, timestamp, token), signature.lower())  # no early exit
        return matched

    def replay_nonce(self, request: InboundRequest) -> str | None:
        fields = _signature_fields(request)
        return fields[1] if fields else None

    def parse(self, request: InboundRequest, limits: InboundLimits) -> InboundPayload:
        form = request.form
        raw_field = form.get("body-mime")
        if raw_field is not None:
            raw = raw_field.data
            if not raw.strip():
                raise MalformedPayload("the body-mime field is empty")
        elif form.get("message-headers") is not None or form.get("from") is not None:
            raw = _rebuilt(form, limits)
        else:
            raise MalformedPayload("neither body-mime (a URL ending in mime) nor message-headers/from fields")
        recipients = [part.strip() for part in (form.text("recipient") or "").split(",")]
        mails = mails_for(
            raw,
            source=PROVIDER,
            service_id=request.service_id,
            recipients=recipients,
            sender=form.text("sender"),
            provider_message_id=None,
            limits=limits,
        )
        return InboundPayload(mails=mails)

    def event_mails(
        self, event: NormalizedEvent, service_id: int | None, limits: InboundLimits
    ) -> list[InboundMail] | None:
        return None  # its event webhook carries no inbound mail


def _signature_fields(request: InboundRequest) -> tuple[str, str, str] | None:
    try:
        form = request.form
    except WebhookError:
        return None
    values = tuple(form.text(name) for name in ("timestamp", "token", "signature"))
    if not all(values):
        return None
    timestamp, token, signature = (str(value).strip() for value in values)
    return timestamp, token, signature


def _rebuilt(form: Form, limits: InboundLimits) -> bytes:
    pairs = json_field(form.text("message-headers"), "message-headers")
    if pairs is not None and not isinstance(pairs, list):
        raise MalformedPayload("the message-headers field is not a JSON array of [name, value] pairs")
    headers = [
        (pair[0], pair[1])
        for pair in pairs or []
        if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)
    ]
    return rebuild(
        provider=PROVIDER,
        headers=headers,
        text=form.text("body-plain"),
        html=form.text("body-html"),
        attachments=_attachments(form),
        defaults=[("From", form.text("from")), ("Subject", form.text("subject"))],
        limits=limits,
    )


def _attachments(form: Form) -> list[Attachment]:
    cid_map = json_field(form.text("content-id-map"), "content-id-map")
    inline: dict[str, str] = {}
    if isinstance(cid_map, dict):
        inline = {str(field): str(cid) for cid, field in cid_map.items() if isinstance(field, str)}
    attachments: list[Attachment] = []
    for name, value in form.files():
        content_id = inline.get(name)
        attachments.append(
            Attachment(
                filename=value.filename or None,
                content_type=value.content_type or "application/octet-stream",
                data=value.data,
                content_id=content_id,
                inline=content_id is not None,
            )
        )
    return attachments
