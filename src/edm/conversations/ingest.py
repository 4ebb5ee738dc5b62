"""Receiving one inbound mail (docs/conversations.md#how-replies-come-back): the one function every source calls.

    result = await receive(session, mail, now=now)

parse (bounded) → classify → a report goes to the bounce path (`edm.events.bounce_reports`: stored as `dsn`/`arf`
events, applied by the `events` job), anything else is threaded to its owner → stored once per (user, Message-ID)
in the owner's conversation with our address and theirs, or kept unrouted for the admins.

A person's reply threaded to one of our SubTasks also records a `replied` event (source `inbound`) and applies it
at once, in the same transaction: the SubTask's `replied_at` (first reply), the contact's `last_replied_at`, and
through them the task statistics, counters and dashboards count it exactly once. The message row is inserted with
INSERT … ON CONFLICT DO NOTHING on the unique (user, Message-ID) index, and everything that counts follows only
from a row actually inserted, so a replay, a provider's retry or the same mail from a second source adds nothing,
even when two arrive at once.

The caller owns the transaction (an entry point: a webhook request, the mailbox poller's per-message unit of
work, an admin's assign). No network call happens here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.addresses import normalize_email
from edm.conversations import classify, mime
from edm.conversations.threading import ThreadMatch, match_thread, owner_by_address
from edm.db.dialect import dialect_insert, is_postgresql
from edm.errors import BadInput
from edm.events import apply as event_apply
from edm.events import bounce_reports
from edm.events import ingest as event_ingest
from edm.events.matching import INBOUND_SOURCE
from edm.models.contacts import Contact, ContactStatus
from edm.models.conversations import Conversation, ConversationMessage, MailBlob, UnroutedInbound
from edm.providers.inbound import InboundMail
from edm.vocabulary.events import EventType, NormalizedEvent

CONTACT_SOURCE = "reply"  # contacts.source of a contact created because it wrote to us
UNKNOWN_ADDRESS = "unknown@unknown.invalid"  # a message with neither From nor an envelope sender
UNREADABLE = "unreadable"  # unrouted_inbound.reason of a mail that failed to be handled every time it was tried


class Status:
    STORED = "stored"
    DUPLICATE = "duplicate"
    BOUNCE_REPORT = "bounce_report"
    COMPLAINT_REPORT = "complaint_report"
    UNROUTED = "unrouted"


class ConversationStatus:
    ACTIVE = "active"
    CLOSED = "closed"
    ARCHIVED = "archived"
    ALL = ("active", "closed", "archived")


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiveResult:
    """What `receive` did with one mail. `status` is one of stored, duplicate, bounce_report, complaint_report,
    unrouted; the ids name what it stored (or, for a duplicate, what was already there)."""

    status: str
    user_id: int | None = None
    conversation_id: int | None = None
    message_id: int | None = None  # conversation_messages.id
    unrouted_id: int | None = None
    event_ids: tuple[int, ...] = ()  # events stored: the report's, or the `replied` event
    report_events: int = 0  # a report: how many events it holds (stored now or before)
    subtask_id: int | None = None  # the SubTask the message was threaded to
    is_auto_reply: bool = False
    reason: str | None = None  # unrouted: why no user owns it

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "event_ids": list(self.event_ids)}


@dataclasses.dataclass(frozen=True, slots=True)
class _Route:
    user_id: int
    our_address: str
    match: ThreadMatch | None


async def receive(
    session: AsyncSession,
    mail: InboundMail,
    *,
    now: dt.datetime,
    max_bytes: int = mime.DEFAULT_MAX_BYTES,
    apply_reply: bool = True,
) -> ReceiveResult:
    """Classify, thread and store one inbound mail (module docstring). TooLarge (413) above `max_bytes`
    (sources pass `Settings.inbound_message_max_bytes`). With `apply_reply=False` a reply's `replied` event is
    stored but not applied: the caller applies `event_ids` itself before it commits (`apply_replies`), as the
    `inbound` job does once per batch."""
    parsed = mime.parse(mail.raw, recipient=mail.recipient, sender=mail.sender, max_bytes=max_bytes)
    kind, report = classify.report_kind(mail.raw, parsed)
    if kind is not None and report is not None:
        rows = bounce_reports.report_rows(mail.service_id, report, mail.raw, now=now)
        ids = await event_ingest.store_returning_ids(session, rows)
        return ReceiveResult(status=kind.value, event_ids=tuple(ids), report_events=len(rows))
    match = await match_thread(session, parsed.thread_ids())
    if match is not None:
        our = match.our_address or _normalized(parsed.to_address) or ""
        route = _Route(match.user_id, our, match)
    else:
        owner, reason = await owner_by_address(session, parsed.to_address)
        if owner is None:
            return await _keep_unrouted(session, mail, parsed, reason, now=now)
        route = _Route(owner.user_id, owner.our_address, None)
    return await _store(
        session, parsed, route, source=mail.source, service_id=mail.service_id, now=now, apply_reply=apply_reply
    )


async def apply_replies(session: AsyncSession, event_ids: Sequence[int], *, now: dt.datetime) -> None:
    """Apply the `replied` events `receive(…, apply_reply=False)` stored, in the caller's transaction: one pass of
    the event pipeline for a whole batch of replies instead of one per reply."""
    if event_ids:
        await event_apply.apply_pending(
            session, now=now, only_ids=list(event_ids), limit=len(event_ids), simulated_matches_any=False
        )


async def receive_assigned(
    session: AsyncSession, row: UnroutedInbound, raw: bytes, *, user_id: int, now: dt.datetime
) -> ReceiveResult:
    """An unrouted mail an admin assigned to `user_id`: stored as if it had been routed to that user (threading
    is tried again: a Message-ID of that user's may have been the reason it was kept apart)."""
    parsed = mime.parse(raw, recipient=row.to_address, max_bytes=max(len(raw), mime.DEFAULT_MAX_BYTES))
    match = await match_thread(session, parsed.thread_ids())
    if match is not None and match.user_id != user_id:
        match = None
    our = (match.our_address if match else None) or _normalized(parsed.to_address) or UNKNOWN_ADDRESS
    return await _store(
        session,
        parsed,
        _Route(user_id, our, match),
        source=row.source,
        service_id=row.service_id,
        now=now,
        blob_id=row.blob_id,
    )


# -- storing --------------------------------------------------------------------------------------------------


async def _store(
    session: AsyncSession,
    parsed: mime.ParsedMail,
    route: _Route,
    *,
    source: str,
    service_id: int | None,
    now: dt.datetime,
    blob_id: int | None = None,
    apply_reply: bool = True,
) -> ReceiveResult:
    existing = await _existing_message(session, route.user_id, parsed.message_id)
    if existing is not None:
        return ReceiveResult(
            Status.DUPLICATE, user_id=route.user_id, conversation_id=existing[1], message_id=existing[0]
        )
    auto = classify.is_auto_reply(parsed)
    their = _normalized(parsed.from_address) or _normalized(parsed.sender) or UNKNOWN_ADDRESS
    new_blob = blob_id is None
    if blob_id is None:
        blob_id = await _store_blob(session, parsed, now=now)
    contact_id = await _contact(session, route.user_id, their, parsed.from_name, create=not auto, now=now)
    if contact_id is None and route.match is not None:
        contact_id = route.match.contact_id
    conversation = await _conversation(session, route.user_id, route.our_address, their, now=now)
    message_row_id = await _insert_message(
        session,
        parsed,
        route,
        conversation.id,
        their,
        source=source,
        service_id=service_id,
        blob_id=blob_id,
        auto=auto,
        now=now,
    )
    if message_row_id is None:  # the same message stored concurrently: it wins, this adds nothing
        if new_blob:
            await session.execute(delete(MailBlob).where(MailBlob.id == blob_id))
        existing = await _existing_message(session, route.user_id, parsed.message_id)
        return ReceiveResult(
            Status.DUPLICATE,
            user_id=route.user_id,
            conversation_id=existing[1] if existing else conversation.id,
            message_id=existing[0] if existing else None,
        )
    _count(conversation, parsed, route, contact_id, auto=auto, service_id=service_id, now=now)
    await session.flush()
    event_ids: tuple[int, ...] = ()
    if not auto:
        if route.match is not None:
            event_ids = await _record_reply(session, route.match, parsed, their, service_id=service_id, now=now)
            if apply_reply:
                await apply_replies(session, event_ids, now=now)
        if contact_id is not None:
            await _touch_contact(session, contact_id, now)
    return ReceiveResult(
        Status.STORED,
        user_id=route.user_id,
        conversation_id=conversation.id,
        message_id=message_row_id,
        event_ids=event_ids,
        subtask_id=route.match.subtask_id if route.match else None,
        is_auto_reply=auto,
    )


async def _existing_message(session: AsyncSession, user_id: int, message_id: str) -> tuple[int, int] | None:
    row = (
        await session.execute(
            select(ConversationMessage.id, ConversationMessage.conversation_id).where(
                ConversationMessage.user_id == user_id,
                ConversationMessage.message_id == message_id,
                ConversationMessage.direction == "inbound",
            )
        )
    ).first()
    return (row[0], row[1]) if row else None


async def _store_blob(session: AsyncSession, parsed: mime.ParsedMail, *, now: dt.datetime) -> int:
    blob = MailBlob(size=parsed.size, sha256=parsed.sha256, data=parsed.raw, created_at=now)
    session.add(blob)
    await session.flush()
    return blob.id


async def _contact(
    session: AsyncSession, user_id: int, address: str, name: str | None, *, create: bool, now: dt.datetime
) -> int | None:
    """The user's contact with this address; created (source `reply`) when unknown and `create`."""
    if address == UNKNOWN_ADDRESS:
        return None
    try:
        email = normalize_email(address)
    except BadInput:
        return None
    query = select(Contact.id).where(Contact.user_id == user_id, Contact.email_normalized == email.normalized)
    found = await session.scalar(query)
    if found is not None or not create:
        return found
    statement = (
        dialect_insert(session, Contact)
        .values(
            user_id=user_id,
            email=email.original,
            email_normalized=email.normalized,
            email_domain=email.domain,
            name=name,
            source=CONTACT_SOURCE,
            status=ContactStatus.ACTIVE,
            custom_attributes={},
            soft_bounce_streak=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "email_normalized"])
    )
    await session.execute(statement)
    return await session.scalar(query)


