"""Conversations for their owner, unrouted mail for admins (docs/conversations.md#api). Called by the API and the
CLI with their session; nothing here commits.

A user only ever reaches their own conversations (another user's id answers 404, existence not leaked); unrouted
mail is the admins' (the entry points check the role).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.conversations import display, ingest, mime
from edm.conversations.schemas import AttachmentOut, ConversationDetailOut, ConversationOut, MessageOut
from edm.db.dialect import escape_like, is_postgresql
from edm.db.owned import get_own
from edm.errors import BadInput, Conflict, NotFound
from edm.models.conversations import Conversation, ConversationMessage, MailBlob, UnroutedInbound
from edm.models.tasks import SubTask
from edm.models.users import User
from edm.paging import MAX_ID, Page
from edm.system.service import Actor, audit

THREAD_LIMIT = 500  # newest messages shown in one thread answer
# `cid:` images up to this size are embedded in the shown HTML; larger ones link to the attachment.
INLINE_IMAGE_MAX_BYTES = 512 * 1024
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


@dataclasses.dataclass(frozen=True, slots=True)
class ConversationFilter:
    status: str | None = None
    unread_only: bool = False
    q: str | None = None
    contact_id: int | None = None


# -- the inbox ------------------------------------------------------------------------------------------------


async def list_conversations(
    session: AsyncSession, *, user_id: int, filters: ConversationFilter, page: Page
) -> list[Conversation]:
    """The user's conversations, newest activity first, `page.limit + 1` rows (keyset on last_message_at, id: the
    cursor names the last conversation of the previous page)."""
    c = Conversation
    query = select(c).where(c.user_id == user_id)
    if filters.status:
        if filters.status not in ingest.ConversationStatus.ALL:
            raise BadInput.field("status", f"must be one of {', '.join(ingest.ConversationStatus.ALL)}")
        query = query.where(c.status == filters.status)
    if filters.unread_only:
        query = query.where(c.unread_count > 0)
    if filters.contact_id is not None:
        query = query.where(c.contact_id == filters.contact_id)
    if filters.q:
        pattern = f"%{escape_like(filters.q.strip().lower())}%"
        query = query.where(
            or_(
                func.lower(c.their_address).like(pattern, escape="\\"),
                func.lower(c.our_address).like(pattern, escape="\\"),
                func.lower(func.coalesce(c.their_name, "")).like(pattern, escape="\\"),
                func.lower(c.subject).like(pattern, escape="\\"),
            )
        )
    if page.after_id is not None:
        anchor = (
            await session.execute(select(c.last_message_at).where(c.id == page.after_id, c.user_id == user_id))
        ).first()
        if anchor is not None:
            at = anchor[0]
            if at is None:
                query = query.where(c.last_message_at.is_(None), c.id < page.after_id)
            else:
                query = query.where(
                    or_(
                        c.last_message_at < at,
                        and_(c.last_message_at == at, c.id < page.after_id),
                        c.last_message_at.is_(None),
                    )
                )
        else:
            query = query.where(c.id < page.after_id)
    query = query.order_by(c.last_message_at.desc().nulls_last(), c.id.desc()).limit(page.limit + 1)
    return list((await session.scalars(query)).all())


async def unread_totals(session: AsyncSession, *, user_id: int) -> tuple[int, int]:
    """(conversations with unread messages, unread messages) of the user."""
    row = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(Conversation.unread_count), 0)).where(
                Conversation.user_id == user_id, Conversation.unread_count > 0
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def get_conversation(session: AsyncSession, *, user_id: int, conversation_id: int) -> Conversation:
    return await get_own(session, Conversation, user_id=user_id, object_id=conversation_id, what="conversation")


async def thread(session: AsyncSession, *, user_id: int, conversation_id: int) -> ConversationDetailOut:
    """One conversation with its messages, oldest first (the newest THREAD_LIMIT); outbound messages carry their
    SubTask's send state."""
    conversation = await get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    rows = list(
        (
            await session.scalars(
                select(ConversationMessage)
                .where(ConversationMessage.conversation_id == conversation.id)
                .order_by(ConversationMessage.id.desc())
                .limit(THREAD_LIMIT)
            )
        ).all()
    )
    rows.reverse()
    sends = await _send_states(session, [m.subtask_id for m in rows if m.direction == "outbound" and m.subtask_id])
    messages = [_message_out(m, sends.get(m.subtask_id or 0)) for m in rows]
    return ConversationDetailOut(**ConversationOut.model_validate(conversation).model_dump(), messages=messages)


async def get_message(
    session: AsyncSession, *, user_id: int, conversation_id: int, message_id: int
) -> ConversationMessage:
    found = None
    if 0 < message_id <= MAX_ID and 0 < conversation_id <= MAX_ID:
        found = await session.scalar(
            select(ConversationMessage).where(
                ConversationMessage.id == message_id,
                ConversationMessage.conversation_id == conversation_id,
                ConversationMessage.user_id == user_id,
            )
        )
    if found is None:
        raise NotFound(f"message {message_id} not found")
    return found


