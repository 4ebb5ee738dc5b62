"""Suppressions (`/suppressions`): the viewer's own suppression list — searched, filtered and paged by cursor —,
adding an address or a domain, removing an entry with a reason (a confirmation page), the CSV import and export,
and "check an address". The same service functions as `/api/v1/suppressions` (docs/console.md).

Read-only users see the list and the check; the frame refuses their writes. The global list's page
(`/admin/suppressions`, `admin_suppressions.py`) is the same page over `GLOBAL`: the helpers below take the list and
the page's address.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from edm.api.deps import IdPath, Session
from edm.api.suppressions import IMPORT_MAX_BYTES
from edm.clock import utc_now
from edm.console.auth import CurrentViewer, Viewer
from edm.console.errors import field_message
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.errors import BadInput, Conflict
from edm.paging import Page, decode_cursor_or_first, page_of
from edm.suppressions import csvio
from edm.suppressions import service as suppressions
from edm.suppressions.schemas import CheckOut, EntryCreate, EntryOut, ImportReportOut
from edm.suppressions.service import REASONS, EntryFilter, SuppressionList

router = new_router()

PER_PAGE = 50
NOTICES = {
    "added": N_("The entry was added."),
    "removed": N_("The entry was removed."),
}
KINDS = {"address": N_("Address"), "domain": N_("Domain")}
REASON_LABELS = {
    "unsubscribed": N_("Unsubscribed"),
    "hard_bounce": N_("Hard bounce"),
    "soft_bounce_limit": N_("Too many soft bounces"),
    "complaint": N_("Complaint"),
    "provider_suppressed": N_("Suppressed by the sending service"),
    "manual": N_("Added by hand"),
    "import": N_("Imported"),
}
CONTACT_REASONS = {
    "contact_inactive": N_("The contact's status does not receive mail."),
    "unsubscribed": N_("The contact has unsubscribed."),
    "hard_bounced": N_("The contact's address bounced hard."),
    "complained": N_("The contact complained."),
}
REASON_REQUIRED = N_("Say why the entry is removed.")
FILE_REQUIRED = N_("Choose a CSV file.")
FILE_TOO_LARGE = N_("The file is too large.")
NOT_CSV = N_("Only CSV files can be imported: save the sheet as CSV.")
if set(REASON_LABELS) != set(REASONS):
    raise ImportError("the console's suppression reasons differ from the service's")


def _filters(request: Request) -> tuple[EntryFilter, dict[str, str]]:
    """The list's filters from the URL (unknown values are dropped) and what to keep in the links."""
    params = request.query_params
    kind = params.get("kind", "")
    kind = kind if kind in KINDS else ""
    reason = params.get("reason", "")
    reason = reason if reason in REASON_LABELS else ""
    q = params.get("q", "").replace("\x00", "").strip()[:200]
    kept = {name: value for name, value in (("q", q), ("kind", kind), ("reason", reason)) if value}
    filters = EntryFilter(kind=kind or None, reasons=(reason,) if reason else (), q=q or None)
    return filters, kept


async def _list_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    form: Form | None = None,
    import_form: Form | None = None,
    report: ImportReportOut | None = None,
    status: int = 200,
    lst: SuppressionList | None = None,
    base: str = "/suppressions",
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    filters, kept = _filters(request)
    lst = lst or SuppressionList.of_user(viewer.id)
    is_global = lst.scope == "global"
    cursor = request.query_params.get("cursor")
    after, cursor = decode_cursor_or_first(cursor)
    page = Page(PER_PAGE, after)
    now = utc_now()
    rows = await suppressions.list_entries(session, lst, page=page, filters=filters, now=now)
    result = page_of(rows, page)
    total = await suppressions.count_entries(session, lst, filters=filters, now=now)
    check_form = Form({"check": request.query_params.get("check", "").strip()[:320]})
    checked: CheckOut | None = None
    if check_form["check"]:
        try:
            checked = CheckOut.of(
                await suppressions.check(
                    session, check_form["check"], user_id=None if is_global else viewer.id, now=now
                ),
                full_global=is_global,
            )
        except BadInput as exc:
            check_form.fail(catalogue, exc, rename={"email": "check"})
            check_form.error = ""
    notice = request.query_params.get("notice", "")
    context: dict[str, Any] = {
        "entries": [EntryOut.of(e, now) for e in result["items"]],
        "total": total,
        "next_cursor": result["next_cursor"],
        "first_page": cursor is None,
        "kept": kept,
        "filtered": bool(kept),
        "query": urlencode(kept),
        "next_query": urlencode({**kept, "cursor": result["next_cursor"] or ""}),
        "export_query": urlencode({**kept, "bom": "true"}) if kept else "bom=true",
        "form": form or Form({"kind": "address"}),
        "import_form": import_form or Form(),
        "report": report,
        "row_errors": [(e.row, e.column, field_message(catalogue, e.message)) for e in report.errors[:50]]
        if report
        else [],
        "check_form": check_form,
        "checked": checked,
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
        "kinds": KINDS,
        "reasons": REASON_LABELS,
        "contact_reasons": CONTACT_REASONS,
        "base": base,
        "global_list": is_global,
        "export_url": "/api/v1/admin/suppressions/export" if is_global else "/api/v1/suppressions/export",
    }
    return render(request, "suppressions/list.html", context, status=status)


