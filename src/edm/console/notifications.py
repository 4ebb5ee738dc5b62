"""Notifications (`/notifications`): the viewer's own notifications, newest first, paged by cursor and filtered by
read or unread (kept in the URL), with "Mark as read" — the service functions behind `/api/v1/me/notifications`.
Every role may mark its own notifications read, `read_only` included (`auth.SELF_SERVICE_PATTERNS`): as in the API,
that changes only the viewer's own view.
The top bar links here with the unread count (`Viewer.unread`).
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.console.auth import CurrentViewer, safe_next
from edm.console.rendering import render
from edm.console.routing import new_router
from edm.paging import Page, decode_cursor_or_first, page_of
from edm.system.schemas import NotificationOut
from edm.system.service import list_notifications, mark_read, unread_count

router = new_router()

PER_PAGE = 50
SHOWS = {"unread": True, "read": False}


@router.get("/notifications")
async def notifications(
    request: Request, session: Session, viewer: CurrentViewer, show: str = "", cursor: str | None = None
) -> Response:
    show = show if show in SHOWS else ""
    before, cursor = decode_cursor_or_first(cursor)
    page = Page(PER_PAGE, before)
    rows = await list_notifications(session, viewer.id, unread=SHOWS.get(show), limit=page.limit + 1, before_id=before)
    result = page_of(rows, page)
    items = [NotificationOut.model_validate(n) for n in result["items"]]
    kept = {"show": show} if show else {}
    context = {
        "notifications": [(n, safe_next(n.link, "")) for n in items],
        "unread": await unread_count(session, viewer.id),
        "show": show,
        "first_page": cursor is None,
        "query": urlencode(kept),
        "next_query": urlencode({**kept, "cursor": result["next_cursor"] or ""}),
        "next_cursor": result["next_cursor"],
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    }
    return render(request, "notifications/list.html", context)


@router.post("/notifications/{notification_id}/read")
async def read_notification(
    notification_id: IdPath, request: Request, session: Session, viewer: CurrentViewer
) -> Response:
    await mark_read(session, viewer.id, notification_id)
    form = await request.form()
    back = form.get("next")
    return RedirectResponse(safe_next(back if isinstance(back, str) else None, "/notifications"), status_code=303)
