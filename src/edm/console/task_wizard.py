"""The campaign wizard (`/tasks/new`, `/tasks/{id}/edit` for a draft): one page, a checklist of collapsible steps
(basics, content, recipients, schedule and options, review), each marked done or naming what is missing — the
services behind `POST /api/v1/tasks`, `PATCH /api/v1/tasks/{id}` and `POST /api/v1/tasks/{id}/schedule`.

The recipient step shows the estimate of `POST /api/v1/recipients/estimate` (sendable, excluded per reason,
credit needed against the balance); `GET /tasks/estimate` answers it as a fragment that htmx swaps in whenever
the rule changes. `static/task_wizard.js` marks the steps done as the fields fill and enables "Schedule".

"Save as draft" and "Schedule" post the whole form. A draft keeps the date and time chosen in the schedule step
(`Task.schedule_at`, as `schedule_at` of the API's draft), unchecked until it is scheduled, and shows it again in
the viewer's time zone. A refusal shows each message beside its field with what was typed kept; a draft that was
saved before scheduling failed is edited further at its own address.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from edm.api.deps import IdPath, Session
from edm.clock import utc_now
from edm.console.auth import CurrentViewer, ReadOnlyAccount, Viewer
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render, zone_of
from edm.console.routing import new_router
from edm.contacts import tags
from edm.content import service as content
from edm.db.session import end_transaction
from edm.errors import BadInput, Conflict, NotFound
from edm.models.tasks import Task
from edm.paging import Page
from edm.tasks import service
from edm.tasks.exclusions import EXCLUSION_ORDER
from edm.tasks.recipients import Rule, estimate, validate_rule
from edm.tasks.schemas import TaskCreate
from edm.vocabulary.tasks import TaskStatus

router = new_router()

TEMPLATE_ROWS = 4  # template choices the form offers (A/B/C/D); the API takes up to 20
CHOICES = 200  # senders, templates listed in the selects
EXCLUSION_LABELS = {  # edm.tasks.exclusions.REASONS
    "contact_deleted": N_("Contact deleted"),
    "invalid_address": N_("Address not valid"),
    "contact_inactive": N_("Contact inactive"),
    "unsubscribed": N_("Unsubscribed"),
    "hard_bounced": N_("Bounced before"),
    "complained": N_("Complained before"),
    "suppression_list": N_("On a suppression list"),
}
NOTICES = {"saved": N_("The draft was saved."), "copied": N_("A copy was made as a draft.")}


# ---- the form ----------------------------------------------------------------------------------------------


def _multi(data: FormData, name: str) -> str:
    """A repeated field (the tag checkboxes) as comma-separated ids."""
    return ",".join(v for v in data.getlist(name) if isinstance(v, str) and v.strip().isdigit())


def _ids(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip().isdigit()]


def _form_of(task: Task | None, templates: list[Any], viewer: Viewer) -> Form:
    """The form filled from a saved draft, or a new one's defaults."""
    values = {"when": "now", "track_opens": "1", "track_clicks": "1", "on_capacity_exhausted": "wait"}
    values["rule_type"] = "all_contacts"
    if task is None:
        return Form(values)
    values.update(
        name=task.name,
        description=task.description or "",
        sender_id=str(task.sender_id or ""),
        track_opens="1" if task.track_opens else "",
        track_clicks="1" if task.track_clicks else "",
        on_capacity_exhausted=task.on_capacity_exhausted,
    )
    if task.schedule_at is not None:  # the draft's planned time, in the viewer's time zone as it was typed
        local = task.schedule_at.astimezone(zone_of(viewer.timezone))
        values.update(when="at", at_local=local.strftime("%Y-%m-%dT%H:%M"))
    for n, choice in enumerate(templates[:TEMPLATE_ROWS], start=1):
        values[f"template_id_{n}"] = str(choice.template_id or "")
        values[f"weight_{n}"] = str(choice.weight)
    rule = task.recipient_rule or {}
    if rule:
        values["rule_type"] = rule.get("type", "all_contacts")
        values["include_tag_ids"] = ",".join(map(str, rule.get("include_tag_ids", [])))
        values["exclude_tag_ids"] = ",".join(map(str, rule.get("exclude_tag_ids", [])))
        values["contact_ids"] = ",".join(map(str, rule.get("contact_ids", [])))
    return Form(values)


async def _read(request: Request) -> Form:
    form = await read_form(request)
    data = await request.form()
    for name in ("include_tag_ids", "exclude_tag_ids"):
        form.values[name] = _multi(data, name)
    for name in ("track_opens", "track_clicks"):
        form.values[name] = "1" if form[name] else ""
    return form


