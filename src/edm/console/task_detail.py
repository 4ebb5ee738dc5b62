"""A campaign (`/tasks/{id}`): its counts by state and progress, the send rate, why it waits or is paused with the
action that fixes it, per service and per template (A/B, the leader marked), the timeline and the weekday × hour
heat map of opens, its links by clicks, its status history, the decision on uncertain sends, and its actions —
the services behind `GET /api/v1/tasks/{id}`, `/stats`, `/report/*`, `/status-history` and
`POST /api/v1/tasks/{id}/uncertain/{action}`.

While the campaign is scheduled, queued or sending, the counts poll `GET /api/v1/tasks/{id}/stats` every 5 s and
the page reloads itself when the status changes (`static/tasks.js`), so its banner and actions follow.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from babel.dates import format_datetime, get_day_names
from babel.numbers import format_decimal
from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.clock import utc_now
from edm.console.auth import CurrentViewer
from edm.console.i18n import N_
from edm.console.labels import Labels as LABELS
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.console.task_wizard import EXCLUSION_LABELS
from edm.console.tasks import ADMIN_MAY, readable_task
from edm.errors import Conflict
from edm.tasks import reports, service
from edm.tasks.reports import Bucket
from edm.tasks.stats import task_stats
from edm.vocabulary.tasks import TaskStatus, allowed_actions

router = new_router()

LIVE = frozenset({TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.SENDING})
LINKS = 100  # links read (a campaign rarely has more); the 20 most clicked are shown
MAX_HOURS = 72  # a longer timeline is shown per day
NOTICES = {
    "retried": N_("The uncertain recipients are queued again."),
    "abandoned": N_("The uncertain recipients are marked failed."),
    "refused": N_("That is no longer possible: the campaign changed meanwhile."),
    "paused": N_("The campaign was paused."),
    "resumed": N_("The campaign was resumed."),
    "cancelled": N_("The campaign was cancelled."),
    "closed": N_("The campaign was closed."),
    "unscheduled": N_("The campaign is a draft again."),
    "scheduled": N_("The campaign was scheduled."),
}
# The counts shown as cards, live: (field of the stats answer, label).
CARDS = (
    ("recipients", N_("Recipients")),
    ("queued", N_("Queued")),
    ("in_flight", N_("Sending now")),
    ("retrying", N_("Retrying")),
    ("sent", N_("Sent")),
    ("failed", N_("Failed")),
    ("delivered", N_("Delivered")),
    ("hard_bounced", N_("Hard bounces")),
    ("opened_human", N_("Opened")),
    ("clicked_human", N_("Clicked")),
    ("unsubscribed", N_("Unsubscribes")),
    ("complained", N_("Complaints")),
)
# What fixes a pause, by reason (the resume button follows it).
PAUSE_FIXES = {
    "user": N_("Resume it when you are ready."),
    "user_quota": N_("Ask an admin for more credit, then resume it."),
    "error_threshold": N_("Look at the failed and bounced recipients, then resume or cancel it."),
    "service_unavailable": N_("Resume it when a sending service works again (ask an admin)."),
    "no_capacity_left": N_("Resume it after the quotas reset, or let it wait for them next time."),
    "render_limit": N_("Make the template simpler, then resume it."),
}
# Why the status changed (`TaskStatusChange.reason`: the action, or a pause reason of `LABELS.pause_reason`).
HISTORY_REASONS = {
    "create": N_("Created"),
    "schedule": N_("Scheduled"),
    "unschedule": N_("Back to draft"),
    "generated": N_("Recipients chosen"),
    "generated_empty": N_("No recipient could be sent to"),
    "no_sendable_recipients": N_("No recipient could be sent to"),
    "first_claim": N_("Sending began"),
    "finish": N_("Every recipient is done"),
    "all_recipients_final": N_("Every recipient is done"),
    "resume": N_("Resumed"),
    "cancel": N_("Cancelled"),
    "close": N_("Closed"),
    **LABELS.pause_reason,
}
SERIES = (("sent", N_("Sent")), ("delivered", N_("Delivered")), ("opens", N_("Opens")), ("clicks", N_("Clicks")))


def _rate_per_minute(task: Any, sent: int, now: dt.datetime) -> float | None:
    """Messages sent per minute since the first one (until the campaign ended)."""
    if not task.first_sent_at or not sent:
        return None
    end = task.completed_at or task.cancelled_at or now
    minutes: float = max((end - task.first_sent_at).total_seconds() / 60, 1 / 60)
    return round(sent / minutes, 1)


def _leader(templates: list[dict[str, Any]]) -> int | None:
    """The task template with the best click rate, then open rate (A/B), once two or more have sent mail."""
    sent = [t for t in templates if t["sent"] and t["task_template_id"] is not None]
    if len(sent) < 2:
        return None
    best = max(sent, key=lambda t: (t["rates"]["click"] or 0, t["rates"]["open_human"] or 0))
    if not (best["rates"]["click"] or best["rates"]["open_human"]):
        return None
    return int(best["task_template_id"])


def _timeline_chart(request: Request, data: dict[str, Any]) -> dict[str, Any]:
    catalogue = catalogue_of(request)
    pattern = "MMMd" if data["bucket"] == "day" else "MMMd HH:mm"
    labels = [
        format_datetime(dt.datetime.fromisoformat(r["start"]), pattern, locale=catalogue.locale) for r in data["items"]
    ]
    series = [
        {"key": key, "label": catalogue.gettext(label), "values": [r[key] for r in data["items"]]}
        for key, label in SERIES
    ]
    return {"id": "chart-timeline", "labels": labels, "series": series}


HEAT_LEVELS = 4  # shades of a cell with opens; 0 is a cell without


def _heat_level(n: int, top: int) -> int:
    """The shade of a cell: 0 without opens, else 1–4 by its share of the busiest hour (ceil(4 · n / top))."""
    return -(-HEAT_LEVELS * n // top) if n and top else 0


def _heat_legend(top: int, number: Any) -> list[tuple[int, str]]:
    """(level, the counts it stands for) from none to the busiest hour; a level no whole count reaches is left out."""
    legend = [(0, number(0))]
    for level in range(1, HEAT_LEVELS + 1):
        low, high = top * (level - 1) // HEAT_LEVELS + 1, top * level // HEAT_LEVELS
        if low <= high:
            legend.append((level, number(low) if low == high else f"{number(low)}–{number(high)}"))
    return legend


def _heat(request: Request, data: dict[str, Any]) -> dict[str, Any]:
    """The heat map in the page's language: 7 rows (weekday, Monday first) of 24 cells, each with its count, its
    shade (`_heat_level`) and a title naming the day, the hour and the count; the legend; the busiest hour."""
    catalogue = catalogue_of(request)
    locale = catalogue.locale
    short, wide = get_day_names("abbreviated", locale=locale), get_day_names("wide", locale=locale)

    def number(n: int) -> str:
        return str(format_decimal(n, locale=locale))

    def hours(h: int) -> str:
        return f"{h:02d}:00–{h + 1:02d}:00"

    top = max((max(row) for row in data["cells"]), default=0)
    rows = []
    for day, row in enumerate(data["cells"]):
        cells = [
            {
                "n": n,
                "level": _heat_level(n, top),
                "title": catalogue.gettext(N_("%(day)s %(hours)s — opens: %(count)s"))
                % {"day": wide[day], "hours": hours(hour), "count": number(n)},
            }
            for hour, n in enumerate(row)
        ]
        rows.append({"short": short[day], "name": wide[day], "cells": cells})
    peak = ""
    if top:
        day, hour = next((d, h) for d, row in enumerate(data["cells"]) for h, n in enumerate(row) if n == top)
        peak = catalogue.gettext(N_("Most opens: %(day)s %(hours)s (%(count)s)")) % {
            "day": wide[day],
            "hours": hours(hour),
            "count": number(top),
        }
    return {
        "hours": range(24),
        "rows": rows,
        "legend": _heat_legend(top, number),
        "peak": peak,
        "total": data["total"],
        "timezone": data["timezone"],
    }


@router.get("/tasks/{task_id}")
async def task_page(
    task_id: IdPath, request: Request, session: Session, viewer: CurrentViewer, notice: str | None = None
) -> Response:
    task = await readable_task(request, session, viewer, task_id)  # an admin: any user's, read-only
    stats = await task_stats(session, task.id)
    templates = await reports.by_template(session, task.id)
    quarters = await reports.metric_quarters(session, task.id)
    timeline = reports.timeline_of(task, quarters, Bucket.HOUR)
    if len(timeline["items"]) > MAX_HOURS:
        timeline = reports.timeline_of(task, quarters, Bucket.DAY)
    links = await reports.by_link(session, task.id, after_id=None, limit=LINKS)
    links = sorted(links, key=lambda link: (-link["clicks_human"], -link["unique_human_clickers"], link["id"]))[:20]
    catalogue = catalogue_of(request)
    status = TaskStatus(task.status)
    context = {
        "task": task,
        "stats": stats,
        "cards": CARDS,
        "live": status in LIVE,
        "actions": allowed_actions(status),
        # An admin on another user's campaign: the state changes the API lets it take there (the page is otherwise
        # read-only for it).
        "admin_actions": [a for a in allowed_actions(status) if a in ADMIN_MAY] if task.user_id != viewer.id else [],
        "rate": _rate_per_minute(task, stats["sent"], utc_now()),
        "open": stats["queued"] + stats["retrying"] + stats["in_flight"] + stats["uncertain"],
        "pause_fix": catalogue.gettext(PAUSE_FIXES[task.pause_reason]) if task.pause_reason in PAUSE_FIXES else "",
        "templates": templates,
        "leader": _leader(templates),
        "services": await reports.by_service(session, task.id, admin=viewer.is_admin),
        "timeline": _timeline_chart(request, timeline),
        "heat": _heat(request, await reports.heatmap(session, task)),
        "links": links,
        "history": await service.status_history(session, task.id),
        "history_reasons": HISTORY_REASONS,
        "excluded": [
            (catalogue.gettext(EXCLUSION_LABELS.get(reason, reason)), n)
            for reason, n in stats["excluded_by_reason"].items()
            if n
        ],
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
        "status_labels": {s: catalogue.gettext(label) for s, label in LABELS.task_status.items()},
        "here": f"/tasks/{task.id}",
    }
    return render(request, "tasks/detail.html", context)


@router.post("/tasks/{task_id}/uncertain/{action}")
async def decide_uncertain(
    task_id: IdPath, action: Literal["retry", "abandon"], session: Session, viewer: CurrentViewer
) -> Response:
    """Every uncertain recipient of the campaign queued again (`retry`, may duplicate) or failed (`abandon`)."""
    task = await service.get_task(session, task_id, user_id=viewer.id)
    try:
        await service.decide_uncertain(session, task, action=action, subtask_ids=None)
    except Conflict:
        return RedirectResponse(f"/tasks/{task.id}?notice=refused", status_code=303)
    done = "retried" if action == "retry" else "abandoned"
    return RedirectResponse(f"/tasks/{task.id}?notice={done}", status_code=303)
