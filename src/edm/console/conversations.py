"""Conversations (`/conversations`, `/conversations/{id}`, `/conversations/new`): the inbox with its unread counts,
status tabs and search; a thread with every message (inbound HTML in a sandboxed frame, remote images held back until
asked, attachments to download; outbound answers with their send state and a retry button when they failed), the
answer box with the From warning, status changes and "mark as unread"; starting a conversation with a contact. The
service functions behind `/api/v1/conversations*` (docs/conversations.md).

Opening a thread marks its inbound messages read, as every mail client does; read-only users may read and mark read
but not answer or change a status (the frame refuses their writes).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlencode

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.conversations import attachment_response, frame_response
from edm.api.deps import IdPath, Session
from edm.clock import utc_now
from edm.console.auth import CurrentViewer, Viewer
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.contacts import service as contacts
from edm.content import service as content
from edm.conversations import answers, service
from edm.errors import BadInput, Conflict, NotFound
from edm.paging import MAX_ID, Page, decode_cursor_or_first, page_of

router = new_router()

PER_PAGE = 50
CONTACT_CONVERSATIONS = 10  # shown on a contact's page
STATUSES = {"active": N_("Active"), "closed": N_("Closed"), "archived": N_("Archived")}
# An outbound message's send state, as its SubTask says.
SEND_STATES = {
    "pending": N_("Queued"),
    "allocated": N_("Sending"),
    "sent": N_("Sent"),
    "failed": N_("Not sent"),
    "uncertain": N_("Sent (not confirmed)"),
    "suppressed": N_("Not sent: the address may not be mailed"),
    "cancelled": N_("Cancelled"),
}
NOTICES = {
    "queued": N_("Your answer is queued: it goes out ahead of campaign mail."),
    "retried": N_("The answer is queued again."),
    "started": N_("The conversation was started: its first message is queued."),
    "status": N_("The conversation's status was changed."),
}
NO_SENDER = N_(
    "None of your senders has this conversation's address any more, so it cannot be answered from EDM. "
    "Create a sender with that name first."
)
TEXT_REQUIRED = N_("Write the answer.")


# -- the inbox ----------------------------------------------------------------------------------------------


def _filters(request: Request) -> tuple[service.ConversationFilter, dict[str, str]]:
    """The list's filters from the URL (unknown values dropped) and what the links keep."""
    params = request.query_params
    status = params.get("status", "")
    status = status if status in STATUSES else ""
    unread = "1" if params.get("unread") == "1" else ""
    q = params.get("q", "").replace("\x00", "").strip()[:200]
    kept = {name: value for name, value in (("status", status), ("unread", unread), ("q", q)) if value}
    return service.ConversationFilter(status=status or None, unread_only=bool(unread), q=q or None), kept


