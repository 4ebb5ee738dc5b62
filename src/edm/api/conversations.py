"""Conversations: the caller's own replies and threads, and the admins' unrouted inbound mail
(docs/conversations.md#api). Starting a conversation and answering live in `edm.api.conversation_answers`.

Reading and marking read/unread is open to read-only users too (docs/auth.md); changing a conversation's status needs
write access. Another user's conversation answers 404; the admin routes answer 403 to non-admins, as every admin
route does.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from edm import clock
from edm.api.deps import Admin, AdminWriter, CurrentCaller, IdPath, IdQuery, Paging, Session, Writer
from edm.conversations import service
from edm.conversations.schemas import (
    AssignIn,
    AssignOut,
    ConversationDetailOut,
    ConversationOut,
    ConversationPageOut,
    ConversationPatch,
    ConversationStatusName,
    UnroutedOut,
)
from edm.paging import PageOut, page_of

router = APIRouter(prefix="/api/v1", tags=["conversations"])

_FRAME_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@router.get("/conversations")
async def list_conversations(
    session: Session,
    caller: CurrentCaller,
    page: Paging,
    status: ConversationStatusName | None = None,
    unread: Annotated[bool, Query(description="only conversations with unread messages")] = False,
    q: Annotated[str | None, Query(max_length=200, description="part of an address, a name or the subject")] = None,
    contact_id: IdQuery = None,
) -> ConversationPageOut:
    """The caller's conversations, newest activity first, with the caller's unread totals."""
    filters = service.ConversationFilter(status=status, unread_only=unread, q=q or None, contact_id=contact_id)
    rows = await service.list_conversations(session, user_id=caller.id, filters=filters, page=page)
    unread_conversations, unread_messages = await service.unread_totals(session, user_id=caller.id)
    body = page_of([ConversationOut.model_validate(r) for r in rows], page)
    return ConversationPageOut(**body, unread_conversations=unread_conversations, unread_messages=unread_messages)


@router.get("/conversations/{conversation_id}")
async def get_conversation(conversation_id: IdPath, session: Session, caller: CurrentCaller) -> ConversationDetailOut:
    """One conversation and its messages, oldest first; outbound messages show their send state."""
    return await service.thread(session, user_id=caller.id, conversation_id=conversation_id)


@router.patch("/conversations/{conversation_id}")
async def patch_conversation(
    conversation_id: IdPath, body: ConversationPatch, session: Session, caller: Writer
) -> ConversationOut:
    """Set the status: active, closed (a new inbound message reopens it) or archived (stays archived)."""
    row = await service.set_status(
        session, user_id=caller.id, conversation_id=conversation_id, status=body.status, now=clock.utc_now()
    )
    return ConversationOut.model_validate(row)


@router.post("/conversations/{conversation_id}/read")
async def read_conversation(conversation_id: IdPath, session: Session, caller: CurrentCaller) -> ConversationOut:
    """Mark every inbound message read."""
    row = await service.mark_read(session, user_id=caller.id, conversation_id=conversation_id, now=clock.utc_now())
    return ConversationOut.model_validate(row)


@router.post("/conversations/{conversation_id}/unread")
async def unread_conversation(conversation_id: IdPath, session: Session, caller: CurrentCaller) -> ConversationOut:
    """Mark the newest inbound message unread again."""
    row = await service.mark_unread(session, user_id=caller.id, conversation_id=conversation_id, now=clock.utc_now())
    return ConversationOut.model_validate(row)


@router.get(
    "/conversations/{conversation_id}/messages/{message_id}/html",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "the sanitized message, to show in a frame"}},
)
async def message_html(
    request: Request,
    conversation_id: IdPath,
    message_id: IdPath,
    session: Session,
    caller: CurrentCaller,
    images: Annotated[str | None, Query(pattern="^load$", description="`load`: show remote images")] = None,
) -> Response:
    """The message's HTML, sanitized (no script, no event handler, no form, no frame; remote images replaced by a
    placeholder unless `images=load`), served with a Content-Security-Policy that sandboxes it."""
    origin = str(request.base_url).rstrip("/")

    def attachment_url(index: int) -> str:
        return f"{origin}/api/v1/conversations/{conversation_id}/messages/{message_id}/attachments/{index}"

    document, csp = await service.message_html(
        session,
        user_id=caller.id,
        conversation_id=conversation_id,
        message_id=message_id,
        load_images=images == "load",
        own_origin=origin,
        attachment_url=attachment_url,
    )
    return frame_response(document, csp)


@router.get(
    "/conversations/{conversation_id}/messages/{message_id}/attachments/{index}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the attachment as received"}},
)
async def message_attachment(
    conversation_id: IdPath,
    message_id: IdPath,
    index: Annotated[int, Path(ge=0, le=1000)],
    session: Session,
    caller: CurrentCaller,
) -> Response:
    """One attachment (its index in the message's `attachments`), always as a download."""
    data, content_type, name = await service.attachment(
        session, user_id=caller.id, conversation_id=conversation_id, message_id=message_id, index=index
    )
    return attachment_response(data, content_type, name)


# -- unrouted inbound mail (admins) ------------------------------------------------------------------------


@router.get("/admin/inbound")
async def list_unrouted(
    session: Session,
    caller: Admin,
    page: Paging,
    include_resolved: Annotated[bool, Query(description="also assigned and discarded mail")] = False,
) -> PageOut[UnroutedOut]:
    """Inbound mail no user owns, newest first (docs/conversations.md#unrouted-mail)."""
    rows = await service.list_unrouted(session, page=page, include_resolved=include_resolved)
    return PageOut[UnroutedOut].model_validate(page_of([UnroutedOut.model_validate(r) for r in rows], page))


@router.post("/admin/inbound/{unrouted_id}/assign")
async def assign_unrouted(
    unrouted_id: IdPath, body: AssignIn, request: Request, session: Session, caller: AdminWriter
) -> AssignOut:
    """Give the mail to a user: stored in that user's conversation as if it had been routed there (audited)."""
    row, result = await service.assign_unrouted(
        session, unrouted_id=unrouted_id, user_id=body.user_id, actor=caller.actor(request), now=clock.utc_now()
    )
    return AssignOut(
        unrouted=UnroutedOut.model_validate(row),
        status=result.status,
        conversation_id=result.conversation_id,
        message_id=result.message_id,
    )


@router.post("/admin/inbound/{unrouted_id}/discard")
async def discard_unrouted(unrouted_id: IdPath, request: Request, session: Session, caller: AdminWriter) -> UnroutedOut:
    """Drop the mail (its raw message is deleted; audited)."""
    row = await service.discard_unrouted(
        session, unrouted_id=unrouted_id, actor=caller.actor(request), now=clock.utc_now()
    )
    return UnroutedOut.model_validate(row)


def frame_response(document: str, csp: str) -> Response:
    """A sanitized message as the page a sandboxed frame shows (the API's and the console's)."""
    headers = {**_FRAME_HEADERS, "Content-Security-Policy": csp, "X-Frame-Options": "SAMEORIGIN"}
    return Response(document, media_type="text/html; charset=utf-8", headers=headers)


def attachment_response(data: bytes, content_type: str, name: str) -> Response:
    """An attachment as a download that no browser renders as a page of our origin."""
    headers = {
        **_FRAME_HEADERS,
        "Content-Disposition": f"attachment; filename=\"{_ascii_name(name)}\"; filename*=UTF-8''{quote(name)}",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    return Response(data, media_type=_safe_type(content_type), headers=headers)


def _ascii_name(name: str) -> str:
    cleaned = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    return cleaned.strip() or "attachment"


def _safe_type(content_type: str) -> str:
    """Never serve something a browser would render as a page from our origin."""
    lowered = content_type.lower()
    if "html" in lowered or "xml" in lowered or "javascript" in lowered or lowered.startswith("text/"):
        return "application/octet-stream" if not lowered.startswith("text/plain") else "text/plain; charset=utf-8"
    return content_type
