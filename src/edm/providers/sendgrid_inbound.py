"""SendGrid Inbound Parse → InboundMail (docs/providers.md#inbound-mail-replies-through-a-provider).

SendGrid posts `multipart/form-data`, in one of two shapes chosen in the Inbound Parse settings:

* **raw** ("POST the raw, full MIME message"): the `email` field holds the message as received; its bytes are
  handed over untouched (RFC 2047 subjects, 8-bit bodies and all);
* **parsed** (the default): `headers` (the original header block), `text`, `html`, `from`, `to`, `cc`, `subject`,
  `charsets` (JSON: the charset each text field is posted in), `attachments` (a count), `attachment-info` (JSON:
  per `attachmentN` its `filename`, `type` and, for inline images, `content-id`) and the `attachmentN` files; the
  message is rebuilt from them.

Both carry `envelope` (JSON: `to`, a list, and `from`), the SMTP envelope: one InboundMail per envelope recipient.

Authentication: Inbound Parse signs nothing. The URL carries a per-service inbound token, `?token=<secret>`, or
Basic credentials (`https://user:password@…`, the secret being `user:password`), checked against the service's
webhook secrets — except its Event Webhook verification key, which is public-key material, never a password.
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any, ClassVar

from edm.providers.inbound import InboundMail
from edm.providers.inbound_webhook import (
    Attachment,
    Form,
    InboundLimits,
    InboundPayload,
    InboundRequest,
    as_dict,
    json_field,
    mails_for,
    rebuild,
)
from edm.providers.sendgrid import public_key
from edm.providers.webhook import MalformedPayload, VerifyContext, WebhookTarget, basic_or_token_matches
from edm.vocabulary.events import NormalizedEvent

PROVIDER = "sendgrid"
# Text fields whose charset SendGrid reports in `charsets`.
_TEXT_FIELDS = ("headers", "text", "html", "from", "to", "cc", "subject")


class SendGridInbound:
    provider: ClassVar[str] = PROVIDER
    needs_secret: ClassVar[bool] = True

    def usable_secrets(self, target: WebhookTarget) -> tuple[str, ...]:
        return tuple(secret for secret in target.secrets if public_key(secret) is None)

    async def verify(self, request: InboundRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        return basic_or_token_matches(request.webhook, self.usable_secrets(target))

    def replay_nonce(self, request: InboundRequest) -> str | None:
        return None

    def parse(self, request: InboundRequest, limits: InboundLimits) -> InboundPayload:
        if request.content_type != "multipart/form-data":
            raise MalformedPayload(
                f"SendGrid Inbound Parse posts multipart/form-data, not {request.content_type or 'an untyped body'!r}"
            )
        form = request.form
        charsets = _charsets(form)
        envelope = json_field(form.text("envelope"), "envelope")
        recipients, sender = _envelope(envelope)
        raw_field = form.get("email")
        if raw_field is not None:
            raw = raw_field.data
            if not raw.strip():
                raise MalformedPayload("the email field (raw MIME) is empty")
        elif form.get("headers") is not None or form.get("from") is not None:
            raw = _rebuilt(form, charsets, limits)
        else:
            raise MalformedPayload("neither an email field (raw mode) nor headers/from fields (parsed mode)")
        mails = mails_for(
            raw,
            source=PROVIDER,
            service_id=request.service_id,
            recipients=recipients,
            sender=sender,
            provider_message_id=None,
            limits=limits,
        )
        return InboundPayload(mails=mails)

    def event_mails(
        self, event: NormalizedEvent, service_id: int | None, limits: InboundLimits
    ) -> list[InboundMail] | None:
        return None  # its event webhook carries no inbound mail


def _charsets(form: Form) -> dict[str, str]:
    value = json_field(form.text("charsets"), "charsets")
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str) and v}


def _envelope(envelope: Any) -> tuple[list[str], str | None]:
    if envelope is None:
        return [], None
    if not isinstance(envelope, dict):
        raise MalformedPayload("the envelope field is not a JSON object")
    to = envelope.get("to")
    recipients = [to] if isinstance(to, str) else [r for r in to if isinstance(r, str)] if isinstance(to, list) else []
    sender = envelope.get("from")
    return recipients, sender if isinstance(sender, str) else None


def _rebuilt(form: Form, charsets: dict[str, str], limits: InboundLimits) -> bytes:
    texts = {name: form.text(name, charsets.get(name)) for name in _TEXT_FIELDS}
    headers: list[tuple[str, str]] = []
    if texts["headers"]:
        parsed = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(texts["headers"])
        headers = [(name, str(value)) for name, value in parsed.items()]
    return rebuild(
        provider=PROVIDER,
        headers=headers,
        text=texts["text"],
        html=texts["html"],
        attachments=_attachments(form),
        defaults=[("From", texts["from"]), ("To", texts["to"]), ("Cc", texts["cc"]), ("Subject", texts["subject"])],
        limits=limits,
    )


def _attachments(form: Form) -> list[Attachment]:
    info = as_dict(json_field(form.text("attachment-info"), "attachment-info"))
    attachments: list[Attachment] = []
    for name, value in form.files():
        meta = as_dict(info.get(name))
        content_id = meta.get("content-id") if isinstance(meta.get("content-id"), str) else None
        attachments.append(
            Attachment(
                filename=_str(meta.get("filename")) or value.filename or None,
                content_type=_str(meta.get("type")) or value.content_type or "application/octet-stream",
                data=value.data,
                content_id=content_id,
                inline=content_id is not None,
            )
        )
    return attachments


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