async def _conversation(session: AsyncSession, user_id: int, our: str, their: str, *, now: dt.datetime) -> Conversation:
    """Find or create (user, our address, their address), locked for this transaction's counter update."""
    statement = (
        dialect_insert(session, Conversation)
        .values(
            user_id=user_id,
            our_address=our[:320],
            their_address=their[:320],
            subject="",
            status=ConversationStatus.ACTIVE,
            message_count=0,
            unread_count=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "our_address", "their_address"])
    )
    await session.execute(statement)
    query = select(Conversation).where(
        Conversation.user_id == user_id,
        Conversation.our_address == our[:320],
        Conversation.their_address == their[:320],
    )
    if is_postgresql(session):
        query = query.with_for_update()
    conversation = (await session.scalars(query.execution_options(populate_existing=True))).one()
    return conversation


async def _insert_message(
    session: AsyncSession,
    parsed: mime.ParsedMail,
    route: _Route,
    conversation_id: int,
    their: str,
    *,
    source: str,
    service_id: int | None,
    blob_id: int,
    auto: bool,
    now: dt.datetime,
) -> int | None:
    statement = (
        dialect_insert(session, ConversationMessage)
        .values(
            conversation_id=conversation_id,
            user_id=route.user_id,
            direction="inbound",
            subtask_id=route.match.subtask_id if route.match else None,
            task_id=route.match.task_id if route.match else None,
            message_id=parsed.message_id,
            in_reply_to=parsed.in_reply_to,
            references=" ".join(parsed.references) or None,
            from_address=their[:320],
            from_name=parsed.from_name,
            to_address=route.our_address[:320],
            subject=parsed.subject,
            text_body=parsed.text_body,
            html_body=parsed.html_body,
            is_auto_reply=auto,
            source=source[:16],
            service_id=service_id,
            received_at=now,
            sent_at=parsed.date,
            read_at=now if auto else None,  # an automatic reply never asks for attention
            blob_id=blob_id,
            attachments=[a.as_dict() for a in parsed.attachments] or None,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["user_id", "message_id"], index_where=text("direction = 'inbound'"))
        .returning(ConversationMessage.id)
    )
    inserted = await session.scalar(statement)
    return None if inserted is None else int(inserted)


