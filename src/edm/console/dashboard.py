"""The dashboard (`/`): the viewer's dashboard from `edm.dashboards.dashboard`, the same figures as
`GET /api/v1/dashboard`: the last 30 days as cards and two charts, credit, and the campaigns that need attention.

While a campaign of the viewer is scheduled, queued or sending, the figures poll `GET /api/v1/dashboard` every
5 s (edm.js `data-poll`), so they move while it sends.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from edm.api.deps import Session
from edm.clock import utc_now
from edm.console.auth import CurrentViewer
from edm.console.charts import day_chart
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.dashboards import dashboard
from edm.vocabulary.tasks import TaskStatus

router = new_router()

LIVE_STATUSES = (TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.SENDING)
CARDS = (
    ("sent", N_("Sent")),
    ("delivered", N_("Delivered")),
    ("opened", N_("Opened")),
    ("clicked", N_("Clicked")),
    ("bounced", N_("Hard bounces")),
    ("complained", N_("Complaints")),
    ("unsubscribed", N_("Unsubscribes")),
)
# The two charts: what was sent, and what recipients did.
CHARTS = (
    ("chart-sending", N_("Sent and delivered per day"), ("sent", "delivered")),
    (
        "chart-engagement",
        N_("Opens, clicks and problems per day"),
        ("opened", "clicked", "bounced", "complained", "unsubscribed"),
    ),
)


@router.get("/")
async def dashboard_page(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    data = await dashboard.user_dashboard(session, viewer.user, now=utc_now())
    catalogue = catalogue_of(request)
    days = data["daily"]["days"]
    names = dict(CARDS)
    charts: list[dict[str, Any]] = [
        day_chart(
            catalogue,
            chart_id=chart_id,
            title=title,
            days=days,
            series=[(k, names[k]) for k in keys],
            day=lambda d: d["date"],
        )
        for chart_id, title, keys in CHARTS
    ]
    by_status = data["tasks_by_status"]
    context = {
        "data": data,
        "cards": CARDS,
        "charts": charts,
        "live": any(by_status.get(s, 0) for s in LIVE_STATUSES),
        "no_campaigns": not by_status,
    }
    return render(request, "dashboard.html", context)
