"""The inbound-mail contract between a source (a provider's inbound webhook, the SMTP report endpoint, the mailbox
poller) and conversations (docs/conversations.md#inbound-sources).

Every source hands over the message as raw RFC 5322 bytes: where a provider posts parsed fields instead of the raw
message, its parser rebuilds one MIME message from them (email.message.EmailMessage), so parsing, classification,
threading and storage have one path. Sources never touch the database.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class InboundMail:
    raw: bytes  # the RFC 5322 message, at most the inbound size limit
    source: str  # provider code (engagelab, sendgrid, mailgun, postmark, brevo, ses), `smtp` or `imap`
    service_id: int | None = None  # the service whose endpoint or mailbox received it, when known
    recipient: str | None = None  # the envelope recipient as the provider reports it (else Delivered-To / To)
    sender: str | None = None  # the envelope sender, when reported
    provider_message_id: str | None = None  # the provider's id of the inbound message, for its logs
