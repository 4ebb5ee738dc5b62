"""Service access (`/admin/mappings`, admins only): a users × services matrix of the active user–service mappings
(users paged by cursor, every service that is not archived as a column), saved row by row, and a batch form that
adds, removes or sets exactly a choice of services for a choice of users.

The same service functions as the API, audited as it audits them: "add" and "remove" are
`POST /api/v1/admin/mappings` with `is_active` true or false (`mappings.assign`, one `mapping.assign` row per
call); "set exactly" and saving a matrix row are `PUT /api/v1/admin/users/{id}/services`
(`mappings.set_user_services`, one `mapping.set_user_services` row per user changed).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from edm.api.deps import Session
from edm.clock import utc_now
from edm.console.auth import AdminViewer, Viewer
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.dispatch import queue
from edm.email_services import mappings
from edm.email_services.schemas import ExactServices, MappingBody
from edm.errors import BadInput, NotFound
from edm.paging import Page, decode_cursor, page_of
from edm.users.service import find_user, list_users

router = new_router()

PER_PAGE = 25
MAX_MAPPINGS = 500  # the most services a user's mappings are read for (the API's batch limit)
NOTICES = {
    "saved": N_("The access was saved."),
    "unchanged": N_("Nothing changed."),
    "add": N_("The chosen services were added to the chosen users."),
    "remove": N_("The chosen services were removed from the chosen users."),
    "set": N_("The chosen users now send through exactly the chosen services."),
}
OPERATIONS = (
    ("add", N_("Add these services")),
    ("remove", N_("Remove these services")),
    ("set", N_("Set exactly these services")),
)
NO_USERS = N_("Choose at least one user.")
NO_SERVICES = N_("Choose at least one service.")
UNKNOWN_USER = N_("No user is called “%(name)s”.")
UNKNOWN_SERVICE = N_("That service no longer exists: reload the page.")
BAD_OPERATION = N_("Choose what to do.")


def _ids(values: list[Any]) -> list[int]:
    """The ids among submitted values (anything else is ignored: the checkboxes only send ids)."""
    return sorted({int(v) for v in values if isinstance(v, str) and v.isdigit() and 0 < int(v) < 2**63})


async def _active(session: AsyncSession, user_ids: list[int]) -> dict[int, set[int]]:
    """Each user's actively mapped service ids (the service behind `GET /api/v1/admin/mappings?user_id=`)."""
    found: dict[int, set[int]] = {}
    for user_id in user_ids:
        rows = await mappings.list_mappings(session, Page(MAX_MAPPINGS, None), user_id=user_id)
        found[user_id] = {m.service_id for m in rows if m.is_active}
    return found


async def _page(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    *,
    cursor: str | None,
    form: Form | None = None,
    chosen_users: list[int] | None = None,
    chosen_services: list[int] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    page = Page(PER_PAGE, decode_cursor(cursor))
    users = page_of(await list_users(session, page), page)
    services = [s.service for s in await queue.snapshot_services(session, now=utc_now())]
    active = await _active(session, [u.id for u in users["items"]])
    catalogue = catalogue_of(request)
    context = {
        "users": users["items"],
        "next_cursor": users["next_cursor"],
        "cursor": cursor or "",
        "services": services,
        "active": active,
        "form": form or Form({"operation": "add"}),
        "chosen_users": set(chosen_users or []),
        "chosen_services": set(chosen_services or []),
        "operations": OPERATIONS,
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "admin/mappings.html", context, status=status)


def _back(cursor: str, notice: str) -> RedirectResponse:
    query = {"cursor": cursor, "notice": notice} if cursor else {"notice": notice}
    return RedirectResponse(f"/admin/mappings?{urlencode(query)}", status_code=303)


@router.get("/admin/mappings")
async def mappings_page(
    request: Request, session: Session, viewer: AdminViewer, cursor: str | None = None, notice: str | None = None
) -> Response:
    return await _page(request, session, viewer, cursor=cursor, notice=notice)


@router.post("/admin/mappings/matrix")
async def save_matrix(request: Request, session: Session, viewer: AdminViewer) -> Response:
    """Each row of the page whose ticks changed: its user's active services become exactly the ticked ones (and
    those not shown, on archived services, stay as they were)."""
    data = await request.form()
    cursor = str(data.get("cursor") or "")
    decode_cursor(cursor or None)  # a forged cursor is refused (422) like the list's
    rows = _ids(data.getlist("row"))[:PER_PAGE]
    ticked: dict[int, set[int]] = {user_id: set() for user_id in rows}
    for value in data.getlist("m"):
        user_part, _, service_part = str(value).partition(":")
        if user_part.isdigit() and service_part.isdigit() and int(user_part) in ticked:
            ticked[int(user_part)].add(int(service_part))
    shown = {s.service.id for s in await queue.snapshot_services(session, now=utc_now())}
    current = await _active(session, rows)
    changed = False
    for user_id, services in ticked.items():
        wanted = services & shown
        if wanted == current[user_id] & shown:
            continue
        body = ExactServices(service_ids=sorted(wanted | (current[user_id] - shown)))
        await mappings.set_user_services(
            session, user_id=user_id, service_ids=body.service_ids, actor=viewer.actor(request)
        )
        changed = True
    return _back(cursor, "saved" if changed else "unchanged")


@router.post("/admin/mappings/batch")
async def batch(request: Request, session: Session, viewer: AdminViewer) -> Response:
    form = await read_form(request)
    data = await request.form()
    cursor = form["cursor"]
    ticked_users = _ids(data.getlist("user_ids"))
    user_ids = list(ticked_users)
    service_ids = _ids(data.getlist("service_ids"))
    operation = form["operation"]
    try:
        details: list[dict[str, Any]] = []
        for name in (n.strip() for n in form["users"].replace(";", ",").split(",")):
            if not name:
                continue
            try:
                user_ids.append((await find_user(session, name)).id)
            except NotFound:
                details.append(
                    {"field": "users", "message": UNKNOWN_USER, "params": {"name": name}, "translated": True}
                )
                break
        if not details and not user_ids:
            details.append({"field": "users", "message": NO_USERS, "translated": True})
        if not service_ids:
            details.append({"field": "service_ids", "message": NO_SERVICES, "translated": True})
        if operation not in dict(OPERATIONS):
            details.append({"field": "operation", "message": BAD_OPERATION, "translated": True})
        if details:
            raise BadInput("validation failed", details=details)
        user_ids = sorted(set(user_ids))
        actor = viewer.actor(request)
        try:
            async with session.begin_nested():  # a refused service id leaves nothing written
                if operation == "set":
                    for user_id in user_ids:
                        body = form.parse(ExactServices, service_ids=service_ids)
                        await mappings.set_user_services(
                            session, user_id=user_id, service_ids=body.service_ids, actor=actor
                        )
                else:
                    many = form.parse(
                        MappingBody, user_ids=user_ids, service_ids=service_ids, is_active=operation == "add"
                    )
                    await mappings.assign(
                        session,
                        user_ids=many.user_ids,
                        service_ids=many.service_ids,
                        is_active=many.is_active,
                        actor=actor,
                    )
        except NotFound:
            raise BadInput(
                "unknown service", details=[{"field": "service_ids", "message": UNKNOWN_SERVICE, "translated": True}]
            ) from None
    except BadInput as exc:
        form.fail(catalogue_of(request), exc)
        return await _page(
            request,
            session,
            viewer,
            cursor=cursor or None,
            form=form,
            chosen_users=ticked_users,
            chosen_services=service_ids,
            status=exc.status,
        )
    return _back(cursor, operation)