@router.get("/conversations")
async def inbox(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    catalogue = catalogue_of(request)
    filters, kept = _filters(request)
    cursor = request.query_params.get("cursor")
    after, cursor = decode_cursor_or_first(cursor)
    page = Page(PER_PAGE, after)
    rows = await service.list_conversations(session, user_id=viewer.id, filters=filters, page=page)
    result = page_of(rows, page)
    unread_conversations, unread_messages = await service.unread_totals(session, user_id=viewer.id)
    tabs = [("", N_("All"))] + list(STATUSES.items())
    context: dict[str, Any] = {
        "conversations": result["items"],
        "next_query": urlencode({**kept, "cursor": result["next_cursor"]}) if result["next_cursor"] else "",
        "first_page": cursor is None,
        "kept": kept,
        "filtered": bool(kept),
        "tabs": [
            (value, label, "?" + urlencode({k: v for k, v in {**kept, "status": value}.items() if v}))
            for value, label in tabs
        ],
        "status": kept.get("status", ""),
        "statuses": STATUSES,
        "unread_conversations": unread_conversations,
        "unread_messages": unread_messages,
        "notice": catalogue.gettext(NOTICES["started"]) if request.query_params.get("notice") == "started" else "",
    }
    return render(request, "conversations/list.html", context)


# -- starting one -------------------------------------------------------------------------------------------


async def _new_page(
    request: Request, session: Session, viewer: Viewer, *, form: Form, status: int = 200
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    contact = None
    if form["contact_id"].isdigit() and 0 < int(form["contact_id"]) <= MAX_ID:
        try:
            contact = await contacts.get_contact(session, user_id=viewer.id, contact_id=int(form["contact_id"]))
        except NotFound:
            contact = None
    senders = await content.sender_page(session, user_id=viewer.id, page=Page(200, None))
    sender_options = [(str(s.id), f"{s.display_name or s.local_part} <{s.local_part}@…>") for s in senders.items]
    context = {
        "form": form,
        "contact": contact,
        "sender_options": [("", catalogue.gettext(N_("Choose a sender")))] + sender_options,
    }
    return render(request, "conversations/new.html", context, status=status)


@router.get("/conversations/new")
async def new_page(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = Form({"contact_id": request.query_params.get("contact_id", "")})
    return await _new_page(request, session, viewer, form=form)


@router.post("/conversations/new")
async def start(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        contact_id = _id_of(form, "contact_id", N_("Choose a contact."))
        sender_id = _id_of(form, "sender_id", N_("Choose a sender."))
        if not form["text"].strip():
            raise form.invalid("text", N_("Write the message."))
        async with session.begin_nested():
            sent = await answers.start(
                session, viewer, contact_id, sender_id, form["subject"], form["text"], now=utc_now()
            )
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), exc)
        return await _new_page(request, session, viewer, form=form, status=exc.status)
    return RedirectResponse(f"/conversations/{sent['conversation_id']}?notice=started", status_code=303)


def _id_of(form: Form, name: str, missing: str) -> int:
    text = form[name]
    if not text.isdigit() or not 0 < int(text) <= MAX_ID:
        raise form.invalid(name, missing)
    return int(text)


# -- a thread -----------------------------------------------------------------------------------------------


async def _thread_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    conversation_id: int,
    *,
    answer: Form | None = None,
    status: int = 200,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    conversation = await service.thread(session, user_id=viewer.id, conversation_id=conversation_id)
    route: dict[str, Any] | None = None
    no_sender = False
    if viewer.can_write:
        try:
            route = await answers.answer_route(session, viewer, conversation_id, utc_now())
        except BadInput:  # none of the user's senders has the conversation's address
            no_sender = True
    notice = request.query_params.get("notice", "")
    context = {
        "conversation": conversation,
        "messages": conversation.messages,
        "route": route,
        "no_sender": catalogue.gettext(NO_SENDER) if no_sender else "",
        "answer": answer or Form(),
        "statuses": STATUSES,
        "send_states": SEND_STATES,
        "images_for": _message_ids(request.query_params.get("images", "")),
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "conversations/thread.html", context, status=status)


def _message_ids(text: str) -> set[int]:
    """`?images=12,14`: the messages whose remote images the reader asked to load."""
    return {int(part) for part in text.split(",")[:50] if part.isdigit() and 0 < int(part) <= MAX_ID}


@router.get("/conversations/{conversation_id}")
async def thread_page(conversation_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    conversation = await service.get_conversation(session, user_id=viewer.id, conversation_id=conversation_id)
    if conversation.unread_count:
        await service.mark_read(session, user_id=viewer.id, conversation_id=conversation_id, now=utc_now())
        # The frame's badge was counted before this read: one conversation fewer is unread now.
        viewer = dataclasses.replace(viewer, unread_conversations=max(viewer.unread_conversations - 1, 0))
        request.state.viewer = viewer
    return await _thread_page(request, session, viewer, conversation_id)


@router.post("/conversations/{conversation_id}/reply")
async def reply(conversation_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        if not form["text"].strip():
            raise form.invalid("text", TEXT_REQUIRED)
        async with session.begin_nested():  # a refusal (credit, no sender) leaves nothing half-written
            sent = await answers.reply(
                session, viewer, conversation_id, form["text"], now=utc_now(), actor=str(viewer.id)
            )
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), exc)
        return await _thread_page(request, session, viewer, conversation_id, answer=form, status=exc.status)
    return RedirectResponse(f"/conversations/{conversation_id}?notice=queued#m-{sent['id']}", status_code=303)


@router.post("/conversations/{conversation_id}/messages/{message_id}/retry")
async def retry(
    conversation_id: IdPath, message_id: IdPath, request: Request, session: Session, viewer: CurrentViewer
) -> Response:
    try:
        async with session.begin_nested():
            sent = await answers.retry(
                session, viewer, message_id, now=utc_now(), conversation_id=conversation_id, actor=str(viewer.id)
            )
    except (BadInput, Conflict) as exc:
        form = Form()
        form.fail(catalogue_of(request), exc)
        return await _thread_page(request, session, viewer, conversation_id, answer=form, status=exc.status)
    return RedirectResponse(f"/conversations/{conversation_id}?notice=retried#m-{sent['id']}", status_code=303)


@router.post("/conversations/{conversation_id}/status")
async def set_status(conversation_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    status = form["status"]
    if status not in STATUSES:
        raise BadInput.field("status", "must be active, closed or archived")
    await service.set_status(session, user_id=viewer.id, conversation_id=conversation_id, status=status, now=utc_now())
    return RedirectResponse(f"/conversations/{conversation_id}?notice=status", status_code=303)


@router.post("/conversations/{conversation_id}/unread")
async def mark_unread(conversation_id: IdPath, session: Session, viewer: CurrentViewer) -> Response:
    """Back to the inbox with the newest inbound message unread again (opening the thread would read it)."""
    await service.mark_unread(session, user_id=viewer.id, conversation_id=conversation_id, now=utc_now())
    return RedirectResponse("/conversations", status_code=303)


@router.get("/conversations/{conversation_id}/messages/{message_id}/html")
async def message_html(
    conversation_id: IdPath,
    message_id: IdPath,
    request: Request,
    session: Session,
    viewer: CurrentViewer,
    images: str = Query("", max_length=8),
) -> Response:
    """The message sanitized, for the thread's sandboxed frame: remote images only with `images=load`."""
    origin = str(request.base_url).rstrip("/")
    base = f"{origin}/conversations/{conversation_id}/messages/{message_id}"
    document, csp = await service.message_html(
        session,
        user_id=viewer.id,
        conversation_id=conversation_id,
        message_id=message_id,
        load_images=images == "load",
        own_origin=origin,
        attachment_url=lambda index: f"{base}/attachments/{index}",
    )
    return frame_response(document, csp)


@router.get("/conversations/{conversation_id}/messages/{message_id}/attachments/{index}")
async def attachment(
    conversation_id: IdPath, message_id: IdPath, index: int, session: Session, viewer: CurrentViewer
) -> Response:
    if not 0 <= index <= 1000:
        raise NotFound(f"attachment {index} not found")
    data, content_type, name = await service.attachment(
        session, user_id=viewer.id, conversation_id=conversation_id, message_id=message_id, index=index
    )
    return attachment_response(data, content_type, name)


# -- for other pages ----------------------------------------------------------------------------------------


async def of_contact(session: Session, viewer: Viewer, contact_id: int) -> list[Any]:
    """A contact's conversations, newest first (its page lists them)."""
    rows = await service.list_conversations(
        session,
        user_id=viewer.id,
        filters=service.ConversationFilter(contact_id=contact_id),
        page=Page(CONTACT_CONVERSATIONS, None),
    )
    return rows[:CONTACT_CONVERSATIONS]
