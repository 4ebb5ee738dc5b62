"""Inbound sources conversations own (docs/conversations.md#sources): the bounce mailbox of SMTP services, polled by
the worker. (The SMTP endpoint and the providers' inbound webhooks queue what they receive
(`edm.conversations.inbound_queue`); the worker's `inbound` job hands it to `ingest.receive`.)

Every message fetched goes to `receive` (source `imap`, whatever the protocol: IMAP or POP3) in its own unit of work:
a report to the event store, a reply to its conversation, the rest unrouted. Only once that committed is the message
deleted or marked seen. A message over the size limit is refused: logged and let go (marked seen, or deleted on
POP3), never retried for ever at the head of the mailbox.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.conversations.ingest import receive
from edm.conversations.mime import DEFAULT_MAX_BYTES
from edm.errors import TooLarge
from edm.events import bounce_reports
from edm.events.bounce_reports import MailHandler
from edm.providers.inbound import InboundMail
from edm.security.crypto import Vault

log = logging.getLogger("edm.conversations.sources")

MAILBOX_SOURCE = "imap"


def mailbox_handler(*, max_bytes: int = DEFAULT_MAX_BYTES) -> MailHandler:
    async def handle(session: AsyncSession, service_id: int, raw: bytes) -> bool:
        mail = InboundMail(raw=raw, source=MAILBOX_SOURCE, service_id=service_id)
        try:
            result = await receive(session, mail, now=clock.utc_now(), max_bytes=max_bytes)
        except TooLarge as exc:
            extra = {"service_id": service_id, "source": MAILBOX_SOURCE, "error": exc.message}
            log.warning("inbound.refused", extra=extra)
            return True
        log.info("inbound.received", extra={"source": MAILBOX_SOURCE, **result.as_dict()})
        return True

    return handle


async def poll_mailboxes(
    sessionmaker: async_sessionmaker[AsyncSession], vault: Vault, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> int:
    """Poll every SMTP service's mailbox once; returns the number of messages handled."""
    return await bounce_reports.poll_mailboxes(sessionmaker, vault, mailbox_handler(max_bytes=max_bytes))
