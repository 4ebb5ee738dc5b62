"""Senders (`/senders`): the viewer's senders, a form to add one, an edit page and the delete (archive) button —
the service functions behind `/api/v1/senders` (docs/console.md#what-it-offers-today).

Every write is a form POST answered by a redirect with a `notice` (post/redirect/get); a refused write shows the
page again with each message beside its field and what was typed kept.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.console.auth import CurrentViewer, Viewer
from edm.console.errors import message_for
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.content import service
from edm.content.schemas import SenderCreate, SenderOut, SenderUpdate
from edm.errors import BadInput, Conflict
from edm.paging import Page, decode_cursor_or_first

router = new_router()

PER_PAGE = 50
NOTICES = {
    "added": N_("The sender was added."),
    "saved": N_("The sender was saved."),
    "deleted": N_("The sender was deleted."),
}


def _values(form: Form) -> dict[str, str | None]:
    return {
        "local_part": form["local_part"],
        "display_name": form["display_name"] or None,
        "reply_to": form["reply_to"] or None,
    }


async def _list_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    cursor: str | None = None,
    form: Form | None = None,
    status: int = 200,
    notice: str | None = None,
    error: str = "",
) -> HTMLResponse:
    after, cursor = decode_cursor_or_first(cursor)
    senders = await service.sender_page(session, user_id=viewer.id, page=Page(PER_PAGE, after))
    context = {
        "senders": senders.items,
        "next_cursor": senders.next_cursor,
        "first_page": cursor is None,
        "form": form or Form(),
        "notice": catalogue_of(request).gettext(NOTICES[notice]) if notice in NOTICES else "",
        "error": error,
    }
    return render(request, "senders/list.html", context, status=status)


@router.get("/senders")
async def senders(
    request: Request, session: Session, viewer: CurrentViewer, cursor: str | None = None, notice: str | None = None
) -> Response:
    return await _list_page(request, session, viewer, cursor=cursor, notice=notice)


@router.post("/senders")
async def add_sender(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        body = form.parse(SenderCreate, **_values(form))
        await service.create_sender(session, user_id=viewer.id, values=body.model_dump(exclude_unset=True))
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), exc)
        return await _list_page(request, session, viewer, form=form, status=exc.status)
    return RedirectResponse("/senders?notice=added", status_code=303)


async def _edit_page(
    request: Request, viewer: Viewer, sender: SenderOut, form: Form, *, status: int = 200
) -> HTMLResponse:
    return render(request, "senders/edit.html", {"sender": sender, "form": form}, status=status)


@router.get("/senders/{sender_id}")
async def edit_sender(sender_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    sender = SenderOut.model_validate(await service.get_sender(session, user_id=viewer.id, sender_id=sender_id))
    values = {k: v or "" for k, v in sender.model_dump(include={"local_part", "display_name", "reply_to"}).items()}
    return await _edit_page(request, viewer, sender, Form(values))


@router.post("/senders/{sender_id}")
async def save_sender(sender_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    sender = SenderOut.model_validate(await service.get_sender(session, user_id=viewer.id, sender_id=sender_id))
    form = await read_form(request)
    try:
        body = form.parse(SenderUpdate, **_values(form))
        await service.update_sender(session, user_id=viewer.id, sender_id=sender_id, changes=body.model_dump())
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), exc)
        return await _edit_page(request, viewer, sender, form, status=exc.status)
    return RedirectResponse("/senders?notice=saved", status_code=303)


@router.post("/senders/{sender_id}/delete")
async def delete_sender(sender_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    try:
        await service.delete_sender(session, user_id=viewer.id, sender_id=sender_id)
    except Conflict as exc:  # in_use: an unfinished campaign sends from it
        return await _list_page(
            request, session, viewer, status=exc.status, error=message_for(catalogue_of(request), exc)
        )
    return RedirectResponse("/senders?notice=deleted", status_code=303)