def _count(
    conversation: Conversation,
    parsed: mime.ParsedMail,
    route: _Route,
    contact_id: int | None,
    *,
    auto: bool,
    service_id: int | None,
    now: dt.datetime,
) -> None:
    conversation.message_count = (conversation.message_count or 0) + 1
    if not auto:
        conversation.unread_count = (conversation.unread_count or 0) + 1
        if conversation.status == ConversationStatus.CLOSED:  # a new message reopens; archived stays archived
            conversation.status = ConversationStatus.ACTIVE
    if conversation.last_message_at is None or now > conversation.last_message_at:
        conversation.last_message_at = now
    if not conversation.subject:
        conversation.subject = mime.normalize_subject(parsed.subject)
    if not conversation.their_name and parsed.from_name:
        conversation.their_name = parsed.from_name
    if conversation.contact_id is None:
        conversation.contact_id = contact_id
    if route.match is not None and conversation.subtask_id is None:
        conversation.task_id, conversation.subtask_id = route.match.task_id, route.match.subtask_id
    if service_id is not None:
        conversation.last_service_id = service_id
    conversation.updated_at = now


async def _record_reply(
    session: AsyncSession,
    match: ThreadMatch,
    parsed: mime.ParsedMail,
    their: str,
    *,
    service_id: int | None,
    now: dt.datetime,
) -> tuple[int, ...]:
    """The `replied` event of a person's reply, stored once per (user, Message-ID); `_store` applies it."""
    event = NormalizedEvent(
        event_type=EventType.REPLIED,
        provider_event="reply",
        raw={"message_id": parsed.message_id, "subject": parsed.subject[:200], "from": their},
        occurred_at=now,
        subtask_id=str(match.public_id),
        provider_event_id=f"reply:{match.user_id}:{parsed.message_id}",
        recipient=their,
        details={"matched_by": "message_id", "thread_id": match.matched_id},
    )
    ids = await event_ingest.store_returning_ids(
        session, [event_ingest.event_row(INBOUND_SOURCE, service_id, event, now=now)]
    )
    return tuple(ids)