@router.get("/suppressions")
async def suppression_list(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await _list_page(request, session, viewer)


@router.post("/suppressions")
async def add_entry(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await add_to(request, session, viewer, SuppressionList.of_user(viewer.id), "/suppressions")


async def add_to(request: Request, session: Session, viewer: Viewer, lst: SuppressionList, base: str) -> Response:
    """Add the form's address or domain to `lst` (the page at `base`), or show the form's errors."""
    form = await read_form(request)
    kind = form["kind"] if form["kind"] in KINDS else "address"
    value = form["value"].strip()
    try:
        if not value:
            raise form.invalid("value", N_("This field is required."))
        body = form.parse(
            EntryCreate,
            email=value if kind == "address" else None,
            domain=value if kind == "domain" else None,
            note=form["note"].strip() or None,
        )
        async with session.begin_nested():
            now = utc_now()
            entry = suppressions.new_entry(email=body.email, domain=body.domain, note=body.note, now=now)
            await suppressions.add_entry(session, lst, entry, actor=viewer.actor(request), now=now)
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), exc, rename={"email": "value", "domain": "value"})
        return await _list_page(request, session, viewer, form=form, status=exc.status, lst=lst, base=base)
    return RedirectResponse(f"{base}?notice=added", status_code=303)


async def remove_page(
    request: Request,
    session: Session,
    entry_id: int,
    form: Form,
    *,
    lst: SuppressionList,
    base: str,
    status: int = 200,
) -> HTMLResponse:
    """The confirmation page of removing entry `entry_id` of `lst` (the list page at `base`)."""
    entry = EntryOut.of(await suppressions.get_entry(session, lst, entry_id), utc_now())
    context = {
        "entry": entry,
        "form": form,
        "kinds": KINDS,
        "reasons": REASON_LABELS,
        "base": base,
        "global_list": lst.scope == "global",
    }
    return render(request, "suppressions/remove.html", context, status=status)


@router.get("/suppressions/{entry_id}/remove")
async def confirm_remove(entry_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await remove_page(
        request, session, entry_id, Form(), lst=SuppressionList.of_user(viewer.id), base="/suppressions"
    )


@router.post("/suppressions/{entry_id}/remove")
async def remove_entry(entry_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await remove_from(request, session, viewer, entry_id, SuppressionList.of_user(viewer.id), "/suppressions")


async def remove_from(
    request: Request, session: Session, viewer: Viewer, entry_id: int, lst: SuppressionList, base: str
) -> Response:
    """Remove entry `entry_id` of `lst` with the form's reason (audited by the service), or show the error."""
    form = await read_form(request)
    try:
        if not form["reason"].strip():
            raise form.invalid("reason", REASON_REQUIRED)
        async with session.begin_nested():
            await suppressions.remove_entry(
                session,
                lst,
                entry_id,
                reason=form["reason"],
                actor=viewer.actor(request),
            )
    except BadInput as exc:
        form.fail(catalogue_of(request), exc)
        return await remove_page(request, session, entry_id, form, lst=lst, base=base, status=exc.status)
    return RedirectResponse(f"{base}?notice=removed", status_code=303)


@router.post("/suppressions/import")
async def import_entries(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await import_into(request, session, viewer, SuppressionList.of_user(viewer.id), "/suppressions")


async def import_into(request: Request, session: Session, viewer: Viewer, lst: SuppressionList, base: str) -> Response:
    """Import the posted CSV file into `lst` and show the list page at `base` with the report."""
    data = await request.form()  # a plain form post: the CSRF check has read it already
    form = Form()
    limit = int(getattr(request.app.state.settings, "import_max_bytes", IMPORT_MAX_BYTES))
    upload = data.get("file")
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise form.invalid("file", FILE_REQUIRED)
        if upload.size is not None and upload.size > limit:
            raise form.invalid("file", FILE_TOO_LARGE)
        head = upload.file.read(4)
        upload.file.seek(0)
        if head.startswith(b"PK\x03\x04"):
            raise form.invalid("file", NOT_CSV)
        async with session.begin_nested():
            report = await csvio.import_csv(
                session,
                lst,
                upload.file,
                encoding=None,
                actor=viewer.actor(request),
                now=utc_now(),
            )
    except BadInput as exc:
        form.fail(catalogue_of(request), exc)
        return await _list_page(request, session, viewer, import_form=form, status=exc.status, lst=lst, base=base)
    return await _list_page(request, session, viewer, report=ImportReportOut.of(report), lst=lst, base=base)


async def list_page(request: Request, session: Session, viewer: Viewer, lst: SuppressionList, base: str) -> Response:
    """The list page of `lst` at `base` (the global list's page uses it)."""
    return await _list_page(request, session, viewer, lst=lst, base=base)