def _rule_of(form: Form) -> dict[str, Any]:
    kind = form["rule_type"] or "all_contacts"
    rule: dict[str, Any] = {"type": kind}
    if kind == "tag_based":
        rule["include_tag_ids"] = _ids(form["include_tag_ids"])
    if kind in ("tag_based", "all_contacts"):
        rule["exclude_tag_ids"] = _ids(form["exclude_tag_ids"])
    if kind == "specific":
        rule["contact_ids"] = _ids(form["contact_ids"])
    return rule


def _choices(form: Form) -> list[tuple[int, dict[str, Any]]]:
    """The template rows filled in: (row number, the choice as the API takes it)."""
    choices = []
    for n in range(1, TEMPLATE_ROWS + 1):
        if form[f"template_id_{n}"]:
            choice: dict[str, Any] = {"template_id": form[f"template_id_{n}"]}
            if form[f"weight_{n}"]:
                choice["weight"] = form[f"weight_{n}"]
            choices.append((n, choice))
    return choices


def _rename(form: Form) -> dict[str, str]:
    """The API's field names (`templates.0.weight`) → the form's (`weight_1`)."""
    rename = {"recipient_rule": "rule_type", "recipient_rule.type": "rule_type", "at": "at_local"}
    rename["schedule_at"] = "at_local"
    rename |= {f"recipient_rule.{k}": k for k in ("include_tag_ids", "exclude_tag_ids", "contact_ids")}
    choices = _choices(form)
    for i, (n, _) in enumerate(choices):
        rename |= {f"templates.{i}.template_id": f"template_id_{n}", f"templates.{i}.weight": f"weight_{n}"}
    first = choices[0][0] if choices else 1
    rename |= {k: f"template_id_{first}" for k in ("templates", "templates.template_id")}
    rename["templates.weight"] = f"weight_{first}"
    return rename


def _fields(form: Form, viewer: Viewer) -> TaskCreate:
    """The task's fields as `POST /api/v1/tasks` takes them."""
    templates = [choice for _, choice in _choices(form)]
    return form.parse(
        TaskCreate,
        name=form["name"],
        description=form["description"] or None,
        sender_id=form["sender_id"] or None,
        templates=templates or None,
        recipient_rule=_rule_of(form),
        timezone=viewer.timezone,
        track_opens=bool(form["track_opens"]),
        track_clicks=bool(form["track_clicks"]),
        on_capacity_exhausted=form["on_capacity_exhausted"] or "wait",
    )


def _schedule_at(form: Form, viewer: Viewer, *, required: bool) -> dt.datetime | None:
    """The time typed in the viewer's time zone, in UTC; None for "now", and for no time yet in a draft that is only
    saved (`required` when scheduling)."""
    if form["when"] != "at" or not (required or form["at_local"].strip()):
        return None
    try:
        local = dt.datetime.fromisoformat(form["at_local"])
    except ValueError:
        raise form.invalid("at_local", N_("Enter a valid date and time.")) from None
    if local.tzinfo is not None:
        raise form.invalid("at_local", N_("Enter a valid date and time."))
    return local.replace(tzinfo=zone_of(viewer.timezone)).astimezone(dt.UTC)


# ---- the page ----------------------------------------------------------------------------------------------


async def _estimate(session: Session, viewer: Viewer, rule: dict[str, Any]) -> dict[str, Any] | None:
    """The estimate of `POST /api/v1/recipients/estimate`, or None while the rule is incomplete."""
    try:
        parsed = Rule.parse(rule)
        await validate_rule(session, user_id=viewer.id, rule=parsed)
    except BadInput:
        return None
    result = await estimate(session, user_id=viewer.id, rule=parsed, now=utc_now())
    return {**result, "credit_balance": viewer.user.credit_balance}


def _estimate_context(request: Request, numbers: dict[str, Any] | None) -> dict[str, Any]:
    catalogue = catalogue_of(request)
    excluded = []
    if numbers:
        excluded = [
            (catalogue.gettext(EXCLUSION_LABELS.get(reason, reason)), count)
            for reason in EXCLUSION_ORDER
            if (count := numbers["excluded"].get(reason, 0))
        ]
    return {"estimate": numbers, "excluded": excluded}


