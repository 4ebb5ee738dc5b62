"""Global suppressions (`/admin/suppressions`, admins only): the global list — no user's campaign sends to its
addresses and domains — as the user's own list page shows the user's (`suppressions.py`, the same template and
helpers over `GLOBAL`): searched, filtered, paged by cursor, exported, checked; add, remove with a reason (a
confirmation page) and import, through the services behind `/api/v1/admin/suppressions`, audited as there."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from edm.api.deps import IdPath, Session
from edm.console import suppressions as pages
from edm.console.auth import AdminViewer
from edm.console.forms import Form
from edm.console.routing import new_router
from edm.suppressions.service import GLOBAL

router = new_router()

BASE = "/admin/suppressions"


@router.get(BASE)
async def global_list(request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await pages.list_page(request, session, viewer, GLOBAL, BASE)


@router.post(BASE)
async def add_global(request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await pages.add_to(request, session, viewer, GLOBAL, BASE)


@router.post(f"{BASE}/import")
async def import_global(request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await pages.import_into(request, session, viewer, GLOBAL, BASE)


@router.get(BASE + "/{entry_id}/remove")
async def confirm_remove_global(entry_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await pages.remove_page(request, session, entry_id, Form(), lst=GLOBAL, base=BASE)


@router.post(BASE + "/{entry_id}/remove")
async def remove_global(entry_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await pages.remove_from(request, session, viewer, entry_id, GLOBAL, BASE)
