"""Amazon SES receiving through SNS → InboundMail (docs/providers.md#inbound-mail-replies-through-a-provider).

A receipt rule with an **SNS action** publishes each received message to a topic; the topic's HTTPS
subscription posts an SNS `Notification` whose `Message` (a JSON string) is
`{"notificationType": "Received", "mail": {…}, "receipt": {…}, "content": "…"}`: `content` is the message as
received, base64 when the action's encoding is `BASE64` (the one to choose: it keeps 8-bit bytes), the text itself
when `UTF8`. `receipt.recipients` are the envelope recipients the rule matched (one InboundMail each),
`mail.source` the envelope sender, `mail.messageId` SES's id. SNS caps a notification at 256 KB, so SES only
publishes messages of up to 150 KB this way; larger ones need an S3 action, which this endpoint cannot read (it
answers 400 `no_content` to such a notification).

Verification is the SES event webhook's (`edm.providers.ses`): the SNS signature checked against a certificate
fetched only from `sns.<region>.amazonaws.com`, and a TopicArn listed in the service's `options.sns_topic_arns`.
A `SubscriptionConfirmation` is verified, then confirmed by the pipeline fetching its SubscribeURL, as for events;
an SES event notification (a topic shared with the events URL) is acknowledged and ignored.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar

import orjson

from edm.providers.inbound import InboundMail
from edm.providers.inbound_webhook import (
    InboundLimits,
    InboundPayload,
    InboundRequest,
    NoContent,
    as_dict,
    check_size,
    mails_for,
    text_or_none,
)
from edm.providers.ses import SesWebhook
from edm.providers.webhook import MalformedPayload, VerifyContext, WebhookTarget
from edm.vocabulary.events import EventType, NormalizedEvent

PROVIDER = "ses"
_events = SesWebhook()


class SesInbound:
    provider: ClassVar[str] = PROVIDER
    needs_secret: ClassVar[bool] = False

    def usable_secrets(self, target: WebhookTarget) -> tuple[str, ...]:
        return target.secrets

    async def verify(self, request: InboundRequest, target: WebhookTarget, ctx: VerifyContext) -> bool:
        return await _events.verify(request.webhook, target, ctx)

    def replay_nonce(self, request: InboundRequest) -> str | None:
        return None  # SNS redelivers with the same MessageId on purpose; the mail's Message-ID dedupes it

    def parse(self, request: InboundRequest, limits: InboundLimits) -> InboundPayload:
        if request.content_type not in ("", "text/plain", "application/json"):
            raise MalformedPayload(f"SNS posts text/plain JSON, not {request.content_type!r}")
        envelope = request.json()
        if not isinstance(envelope, dict):
            raise MalformedPayload("an SNS message is a JSON object")
        if envelope.get("Type") != "Notification":
            control = _events.parse(request.webhook)  # subscription (un)confirmations, as for events
            return InboundPayload(control=control.control, confirm_url=control.confirm_url)
        message = _message(envelope.get("Message"))
        kind = message.get("notificationType") or message.get("eventType")
        if kind == "AmazonSnsSubscriptionSucceeded":
            return InboundPayload(control="ses_subscription_succeeded")
        if kind != "Received":
            return InboundPayload(control="not_inbound")  # an SES event on a topic shared with the events URL
        return InboundPayload(mails=_mails(message, request.service_id, limits))

    def event_mails(
        self, event: NormalizedEvent, service_id: int | None, limits: InboundLimits
    ) -> list[InboundMail] | None:
        """The event parser's `Received` event keeps the SNS Message (mail, receipt, content) as its `raw`."""
        if event.event_type is not EventType.REPLIED or event.provider_event != "Received":
            return None
        if not isinstance(event.raw, dict):
            raise MalformedPayload("the SNS Message is not a JSON object")
        return _mails(event.raw, service_id, limits)


def _mails(message: dict[str, Any], service_id: int | None, limits: InboundLimits) -> list[InboundMail]:
    """The mails of a `Received` notification's Message: one per recipient of the receipt rule."""
    mail, receipt = as_dict(message.get("mail")), as_dict(message.get("receipt"))
    raw = _content(message, receipt, limits)
    recipients = receipt.get("recipients") or mail.get("destination")
    return mails_for(
        raw,
        source=PROVIDER,
        service_id=service_id,
        recipients=[r for r in recipients if isinstance(r, str)] if isinstance(recipients, list) else [],
        sender=text_or_none(mail.get("source")),
        provider_message_id=text_or_none(mail.get("messageId")),
        limits=limits,
    )


def _message(value: Any) -> dict[str, Any]:
    if not isinstance(value, str):
        raise MalformedPayload("the SNS Notification has no Message string")
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise MalformedPayload("the SNS Message is not JSON") from None
    if not isinstance(message, dict):
        raise MalformedPayload("the SNS Message is not a JSON object")
    return message


def _content(message: dict[str, Any], receipt: dict[str, Any], limits: InboundLimits) -> bytes:
    content = message.get("content")
    action = as_dict(receipt.get("action"))
    if not isinstance(content, str) or not content:
        kind = action.get("type") or "unknown"
        raise NoContent(
            f"this SES notification carries no message content (receipt action {kind!r}): "
            "use an SNS action (encoding BASE64) to deliver mail to this URL"
        )
    encoding = str(action.get("encoding") or "").upper()
    if encoding == "UTF8":
        raw = content.encode("utf-8")
    else:
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            if encoding == "BASE64":
                raise MalformedPayload("the SES content is not valid base64 (receipt action encoding BASE64)") from None
            raw = content.encode("utf-8")  # no encoding named: SES's default is UTF8
    check_size(len(raw), limits)
    return raw