async def _touch_contact(session: AsyncSession, contact_id: int, now: dt.datetime) -> None:
    """The contact wrote to us: `last_replied_at` (also when the mail was not threaded to a send)."""
    await session.execute(
        update(Contact)
        .where(Contact.id == contact_id, (Contact.last_replied_at.is_(None)) | (Contact.last_replied_at < now))
        .values(last_replied_at=now)
    )


# -- unrouted ---------------------------------------------------------------------------------------------------


async def _keep_unrouted(
    session: AsyncSession, mail: InboundMail, parsed: mime.ParsedMail, reason: str, *, now: dt.datetime
) -> ReceiveResult:
    existing = await session.scalar(select(UnroutedInbound.id).where(UnroutedInbound.message_id == parsed.message_id))
    if existing is not None:
        return ReceiveResult(Status.DUPLICATE, unrouted_id=existing, reason=reason)
    blob_id = await _store_blob(session, parsed, now=now)
    statement = (
        dialect_insert(session, UnroutedInbound)
        .values(
            received_at=now,
            source=mail.source[:16],
            service_id=mail.service_id,
            from_address=(parsed.from_address or parsed.sender or None),
            to_address=parsed.to_address,
            subject=parsed.subject,
            message_id=parsed.message_id,
            reason=reason[:32],
            blob_id=blob_id,
        )
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(UnroutedInbound.id)
    )
    inserted = await session.scalar(statement)
    if inserted is None:
        await session.execute(delete(MailBlob).where(MailBlob.id == blob_id))
        existing = await session.scalar(
            select(UnroutedInbound.id).where(UnroutedInbound.message_id == parsed.message_id)
        )
        return ReceiveResult(Status.DUPLICATE, unrouted_id=existing, reason=reason)
    return ReceiveResult(Status.UNROUTED, unrouted_id=inserted, reason=reason)


async def keep_unreadable(session: AsyncSession, mail: InboundMail, error: str, *, now: dt.datetime) -> ReceiveResult:
    """A mail that could not be handled after every attempt (`edm.conversations.inbound_queue`): kept unrouted with
    the reason `unreadable`, raw and all, so an admin can look at it (and assign it once the cause is fixed). Its
    identity is the hash of its bytes: the same mail failing twice is kept once."""
    digest = hashlib.sha256(mail.raw).hexdigest()
    message_id = f"unreadable-{digest[:40]}@edm.invalid"
    existing = await session.scalar(select(UnroutedInbound.id).where(UnroutedInbound.message_id == message_id))
    if existing is not None:
        return ReceiveResult(Status.DUPLICATE, unrouted_id=existing, reason=UNREADABLE)
    blob = MailBlob(size=len(mail.raw), sha256=digest, data=mail.raw, created_at=now)
    session.add(blob)
    await session.flush()
    row = UnroutedInbound(
        received_at=now,
        source=mail.source[:16],
        service_id=mail.service_id,
        from_address=(mail.sender or None) and mail.sender[:320],
        to_address=(mail.recipient or None) and mail.recipient[:320],
        message_id=message_id,
        reason=UNREADABLE,
        error=error[:500],
        blob_id=blob.id,
    )
    session.add(row)
    await session.flush()
    return ReceiveResult(Status.UNROUTED, unrouted_id=row.id, reason=UNREADABLE)


def _normalized(address: str | None) -> str | None:
    if not address:
        return None
    try:
        return normalize_email(address).normalized
    except BadInput:
        text_value = address.strip().lower()
        return text_value[:320] if "@" in text_value else None
