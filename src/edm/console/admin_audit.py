"""The audit log (`/admin/audit`, admins only): who did what, newest first, filtered by actor, action (a prefix),
target type and days in the admin's time zone, paged by cursor, each row's details shown as stored (the service
redacts secrets when it writes a row). The same service as `GET /api/v1/admin/audit-log` (docs/admin.md)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from edm.api.deps import Session
from edm.console.auth import AdminViewer
from edm.console.forms import Form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render, zone_of
from edm.console.routing import new_router
from edm.errors import NotFound
from edm.paging import MAX_ID, Page, decode_cursor_or_first, page_of
from edm.system.service import AuditFilter, list_audit
from edm.users.service import find_user

router = new_router()

PER_PAGE = 50
FIELDS = ("actor", "action", "target_type", "target_id", "from", "to")
LIMITS = {"actor": 320, "action": 64, "target_type": 32, "target_id": 64}
NO_SUCH_USER = N_("No user has this name, email or id.")
TOO_LONG = N_("Use at most %(max_length)s characters.")
BAD_DAY = N_("Enter a valid date.")
DAY_ORDER = N_("Choose a day after the first one.")


def _day(text: str, zone: dt.tzinfo, *, after: int = 0) -> dt.datetime | None:
    """Midnight of the day `text` (YYYY-MM-DD) in `zone` (or of the `after`-th day after it), in UTC; None when
    it is no date."""
    try:
        day = dt.date.fromisoformat(text) + dt.timedelta(days=after)
    except (ValueError, OverflowError):
        return None
    return dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.UTC)


async def _filters(request: Request, session: Session, zone: dt.tzinfo) -> tuple[Form, AuditFilter | None]:
    """The filter form from the URL and the service's filter; None (and the errors in the form) when one is bad."""
    params = request.query_params
    form = Form({name: params.get(name, "").strip() for name in FIELDS})
    errors: dict[str, str] = {}
    catalogue = catalogue_of(request)
    for name, limit in LIMITS.items():
        if len(form[name]) > limit or "\x00" in form[name]:
            errors[name] = catalogue.gettext(TOO_LONG) % {"max_length": limit}
    actor_id: int | None = None
    if form["actor"] and "actor" not in errors:
        if form["actor"].isdigit() and not 1 <= int(form["actor"]) <= MAX_ID:
            errors["actor"] = catalogue.gettext(NO_SUCH_USER)
        else:
            try:
                actor_id = (await find_user(session, form["actor"])).id
            except NotFound:
                errors["actor"] = catalogue.gettext(NO_SUCH_USER)
    since = until = None
    if form["from"]:
        since = _day(form["from"], zone)
        if since is None:
            errors["from"] = catalogue.gettext(BAD_DAY)
    if form["to"]:
        until = _day(form["to"], zone, after=1)  # the day named is included
        if until is None:
            errors["to"] = catalogue.gettext(BAD_DAY)
    if since and until and until <= since:
        errors["to"] = catalogue.gettext(DAY_ORDER)
    if errors:
        form.errors = errors
        form.error = catalogue.gettext(N_("Some fields need your attention."))
        return form, None
    filters = AuditFilter(
        actor_user_id=actor_id,
        action=form["action"] or None,
        target_type=form["target_type"] or None,
        target_id=form["target_id"] or None,
        since=since,
        until=until,
    )
    return form, filters


@router.get("/admin/audit")
async def audit_log(request: Request, session: Session, viewer: AdminViewer) -> Response:
    zone = zone_of(viewer.timezone)
    form, filters = await _filters(request, session, zone)
    cursor = request.query_params.get("cursor")
    after, cursor = decode_cursor_or_first(cursor)
    kept = {name: form[name] for name in FIELDS if form[name]}
    rows: list[Any] = []
    next_cursor = None
    if filters is not None:
        page = Page(PER_PAGE, after)
        result = page_of(await list_audit(session, filters, limit=PER_PAGE + 1, before_id=after), page)
        rows, next_cursor = result["items"], result["next_cursor"]
    names: dict[int, str] = {}
    for row in rows:
        if row.actor_user_id is not None and row.actor_user_id not in names:
            try:
                names[row.actor_user_id] = (await find_user(session, str(row.actor_user_id))).username
            except NotFound:
                names[row.actor_user_id] = ""
    entries = [
        {
            "row": row,
            "actor_name": names.get(row.actor_user_id, "") if row.actor_user_id is not None else "",
            "details": json.dumps(row.details, ensure_ascii=False, indent=2, sort_keys=True, default=str)
            if row.details
            else "",
        }
        for row in rows
    ]
    context = {
        "form": form,
        "entries": entries,
        "kept": kept,
        "filtered": bool(kept),
        "first_page": cursor is None,
        "query": urlencode(kept),
        "next_cursor": next_cursor,
        "next_query": urlencode({**kept, "cursor": next_cursor or ""}),
        "zone_name": viewer.timezone or "UTC",
    }
    return render(request, "admin/audit.html", context, status=422 if form.errors else 200)
