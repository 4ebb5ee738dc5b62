"""A campaign's recipients (`/tasks/{id}/recipients`): a table filtered by state (the display status), by what the
recipient did, and by address, paged by cursor; and one recipient (`/tasks/{id}/recipients/{subtask_id}`) with
every send attempt and every event — the services behind `GET /api/v1/tasks/{id}/subtasks` and
`GET /api/v1/tasks/{id}/subtasks/{subtask_id}`.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query, Request
from fastapi.responses import Response

from edm.api.deps import IdPath, Session
from edm.console.auth import CurrentViewer
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.console.tasks import readable_task
from edm.errors import NotFound
from edm.paging import LIST_COUNT_CAP as COUNT_CAP
from edm.paging import Page, decode_cursor, page_of
from edm.tasks import reports
from edm.tasks.reports import DisplayStatus, Engagement, SubtaskFilters
from edm.tasks.schemas import SubtaskReportOut

router = new_router()

PER_PAGE = 50
DISPLAY_STATUS = {  # docs/states.md#engagement-and-display-status
    "replied": N_("Replied"),
    "complained": N_("Complained"),
    "unsubscribed": N_("Unsubscribed"),
    "clicked": N_("Clicked"),
    "opened": N_("Opened"),
    "hard_bounced": N_("Hard bounce"),
    "rejected": N_("Rejected"),
    "soft_bounced": N_("Soft bounce"),
    "delivered": N_("Delivered"),
    "delivery_delayed": N_("Delivery delayed"),
    "sent": N_("Sent"),
    "failed": N_("Failed"),
    "suppressed": N_("Left out"),
    "cancelled": N_("Cancelled"),
    "uncertain": N_("Uncertain"),
    "sending": N_("Sending"),
    "retrying": N_("Retrying"),
    "queued": N_("Queued"),
}
ENGAGEMENT = {
    "opened": N_("Opened (or clicked)"),
    "clicked": N_("Clicked"),
    "unsubscribed": N_("Unsubscribed"),
    "none": N_("Did nothing yet"),
}
EVENT_TYPES = {
    "accepted": N_("Accepted by the provider"),
    "delivered": N_("Delivered"),
    "deferred": N_("Delayed"),
    "soft_bounced": N_("Soft bounce"),
    "hard_bounced": N_("Hard bounce"),
    "rejected": N_("Rejected"),
    "opened": N_("Opened"),
    "clicked": N_("Clicked"),
    "complained": N_("Complained"),
    "unsubscribed": N_("Unsubscribed"),
    "replied": N_("Replied"),
    "unknown": N_("Other event"),
}
OUTCOMES = {
    "accepted": N_("Accepted"),
    "transient": N_("Temporary failure"),
    "throttled": N_("Slowed down by the provider"),
    "quota_exhausted": N_("Provider quota used up"),
    "auth_config": N_("Service misconfigured"),
    "permanent": N_("Permanent failure"),
    "maybe_sent": N_("Unknown: may have been sent"),
}


def _api_filters(kept: dict[str, str]) -> dict[str, str]:
    """The page's filters under the names of `GET /api/v1/tasks/{id}/subtasks.csv`."""
    names = {"state": "display_status", "event": "engagement", "email": "email"}
    return {names[k]: v for k, v in kept.items()}


@router.get("/tasks/{task_id}/recipients")
async def recipients(
    task_id: IdPath,
    request: Request,
    session: Session,
    viewer: CurrentViewer,
    state: DisplayStatus | None = None,
    event: Engagement | None = None,
    email: Annotated[str, Query(max_length=320)] = "",
    cursor: str | None = None,
) -> Response:
    task = await readable_task(request, session, viewer, task_id)  # an admin: any user's, read-only
    filters = SubtaskFilters(display_status=state, engagement=event, email=email.strip() or None)
    page = Page(PER_PAGE, decode_cursor(cursor))
    rows = await reports.subtask_page(session, task.id, filters, after_id=page.after_id, limit=page.limit + 1)
    answer = page_of([SubtaskReportOut.of(r) for r in rows], page)
    catalogue = catalogue_of(request)
    kept = {
        k: v
        for k, v in (
            ("state", state.value if state else ""),
            ("event", event.value if event else ""),
            ("email", email.strip()),
        )
        if v
    }
    base = f"/tasks/{task.id}/recipients"
    if page.after_id is None and answer["next_cursor"] is None:  # the first page holds every match: no count
        total = len(answer["items"])
    else:
        total = await reports.count_subtasks(session, task.id, filters, cap=COUNT_CAP)
    context = {
        "task": task,
        "items": answer["items"],
        "total": min(total, COUNT_CAP),
        "more": total > COUNT_CAP,  # "more than COUNT_CAP"
        "filters": kept,
        "filtered": bool(kept),
        "state_options": [("", catalogue.gettext(N_("Any state")))]
        + [(k, catalogue.gettext(v)) for k, v in DISPLAY_STATUS.items()],
        "event_options": [("", catalogue.gettext(N_("Anything")))]
        + [(k, catalogue.gettext(v)) for k, v in ENGAGEMENT.items()],
        "display_status": DISPLAY_STATUS,
        "next_url": f"{base}?{urlencode({**kept, 'cursor': answer['next_cursor']})}" if answer["next_cursor"] else "",
        "first_url": (f"{base}?{urlencode(kept)}" if kept else base) if cursor else "",
        "base": base,
        "csv_url": f"/api/v1/tasks/{task.id}/subtasks.csv?{urlencode({**_api_filters(kept), 'bom': 'true'})}",
    }
    return render(request, "tasks/recipients.html", context)


@router.get("/tasks/{task_id}/recipients/{subtask_id}")
async def recipient(
    task_id: IdPath, subtask_id: IdPath, request: Request, session: Session, viewer: CurrentViewer
) -> Response:
    task = await readable_task(request, session, viewer, task_id)  # an admin: any user's, read-only
    row = await reports.subtask_row(session, task.id, subtask_id)
    if row is None:
        raise NotFound("subtask not found")
    history: dict[str, Any] = await reports.subtask_history(session, row.SubTask.id)
    context = {
        "task": task,
        "r": SubtaskReportOut.of(row),
        "history": history["history"],
        "display_status": DISPLAY_STATUS,
        "event_types": EVENT_TYPES,
        "outcomes": OUTCOMES,
    }
    return render(request, "tasks/recipient.html", context)
