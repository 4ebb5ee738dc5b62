"""Unrouted mail (`/admin/inbound`, admins only): inbound mail that no user owns — no Message-ID of ours in its
threading headers and an address that names no sender — newest first, with its text to read, a user to give it to
(it is then stored in that user's conversations as if it had been routed there) and a discard button. The service
functions behind `/api/v1/admin/inbound*`, audited as there (docs/conversations.md#unrouted-mail)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.clock import utc_now
from edm.console.auth import AdminViewer, Viewer
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.conversations import service
from edm.errors import BadInput, Conflict, NotFound
from edm.paging import MAX_ID, Page, decode_cursor_or_first, page_of
from edm.users import service as users

router = new_router()

BASE = "/admin/inbound"
PER_PAGE = 50
USER_CHOICES = 500  # the assign form lists active users by id, up to this many
NOTICES = {
    "assigned": N_("The mail was given to the user: it is in their conversations now."),
    "duplicate": N_("The user already had this mail: nothing was added."),
    "discarded": N_("The mail was discarded."),
}
REASONS = {
    "unknown_sender": N_("No sender has this address"),
    "foreign_domain": N_("The address's domain is none of the services' domains"),
    "no_recipient": N_("The mail names no recipient"),
    "unreadable": N_("The mail could not be handled"),
}


@router.get(BASE)
async def unrouted_list(request: Request, session: Session, viewer: AdminViewer) -> Response:
    catalogue = catalogue_of(request)
    include_resolved = request.query_params.get("all") == "1"
    cursor = request.query_params.get("cursor")
    after, cursor = decode_cursor_or_first(cursor)
    page = Page(PER_PAGE, after)
    result = page_of(await service.list_unrouted(session, page=page, include_resolved=include_resolved), page)
    notice = request.query_params.get("notice", "")
    context: dict[str, Any] = {
        "rows": result["items"],
        "include_resolved": include_resolved,
        "next_cursor": result["next_cursor"],
        "first_page": cursor is None,
        "reasons": REASONS,
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "admin/inbound.html", context)


async def _detail_page(
    request: Request, session: Session, viewer: Viewer, unrouted_id: int, *, form: Form | None = None, status: int = 200
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    row, text = await service.unrouted_detail(session, unrouted_id=unrouted_id)
    accounts = await users.list_users(session, Page(USER_CHOICES, None), active=True)
    context = {
        "row": row,
        "text": text,
        "reasons": REASONS,
        "form": form or Form(),
        "user_options": [("", catalogue.gettext(N_("Choose a user")))]
        + [(str(u.id), f"{u.username} <{u.email}>" if u.email else u.username) for u in accounts[:USER_CHOICES]],
    }
    return render(request, "admin/inbound_detail.html", context, status=status)


@router.get(BASE + "/{unrouted_id}")
async def unrouted_page(unrouted_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await _detail_page(request, session, viewer, unrouted_id)


@router.post(BASE + "/{unrouted_id}/assign")
async def assign(unrouted_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    form = await read_form(request)
    try:
        text = form["user_id"]
        if not text.isdigit() or not 0 < int(text) <= MAX_ID:
            raise form.invalid("user_id", N_("Choose a user."))
        async with session.begin_nested():
            _row, result = await service.assign_unrouted(
                session, unrouted_id=unrouted_id, user_id=int(text), actor=viewer.actor(request), now=utc_now()
            )
    except (BadInput, Conflict, NotFound) as exc:
        if isinstance(exc, NotFound) and "user" not in str(exc):
            raise
        form.fail(catalogue_of(request), exc, rename={"user": "user_id"})
        return await _detail_page(request, session, viewer, unrouted_id, form=form, status=exc.status)
    notice = "duplicate" if result.status == "duplicate" else "assigned"
    return RedirectResponse(f"{BASE}?notice={notice}", status_code=303)


@router.post(BASE + "/{unrouted_id}/discard")
async def discard(unrouted_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    await service.discard_unrouted(session, unrouted_id=unrouted_id, actor=viewer.actor(request), now=utc_now())
    return RedirectResponse(f"{BASE}?notice=discarded", status_code=303)
