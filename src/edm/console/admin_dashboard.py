"""The admin overview (`/admin`, admins only): `dashboard.admin_dashboard`, the same figures as
`GET /api/v1/admin/dashboard` — the alerts as banners, each linking to the admin page that fixes it (through the
page registry: a page not built yet shows as text), every service's state and usage, the queue summary, the credit
moved per day over 7 days (a uPlot chart drawn as the user dashboard's, with its table) and the campaigns of every
user that need attention.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from edm.api.deps import Session
from edm.clock import utc_now
from edm.console.admin_credit import TOTALS
from edm.console.auth import AdminViewer
from edm.console.charts import day_chart
from edm.console.i18n import N_, Catalogue
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.dashboards import dashboard

router = new_router()

# The credit chart: what was moved per day, as `credit_per_day.days` has it.
CREDIT_SERIES = TOTALS  # the credit page's totals, the same series
# A service's state (`ServiceStatusOut.state`): available, or why not.
SERVICE_STATE = {
    "available": N_("Available"),
    "disabled": N_("Disabled"),
    "frozen": N_("Frozen after errors"),
    "throttled": N_("Slowed down by the provider"),
    "exhausted": N_("Provider quota used up"),
    "daily_quota": N_("Daily quota used up"),
    "busy": N_("Busy"),
    "slot": N_("Waiting for its next sending slot"),
    "unavailable": N_("Unavailable"),
}
# Each alert: its message in the viewer's language and the admin page that fixes it (a key of pages.PAGES).
ALERTS: dict[str, tuple[str, str]] = {
    "sending_paused": (N_("All sending is paused."), "admin_queue"),
    "no_worker": (N_("%(count)s messages are waiting and no worker is alive."), "admin_queue"),
    "no_usable_service": (N_("Messages are waiting and no sending service is usable."), "admin_services"),
    "service_frozen": (N_("The service %(name)s is frozen."), "admin_services"),
    "service_throttled": (N_("The service %(name)s is slowed down by its provider."), "admin_services"),
    "service_exhausted": (N_("The service %(name)s has used up its provider quota."), "admin_services"),
    "expired_leases": (N_("%(count)s claimed messages outlived their lease: a worker died or hangs."), "admin_queue"),
    "tasks_auto_paused": (N_("%(count)s campaigns were paused automatically."), ""),
}
FIX_LINKS = {
    "admin_queue": N_("Open the queue"),
    "admin_services": N_("Open the sending services"),
}


def credit_chart(catalogue: Catalogue, days: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's JSON as edm.js draws it (the user dashboard's shape): labels and one series per total."""
    return day_chart(
        catalogue,
        chart_id="chart-credit",
        title=N_("Credit moved per day"),
        days=days,
        series=CREDIT_SERIES,
        day=lambda d: d["start"],
    )


def alert_banners(catalogue: Catalogue, data: dict[str, Any]) -> list[dict[str, Any]]:
    names = {s["id"]: s["name"] for s in data["services"]}
    banners = []
    for alert in data["alerts"]:
        kind = alert["kind"]
        msgid, page = ALERTS.get(kind, ("", ""))
        params = {
            "count": {
                "no_worker": data["queue"]["pending"],
                "expired_leases": sum(s["expired_leases"] for s in data["queue"]["services"]),
                "tasks_auto_paused": len(alert.get("task_ids", [])),
            }.get(kind, 0),
            "name": names.get(alert.get("service_id"), ""),
        }
        banners.append(
            {
                "severity": alert["severity"],
                "text": catalogue.gettext(msgid) % params if msgid else alert["message"],
                "page": page,
                "fix": FIX_LINKS.get(page, ""),
                "task_ids": alert.get("task_ids", [])[:5],
            }
        )
    return banners


@router.get("/admin")
async def admin_overview(request: Request, session: Session, viewer: AdminViewer) -> Response:
    data = await dashboard.admin_dashboard(session, viewer.user, now=utc_now())
    catalogue = catalogue_of(request)
    context = {
        "data": data,
        "banners": alert_banners(catalogue, data),
        "chart": credit_chart(catalogue, data["credit_per_day"]["days"]),
        "credit_series": CREDIT_SERIES,
        "service_state": SERVICE_STATE,
    }
    return render(request, "admin/dashboard.html", context)
