"""The campaign list (`/tasks`): the viewer's campaigns filtered by status and name, each with its progress, the
reason it waits or is paused, and the actions its status allows — the services behind `GET /api/v1/tasks` and the
task transitions (`POST /api/v1/tasks/{id}/pause|resume|cancel|copy`, `DELETE /api/v1/tasks/{id}`).

Rows of campaigns that move (scheduled, queued, sending) poll `GET /api/v1/tasks/{id}/stats` every 5 s; the
page's script (`static/tasks.js`) moves their progress bars and status badges. Every action is a form POST
answered by a redirect back to the list with its filters and a notice (post/redirect/get).

Admins reach other users' campaigns as the API lets them: `readable_task` opens any campaign's pages read-only
(the owner named in the frame), and of the state changes an admin may pause, cancel, close and delete another
user's campaign — audited as `task.<action>` like the API's — while resume, back to draft and copy stay the owner's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from edm.api.deps import IdPath, Session
from edm.console.auth import CurrentViewer, Viewer, safe_next
from edm.console.forms import read_form
from edm.console.i18n import N_
from edm.console.labels import Labels as LABELS
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.errors import InvalidTransition
from edm.models.tasks import Task
from edm.models.users import TokenScope
from edm.paging import Page, decode_cursor, page_of
from edm.system.service import Actor
from edm.tasks import actions, service
from edm.tasks.stats import task_stats
from edm.users.service import get_user
from edm.vocabulary.tasks import TaskStatus, allowed_actions

router = new_router()

PER_PAGE = 25
LIVE = frozenset({TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.SENDING})
HAS_RECIPIENTS = frozenset(set(TaskStatus) - {TaskStatus.DRAFT, TaskStatus.SCHEDULED})
NOTICES = {
    "paused": N_("The campaign was paused."),
    "resumed": N_("The campaign was resumed."),
    "cancelled": N_("The campaign was cancelled."),
    "deleted": N_("The campaign was deleted."),
    "copied": N_("A copy was made as a draft."),
    "scheduled": N_("The campaign was scheduled."),
    "closed": N_("The campaign was closed."),
    "unscheduled": N_("The campaign is a draft again."),
    "refused": N_("That is no longer possible: the campaign changed meanwhile."),
}


def _reason(catalogue: Any, task: Any) -> str:
    """One line: why a paused campaign stopped, or why a running one sends nothing at the moment."""
    if task.status == TaskStatus.PAUSED and task.pause_reason in LABELS.pause_reason:
        return str(catalogue.gettext(LABELS.pause_reason[task.pause_reason]))
    if task.waiting_reason in LABELS.waiting_reason:
        return str(catalogue.gettext(LABELS.waiting_reason[task.waiting_reason]))
    return ""


@router.get("/tasks")
async def task_list(
    request: Request,
    session: Session,
    viewer: CurrentViewer,
    status: TaskStatus | None = None,
    q: Annotated[str, Query(max_length=200)] = "",
    cursor: str | None = None,
    notice: str | None = None,
) -> Response:
    page = Page(PER_PAGE, decode_cursor(cursor))
    found = await service.list_tasks(session, user_id=viewer.id, status=status, page=page, search=q.strip() or None)
    answer = page_of(found, page)
    catalogue = catalogue_of(request)
    rows = []
    for task in answer["items"]:
        stats = await task_stats(session, task.id) if task.status in HAS_RECIPIENTS else None
        rows.append(
            {
                "task": task,
                "stats": stats,
                "reason": _reason(catalogue, task),
                "actions": allowed_actions(TaskStatus(task.status)),
                "live": task.status in LIVE,
                "open": stats["recipients"] - _final(stats) if stats else 0,
            }
        )
    filters = {k: v for k, v in (("status", status.value if status else ""), ("q", q.strip())) if v}
    here = "/tasks" + (f"?{urlencode(filters)}" if filters else "")
    next_url = f"/tasks?{urlencode({**filters, 'cursor': answer['next_cursor']})}" if answer["next_cursor"] else ""
    status_options = [("", catalogue.gettext(N_("All statuses")))] + [
        (s, catalogue.gettext(label)) for s, label in LABELS.task_status.items()
    ]
    context = {
        "rows": rows,
        "filters": filters,
        "status_options": status_options,
        "here": here,
        "next_url": next_url,
        "first_url": here if cursor else "",
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
        "filtered": bool(filters),
        "status_labels": {s: catalogue.gettext(label) for s, label in LABELS.task_status.items()},
    }
    return render(request, "tasks/list.html", context)


def _final(stats: dict[str, Any]) -> int:
    """Recipients in a final state (what `progress` counts)."""
    return int(stats["sent"] + stats["failed"] + stats["cancelled"] + stats["suppressed_later"] + stats["excluded"])


async def _back(request: Request, notice: str) -> RedirectResponse:
    """Back to the list the action was taken from (its filters and page kept), with a notice."""
    form = await read_form(request)
    target = safe_next(form["next"], "/tasks")
    if not target.startswith("/tasks"):
        target = "/tasks"
    joiner = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{joiner}notice={notice}", status_code=303)


async def _own(session: AsyncSession, viewer: Viewer, task_id: int, *, admin_may: bool = False) -> Task:
    """The viewer's campaign; an admin reaches any user's where the API lets it (`admin_may`), else 404."""
    return await service.get_task(session, task_id, user_id=None if (viewer.is_admin and admin_may) else viewer.id)


async def readable_task(request: Request, session: AsyncSession, viewer: Viewer, task_id: int) -> Task:
    """The campaign a page shows (`/tasks/<id>`, its recipients, one recipient): the viewer's own, or for an admin
    any user's, as `GET /api/v1/tasks/{id}` and its reports allow; anyone else gets 404 for another's campaign.

    An admin looking at another user's campaign sees it read-only with the owner named: the request's viewer (what
    the templates get) becomes a read-scope copy carrying the owner's username, so every control guarded by
    `viewer.can_write` is left out and the frame shows whose campaign it is."""
    task = await _own(session, viewer, task_id, admin_may=True)
    if task.user_id != viewer.id:
        owner = await get_user(session, task.user_id)
        request.state.viewer = replace(viewer, scope=TokenScope.READ, owner_name=owner.username)
    return task


# The state changes the list and the detail page offer: each calls the task service as the API does, and comes
# back to the page it was posted from with a notice (or "refused" when the campaign's status moved meanwhile).
# An admin may take these on another user's campaign; the service audits it (`by`), as for the API.
ADMIN_MAY = frozenset({"pause", "cancel", "close", "delete"})
_Act = Callable[[AsyncSession, Any, str, Actor], Awaitable[object]]
_STATE_ACTIONS: dict[str, tuple[_Act, str]] = {
    "pause": (lambda session, task, actor, by: service.pause(session, task, actor=actor, by=by), "paused"),
    "resume": (lambda session, task, actor, by: service.resume(session, task, actor=actor), "resumed"),
    "cancel": (lambda session, task, actor, by: service.cancel(session, task, actor=actor, by=by), "cancelled"),
    "delete": (lambda session, task, actor, by: service.delete_task(session, task, by=by), "deleted"),
    "close": (lambda session, task, actor, by: service.close(session, task, actor=actor, by=by), "closed"),
    "unschedule": (lambda session, task, actor, by: service.unschedule(session, task, actor=actor), "unscheduled"),
}


def _state_action_route(name: str, act: _Act, notice: str) -> None:
    @router.post(f"/tasks/{{task_id}}/{name}", name=name)
    async def state_action(task_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
        task = await _own(session, viewer, task_id, admin_may=name in ADMIN_MAY)
        try:
            await act(session, task, str(viewer.id), viewer.actor(request))
        except InvalidTransition:
            return await _back(request, "refused")
        return await _back(request, notice)


for _name, (_act, _notice) in _STATE_ACTIONS.items():
    _state_action_route(_name, _act, _notice)


@router.post("/tasks/{task_id}/copy")
async def copy(task_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    """A draft with the campaign's content, opened in the wizard (what could not be copied is missing there)."""
    source = await _own(session, viewer, task_id)
    task, _ = await actions.copy_task(session, source, user_id=viewer.id, actor=str(viewer.id))
    return RedirectResponse(f"/tasks/{task.id}/edit?notice=copied", status_code=303)