async def _page(
    request: Request,
    session: Session,
    viewer: Viewer,
    form: Form,
    *,
    task: Task | None = None,
    status: int = 200,
    notice: str | None = None,
) -> HTMLResponse:
    senders = await content.sender_page(session, user_id=viewer.id, page=Page(CHOICES, None))
    templates = await content.template_page(session, user_id=viewer.id, page=Page(CHOICES, None))
    tree = await tags.tag_tree(session, user_id=viewer.id)
    tag_options = [(t.id, t.name, t.total_member_count) for t in tree]
    for root in tree:
        tag_options += [(c.id, f"{root.name} › {c.name}", c.member_count) for c in root.children]
    catalogue = catalogue_of(request)
    numbers = await _estimate(session, viewer, _rule_of(form))
    context = {
        "form": form,
        "task": task,
        "action": f"/tasks/{task.id}/edit" if task else "/tasks/new",
        "sender_options": [("", catalogue.gettext(N_("Choose a sender")))]
        + [
            (str(s.id), f"{s.display_name} ({s.local_part})" if s.display_name else s.local_part) for s in senders.items
        ],
        "template_options": [("", catalogue.gettext(N_("No template")))]
        + [(str(t.id), t.name) for t in templates.items],
        "tag_options": tag_options,
        "include": set(_ids(form["include_tag_ids"])),
        "exclude": set(_ids(form["exclude_tag_ids"])),
        "specific_count": len(_ids(form["contact_ids"])),
        "rows": range(1, TEMPLATE_ROWS + 1),
        "timezone": viewer.timezone,
        "capacity_options": [
            ("wait", catalogue.gettext(N_("Wait for the next quota reset"))),
            ("pause", catalogue.gettext(N_("Pause the campaign"))),
        ],
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
        "no_senders": not senders.items,
        "no_templates": not templates.items,
        **_estimate_context(request, numbers),
    }
    return render(request, "tasks/wizard.html", context, status=status)


def _writer(viewer: Viewer) -> None:
    """The wizard is a form: a read-only account gets the 403 page, as for its posts."""
    if not viewer.can_write:
        raise ReadOnlyAccount("read-only account")


async def _draft(session: Session, viewer: Viewer, task_id: int) -> Task:
    _writer(viewer)
    task = await service.get_task(session, task_id, user_id=viewer.id)
    if task.status != TaskStatus.DRAFT:
        raise NotFound("only a draft is edited here")
    return task


@router.get("/tasks/new")
async def new_campaign(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    _writer(viewer)
    return await _page(request, session, viewer, _form_of(None, [], viewer))


@router.get("/tasks/estimate")
async def estimate_fragment(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    """The recipient step's estimate for the rule in the query (the wizard's fields), as a fragment."""
    params = request.query_params
    form = Form({k: params.get(k, "") for k in ("rule_type", "contact_ids")})
    form.values["include_tag_ids"] = ",".join(v for v in params.getlist("include_tag_ids") if v.isdigit())
    form.values["exclude_tag_ids"] = ",".join(v for v in params.getlist("exclude_tag_ids") if v.isdigit())
    numbers = await _estimate(session, viewer, _rule_of(form))
    return render(request, "tasks/_estimate.html", _estimate_context(request, numbers))


@router.get("/tasks/{task_id}/edit")
async def edit_campaign(
    task_id: IdPath, request: Request, session: Session, viewer: CurrentViewer, notice: str | None = None
) -> Response:
    task = await _draft(session, viewer, task_id)
    form = _form_of(task, await service.task_templates(session, task.id), viewer)
    return await _page(request, session, viewer, form, task=task, notice=notice)


@router.post("/tasks/new")
async def create_campaign(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await _save(request, session, viewer, None)


@router.post("/tasks/{task_id}/edit")
async def update_campaign(task_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await _save(request, session, viewer, await _draft(session, viewer, task_id))


async def _save(request: Request, session: Session, viewer: Viewer, task: Task | None) -> Response:
    form = await _read(request)
    catalogue = catalogue_of(request)
    rename = _rename(form)
    task_id = task.id if task is not None else None
    try:
        body = _fields(form, viewer)
        at = _schedule_at(form, viewer, required=form["do"] == "schedule")
        values = {**body.values(), "schedule_at": at}  # a draft keeps its planned time (checked when scheduled)
        async with session.begin_nested():  # a refused change leaves the draft as it was
            if task is None:
                task = await service.create_task(session, user_id=viewer.id, values=values, actor=str(viewer.id))
            else:
                task = await service.update_task(session, task, values)
    except (BadInput, Conflict) as exc:
        form.fail(catalogue, exc, rename=rename)
        task = await service.get_task(session, task_id, user_id=viewer.id) if task_id else None  # as it was
        return await _page(request, session, viewer, form, task=task, status=exc.status)
    if form["do"] != "schedule":
        return RedirectResponse(f"/tasks/{task.id}/edit?notice=saved", status_code=303)
    try:  # as POST /api/v1/tasks/{id}/schedule: the render runs outside the transaction
        production = request.app.state.settings.is_production
        plan = await service.plan_schedule(session, task, at=at, production=production)
        await end_transaction(session)
        await service.check_renders(plan.renders)
        task = await service.get_task(session, task.id, user_id=viewer.id)
        await service.apply_schedule(session, task, plan=plan, actor=str(viewer.id))
    except (BadInput, Conflict) as exc:
        form.fail(catalogue, exc, rename=rename)
        await end_transaction(session)  # the draft is kept: it is edited further at its own address
        task = await service.get_task(session, task.id, user_id=viewer.id)
        return await _page(request, session, viewer, form, task=task, status=exc.status)
    return RedirectResponse(f"/tasks/{task.id}?notice=scheduled", status_code=303)