async def message_html(
    session: AsyncSession,
    *,
    user_id: int,
    conversation_id: int,
    message_id: int,
    load_images: bool,
    own_origin: str,
    attachment_url: Callable[[int], str],
) -> tuple[str, str]:
    """(a whole sanitized HTML document, its Content-Security-Policy): the message's HTML, or its text escaped."""
    message = await get_message(session, user_id=user_id, conversation_id=conversation_id, message_id=message_id)
    if message.html_body:
        cids = await _inline_images(session, message, attachment_url)
        body = display.sanitize(message.html_body, load_remote_images=load_images, cid_url=cids)
    else:
        body = display.text_as_html(message.text_body or "")
    csp = display.content_security_policy(own_origin=own_origin, remote_images=load_images)
    return display.page(body, title=message.subject), csp


async def _inline_images(
    session: AsyncSession, message: ConversationMessage, attachment_url: Callable[[int], str]
) -> dict[str, str]:
    """Content-ID → what a `cid:` image shows: small images embedded as `data:` URLs (the frame that shows the
    message is sandboxed into an opaque origin, so a browser sends it no session cookie and a link to our own
    attachment route would not load), anything else the attachment's download URL."""
    with_cid = [(index, a) for index, a in enumerate(message.attachments or []) if a.get("content_id")]
    embed = {
        int(a["part"])
        for _index, a in with_cid
        if str(a.get("type", "")).lower() in INLINE_IMAGE_TYPES and int(a.get("size") or 0) <= INLINE_IMAGE_MAX_BYTES
    }
    raw = None
    if embed and message.blob_id is not None:
        raw = await session.scalar(select(MailBlob.data).where(MailBlob.id == message.blob_id))
    parts = mime.parts_by_number(raw, embed) if raw is not None else {}
    cids = {}
    for index, a in with_cid:
        data = parts.get(int(a["part"]))
        cid = str(a["content_id"]).lower()
        if data is not None and data[1] in INLINE_IMAGE_TYPES:
            cids[cid] = f"data:{data[1]};base64,{base64.b64encode(data[0]).decode('ascii')}"
        else:
            cids[cid] = attachment_url(index)
    return cids


async def attachment(
    session: AsyncSession, *, user_id: int, conversation_id: int, message_id: int, index: int
) -> tuple[bytes, str, str]:
    """(bytes, content type, file name) of attachment `index` of a message, read from its stored raw message."""
    message = await get_message(session, user_id=user_id, conversation_id=conversation_id, message_id=message_id)
    attachments = message.attachments or []
    if not 0 <= index < len(attachments) or message.blob_id is None:
        raise NotFound(f"attachment {index} not found")
    raw = await session.scalar(select(MailBlob.data).where(MailBlob.id == message.blob_id))
    if raw is None:
        raise NotFound(f"attachment {index} not found")
    data, content_type, name = mime.attachment_part(raw, int(attachments[index]["part"]))
    return data, content_type, name or attachments[index].get("name") or f"attachment-{index}"


async def set_status(
    session: AsyncSession, *, user_id: int, conversation_id: int, status: str, now: dt.datetime
) -> Conversation:
    if status not in ingest.ConversationStatus.ALL:
        raise BadInput.field("status", f"must be one of {', '.join(ingest.ConversationStatus.ALL)}")
    conversation = await get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    conversation.status = status
    conversation.updated_at = now
    await session.flush()
    return conversation


async def mark_read(session: AsyncSession, *, user_id: int, conversation_id: int, now: dt.datetime) -> Conversation:
    conversation = await get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    await session.execute(
        update(ConversationMessage)
        .where(
            ConversationMessage.conversation_id == conversation.id,
            ConversationMessage.direction == "inbound",
            ConversationMessage.read_at.is_(None),
        )
        .values(read_at=now)
    )
    conversation.unread_count = 0
    await session.flush()
    return conversation


async def mark_unread(session: AsyncSession, *, user_id: int, conversation_id: int, now: dt.datetime) -> Conversation:
    """The newest inbound message becomes unread again (a conversation without inbound mail stays as it is)."""
    conversation = await get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    newest = await session.scalar(
        select(func.max(ConversationMessage.id)).where(
            ConversationMessage.conversation_id == conversation.id, ConversationMessage.direction == "inbound"
        )
    )
    if newest is not None:
        await session.execute(update(ConversationMessage).where(ConversationMessage.id == newest).values(read_at=None))
        conversation.unread_count = int(
            await session.scalar(
                select(func.count()).where(
                    ConversationMessage.conversation_id == conversation.id,
                    ConversationMessage.direction == "inbound",
                    ConversationMessage.read_at.is_(None),
                )
            )
            or 0
        )
    await session.flush()
    return conversation


# -- unrouted inbound mail (admins) ------------------------------------------------------------------------


async def list_unrouted(session: AsyncSession, *, page: Page, include_resolved: bool = False) -> list[UnroutedInbound]:
    """Unrouted mail, newest first, `page.limit + 1` rows; open ones only unless `include_resolved`."""
    query = select(UnroutedInbound)
    if not include_resolved:
        query = query.where(UnroutedInbound.resolved_at.is_(None))
    if page.after_id is not None:
        query = query.where(UnroutedInbound.id < page.after_id)
    return list((await session.scalars(query.order_by(UnroutedInbound.id.desc()).limit(page.limit + 1))).all())


