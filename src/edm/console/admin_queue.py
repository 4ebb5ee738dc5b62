"""The queue (`/admin/queue`, admins only): what `GET /api/v1/admin/queue` and `edm queue` show
(`edm.dashboards.queue_view`) — whether sending is paused, the workers with their heartbeat's age, pending
messages per user, in flight and expired leases per service — and the campaigns that wait, with why
(`dashboard.attention`, as the admin dashboard lists them). "Pause all sending" and "Resume all sending" are
`POST /api/v1/admin/queue/pause-all|resume-all` (`queue_view.set_paused`, audited `queue.pause_all` /
`queue.resume_all` also when nothing changed); both ask first.

The figures poll `GET /api/v1/admin/queue` every 5 s (edm.js `data-poll`); `static/admin_queue.js` updates the
heartbeat ages and reloads the page when the rows themselves changed (a worker, user or service came or went).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from edm.api.deps import Session
from edm.clock import utc_now
from edm.console.auth import AdminViewer
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.dashboards import dashboard, queue_view

router = new_router()

NOTICES = {
    "paused": N_("All sending is paused."),
    "resumed": N_("Sending runs again."),
    "already_paused": N_("Sending was already paused."),
    "already_running": N_("Sending was already running."),
}


def signature(view: dict[str, Any]) -> str:
    """What the rows of the page are made of: when a poll answers another signature, the page reloads (the same
    rule is in static/admin_queue.js)."""
    parts = [
        "paused" if view["sending_paused"] else "running",
        ",".join(f"{w['id']}:{'alive' if w['alive'] else 'silent'}" for w in view["workers"]),
        ",".join(str(u["user_id"]) for u in view["users"]),
        ",".join(str(s["service_id"]) for s in view["services"]),
    ]
    return "|".join(parts)


@router.get("/admin/queue")
async def queue_page(request: Request, session: Session, viewer: AdminViewer, notice: str | None = None) -> Response:
    view = await queue_view.queue_view(session, now=utc_now())
    waiting = await dashboard.attention(session, user_ids=None)
    catalogue = catalogue_of(request)
    context = {
        "q": view,
        "signature": signature(view),
        "waiting": waiting,
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
    }
    return render(request, "admin/queue.html", context)


@router.post("/admin/queue/pause-all")
async def pause_all(request: Request, session: Session, viewer: AdminViewer) -> Response:
    done = await queue_view.set_paused(session, True, actor=viewer.actor(request))
    return RedirectResponse(f"/admin/queue?notice={'paused' if done['changed'] else 'already_paused'}", status_code=303)


@router.post("/admin/queue/resume-all")
async def resume_all(request: Request, session: Session, viewer: AdminViewer) -> Response:
    done = await queue_view.set_paused(session, False, actor=viewer.actor(request))
    return RedirectResponse(
        f"/admin/queue?notice={'resumed' if done['changed'] else 'already_running'}", status_code=303
    )
