"""SMTP bounce and complaint reports (docs/events.md#smtp-bounce-and-complaint-reports): from the DSN endpoint or
a polled mailbox into the store. Conversations (`edm.conversations.ingest`) decide which inbound mail is a report
and hand reports here (`report_rows`); the mailbox poller hands each message to the handler it is given.

Reports are stored like provider events, under source `dsn` (RFC 3464 and free-text bounces) or `arf`
(RFC 5965 complaints). A mail that is no report at all is kept `unmatched (not_a_report)` with its raw MIME
(≤ 64 KB), so an admin can see what arrived.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.events import ingest
from edm.events.mailbox import MailboxConfig, MailboxError, fetch_reports
from edm.models.email_services import EmailService
from edm.models.events import MatchReason, MatchStatus
from edm.providers.dsn import parse_report
from edm.providers.webhook import ParsedPayload
from edm.security.crypto import Vault
from edm.vocabulary.events import BadElement, EventType, NormalizedEvent

log = logging.getLogger("edm.events.bounce_reports")

MAILBOX_OPTION = "bounce_mailbox"  # service option: {"protocol", "host", "port", "security", "username", ...}
MAILBOX_PASSWORD = "bounce_mailbox_password"  # service credential


def source_of(event: NormalizedEvent) -> str:
    return "arf" if event.provider_event.startswith("arf:") else "dsn"


def report_rows(
    service_id: int | None, parsed: ParsedPayload, raw_mime: bytes, *, now: dt.datetime
) -> list[dict[str, Any]]:
    rows = []
    for item in parsed.items:
        if isinstance(item, BadElement):
            rows.append(ingest.bad_element_row("dsn", service_id, item, now=now))
            continue
        row = ingest.event_row(source_of(item), service_id, item, now=now)
        if item.event_type == EventType.UNKNOWN:
            row["raw"] = {
                **(item.raw if isinstance(item.raw, dict) else {"value": item.raw}),
                "mime": raw_mime[: ingest.RAW_LIMIT].decode("utf-8", "replace"),
            }
            if not item.subtask_id:  # no report and none of our ids: nothing to apply it to
                row.update(match_status=MatchStatus.UNMATCHED, match_reason=MatchReason.NOT_A_REPORT, processed_at=now)
            if not item.provider_event_id:  # the mail itself is its identity (two mails may share a Date)
                row["dedupe_key"] = "mime:" + hashlib.sha256(raw_mime).hexdigest()[:40]
        rows.append(row)
    return rows


async def store_report(
    session: AsyncSession, service_id: int | None, raw_mime: bytes, *, envelope_to: str | None = None
) -> ingest.StoreCounts:
    parsed = parse_report(raw_mime, envelope_to=envelope_to)
    return await ingest.store(session, report_rows(service_id, parsed, raw_mime, now=clock.utc_now()))


# -- the mailbox poller ----------------------------------------------------------------------------------


# What becomes of one fetched message, in its own unit of work: (session, service id, raw) -> stored or not.
MailHandler = Callable[[AsyncSession, int, bytes], Awaitable[bool]]


async def poll_mailboxes(
    sessionmaker: async_sessionmaker[AsyncSession], vault: Vault, handle: MailHandler | None = None
) -> int:
    """Fetch every message from every SMTP service's bounce mailbox; each stored in its own transaction before the
    message is deleted or marked seen, so a crash never loses one. Returns the number of messages handled.

    `handle` decides what a message becomes; the worker passes conversations' (`edm.conversations.sources`): reports
    to the event store, replies to their conversation. Without it every message is stored as a report (a mail that
    is none is kept `unmatched (not_a_report)`)."""
    async with sessionmaker() as session:
        services = (
            await session.scalars(
                select(EmailService).where(EmailService.provider == "smtp", EmailService.archived_at.is_(None))
            )
        ).all()
    handled = 0
    for service in services:
        settings = (service.options or {}).get(MAILBOX_OPTION)
        if not settings:
            continue
        try:
            config = _mailbox_config(settings, vault.decrypt_json(service.credentials_encrypted))
            handled += await fetch_reports(config, _store_in(sessionmaker, service.id, handle or _as_report))
        except (MailboxError, ValueError) as exc:
            log.warning("reports.mailbox_failed", extra={"service_id": service.id, "error": str(exc)[:300]})
    return handled


def _mailbox_config(settings: dict[str, Any], credentials: dict[str, Any]) -> MailboxConfig:
    return MailboxConfig.from_settings({**settings, "password": credentials.get(MAILBOX_PASSWORD, "")})


async def _as_report(session: AsyncSession, service_id: int, raw: bytes) -> bool:
    await store_report(session, service_id, raw)
    return True


def _store_in(sessionmaker: async_sessionmaker[AsyncSession], service_id: int, handle: MailHandler) -> Any:
    async def stored(raw: bytes) -> bool:
        async with unit_of_work(sessionmaker) as session:
            return await handle(session, service_id, raw)

    return stored