async def assign_unrouted(
    session: AsyncSession, *, unrouted_id: int, user_id: int, actor: Actor, now: dt.datetime
) -> tuple[UnroutedInbound, ingest.ReceiveResult]:
    """Give an unrouted mail to a user: stored in that user's conversation as if it had been routed there."""
    row = await _open_unrouted(session, unrouted_id)
    if await session.get(User, user_id) is None:
        raise NotFound(f"user {user_id} not found")
    raw = await session.scalar(select(MailBlob.data).where(MailBlob.id == row.blob_id)) if row.blob_id else None
    if raw is None:
        raise Conflict(f"inbound mail {unrouted_id} has no stored message to assign")
    result = await ingest.receive_assigned(session, row, raw, user_id=user_id, now=now)
    row.resolved_at, row.resolution, row.assigned_user_id, row.resolved_by = now, "assigned", user_id, actor.user_id
    await audit(
        session,
        actor,
        "inbound.assign",
        target_type="unrouted_inbound",
        target_id=row.id,
        details={"user_id": user_id, "conversation_id": result.conversation_id, "status": result.status},
    )
    return row, result


async def discard_unrouted(
    session: AsyncSession, *, unrouted_id: int, actor: Actor, now: dt.datetime
) -> UnroutedInbound:
    """Drop an unrouted mail: its raw message is deleted, the row stays (resolved `discarded`) for the record."""
    row = await _open_unrouted(session, unrouted_id)
    blob_id = row.blob_id
    row.resolved_at, row.resolution, row.resolved_by, row.blob_id = now, "discarded", actor.user_id, None
    await session.flush()
    if blob_id is not None:
        await session.execute(delete(MailBlob).where(MailBlob.id == blob_id))
    await audit(
        session,
        actor,
        "inbound.discard",
        target_type="unrouted_inbound",
        target_id=row.id,
        details={"from": row.from_address, "to": row.to_address, "reason": row.reason},
    )
    return row


async def unrouted_detail(session: AsyncSession, *, unrouted_id: int) -> tuple[UnroutedInbound, str | None]:
    """One unrouted mail and its text (the text part, else nothing: its HTML is not shown to admins unsanitized),
    read from the stored raw message, so that an admin can tell whose it is before assigning it."""
    row = await session.get(UnroutedInbound, unrouted_id) if 0 < unrouted_id <= MAX_ID else None
    if row is None:
        raise NotFound(f"inbound mail {unrouted_id} not found")
    raw = await session.scalar(select(MailBlob.data).where(MailBlob.id == row.blob_id)) if row.blob_id else None
    text = mime.parse(raw, max_bytes=len(raw) + 1).text_body if raw is not None else None
    return row, text


async def _open_unrouted(session: AsyncSession, unrouted_id: int) -> UnroutedInbound:
    row = None
    if 0 < unrouted_id <= MAX_ID:
        query = select(UnroutedInbound).where(UnroutedInbound.id == unrouted_id)
        if is_postgresql(session):
            query = query.with_for_update()
        row = await session.scalar(query)
    if row is None:
        raise NotFound(f"inbound mail {unrouted_id} not found")
    if row.resolved_at is not None:
        raise Conflict(f"inbound mail {unrouted_id} was already {row.resolution}")
    return row


# -- helpers ------------------------------------------------------------------------------------------------


async def _send_states(session: AsyncSession, subtask_ids: Sequence[int]) -> dict[int, Any]:
    """SubTask id -> (send_state, last_error, sent_at) of the outbound messages' SubTasks."""
    if not subtask_ids:
        return {}
    rows = await session.execute(
        select(SubTask.id, SubTask.send_state, SubTask.last_error, SubTask.sent_at).where(
            SubTask.id.in_(sorted(set(subtask_ids)))
        )
    )
    return {row.id: row for row in rows}


def _message_out(message: ConversationMessage, send: Any) -> MessageOut:
    return MessageOut(
        id=message.id,
        direction="outbound" if message.direction == "outbound" else "inbound",
        message_id=message.message_id,
        in_reply_to=message.in_reply_to,
        from_address=message.from_address,
        from_name=message.from_name,
        to_address=message.to_address,
        subject=message.subject,
        text_body=message.text_body,
        has_html=bool(message.html_body),
        is_auto_reply=message.is_auto_reply,
        source=message.source,
        service_id=message.service_id,
        received_at=message.received_at,
        sent_at=(send.sent_at if send is not None and send.sent_at else message.sent_at),
        read_at=message.read_at,
        attachments=[
            AttachmentOut(
                index=index,
                name=a.get("name"),
                type=str(a.get("type") or "application/octet-stream"),
                size=int(a.get("size") or 0),
                inline=bool(a.get("inline")),
                content_id=a.get("content_id"),
            )
            for index, a in enumerate(message.attachments or [])
        ],
        task_id=message.task_id,
        subtask_id=message.subtask_id,
        send_state=send.send_state if send is not None else None,
        last_error=send.last_error if send is not None else None,
    )
