"""Contacts (`/contacts`, `/contacts/new`, `/contacts/{id}`): the list with its search, filters, sorting, cursor
paging, bulk actions and export; the form that creates a contact; a contact's detail with its edit form,
its tags (add one, remove an explicit one), resubscribe and delete — the service functions behind `/api/v1/contacts*`.

The filters live in the URL (`q`, `status`, `tag`, `import`, `from`, `to`, `sort`, `cursor`): a filtered list
can be bookmarked, and the bulk form carries them to act on "all N matching". Every bulk action is confirmed on
a page that names the count it affects; the confirmed count travels as the service's `expected_count`, so a
selection that changed meanwhile is refused (409) instead of touching more than was shown.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from babel.numbers import format_decimal
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.console import conversations as conversation_pages
from edm.console.auth import CurrentViewer, Viewer
from edm.console.forms import Form, read_form
from edm.console.i18n import N_, Catalogue
from edm.console.rendering import catalogue_of, render, zone_of
from edm.console.routing import new_router
from edm.contacts import activity, service, tags
from edm.contacts.bulk import BulkAction, run_bulk
from edm.contacts.filters import ContactFilter, Sort, decode_sort_cursor
from edm.contacts.schemas import ContactCreate, ContactUpdate, ResubscribeIn, TagNodeOut
from edm.errors import BadInput, Conflict, EdmError, NotFound
from edm.models.contacts import ContactStatus
from edm.paging import LIST_COUNT_CAP as COUNT_CAP
from edm.paging import MAX_ID, Page

router = new_router()

PAGE_SIZE = 50
ACTIVITY_SIZE = 20
MAX_SELECTED = 10_000

STATUS = {
    "active": N_("Active"),
    "pending": N_("Pending"),
    "inactive": N_("Inactive"),
    "archived": N_("Archived"),
}
# Columns the list sorts by (the service's sort keys) and their headers.
SORTABLE = {"email": N_("Email"), "name": N_("Name"), "created": N_("Created"), "last_activity": N_("Last activity")}
ACTIONS = {
    "tag": N_("Add a tag"),
    "untag": N_("Remove a tag"),
    "set_status": N_("Set the status"),
    "delete": N_("Delete"),
}
QUESTIONS = {
    "tag": N_("Add the tag “%(tag)s” to these contacts?"),
    "untag": N_("Remove the tag “%(tag)s” from these contacts?"),
    "set_status": N_("Set the status of these contacts to “%(status)s”?"),
    "delete": N_("Delete these contacts? This cannot be undone."),
}
NOTICES = {
    "created": N_("The contact was created."),
    "saved": N_("The contact was saved."),
    "deleted": N_("The contact was deleted."),
    "resubscribed": N_("The contact was resubscribed."),
    "tagged": N_("The tag was added."),
    "untagged": N_("The tag was removed."),
    "bulk": N_("Done: %(matched)s contacts matched, %(changed)s changed."),
}
EVENTS = {
    "accepted": N_("Accepted by the sending service"),
    "delivered": N_("Delivered"),
    "deferred": N_("Delayed"),
    "soft_bounced": N_("Soft bounce"),
    "hard_bounced": N_("Hard bounce"),
    "rejected": N_("Rejected before sending"),
    "opened": N_("Opened"),
    "clicked": N_("Clicked"),
    "complained": N_("Complaint"),
    "unsubscribed": N_("Unsubscribed"),
    "replied": N_("Replied"),
    "unknown": N_("Unknown event"),
}
SUPPRESSION_REASONS = {
    "contact_inactive": N_("The contact's status is inactive or archived."),
    "unsubscribed": N_("The contact unsubscribed."),
    "hard_bounced": N_("A message to the address bounced hard."),
    "complained": N_("The contact complained (marked a message as spam)."),
}
# The text fields of the create and edit forms, in their order.
TEXT_FIELDS = {
    "email": N_("Email"),
    "first_name": N_("First name"),
    "last_name": N_("Last name"),
    "name": N_("Full name"),
    "phone": N_("Phone"),
    "company": N_("Company"),
    "position": N_("Position"),
}
ATTRIBUTES_INVALID = N_('Enter a JSON object of attributes, e.g. {"city": "Paris"}: keys of letters, digits and _.')
FILTER_FIELDS = ("q", "status", "tag", "import", "from", "to")


@dataclass
class Listing:
    """The list's filters as typed (kept in the URL and the forms) and as the service's ContactFilter."""

    form: Form
    filters: ContactFilter = ContactFilter()
    sort: str = "-created"
    params: dict[str, str] = field(default_factory=dict)  # the non-empty filters, for links

    def url(self, **changes: str | None) -> str:
        values = {**self.params, "sort": self.sort, **changes}
        query = urlencode({k: v for k, v in values.items() if v})
        return "/contacts" + (f"?{query}" if query else "")


def _listing(values: dict[str, str], viewer: Viewer) -> Listing:
    """Parse the filters; a bad one is a field error of the filter form and the list shows unfiltered."""
    form = Form({k: values.get(k, "").strip() for k in (*FILTER_FIELDS, "sort")})
    sort = form["sort"] or "-created"
    if sort.removeprefix("-") not in (*SORTABLE, "id", "updated"):
        sort = "-created"
    errors: dict[str, str] = {}
    status = form["status"]
    if status and status not in STATUS:
        errors["status"] = N_("Choose one of the options.")
    tag_id = _id(form["tag"], "tag", errors)
    import_id = _id(form["import"], "import", errors)
    zone = zone_of(viewer.timezone)
    start = _day(form["from"], "from", errors, zone)
    end = _day(form["to"], "to", errors, zone)
    if start and end and end < start:
        errors["to"] = N_("Choose a day after the first one.")
    if len(form["q"]) > 200 or "\x00" in form["q"]:
        errors["q"] = N_("Use at most %(max_length)s characters.")
    if errors:
        form.errors = errors
        return Listing(form, sort=sort)
    filters = ContactFilter(
        q=form["q"] or None,
        statuses=(ContactStatus(status),) if status else (),
        tag_ids=(tag_id,) if tag_id else (),
        import_id=import_id,
        created_from=start,
        created_to=end + dt.timedelta(days=1) if end else None,
    )
    params = {k: form[k] for k in FILTER_FIELDS if form[k]}
    return Listing(form, filters=filters, sort=sort, params=params)


def _id(text: str, name: str, errors: dict[str, str]) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        errors[name] = N_("Choose one of the options.")
        return None
    return int(text)


def _day(text: str, name: str, errors: dict[str, str], zone: dt.tzinfo) -> dt.datetime | None:
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        errors[name] = N_("Enter a valid date.")
        return None
    return dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.UTC)


def _export_url(listing: Listing) -> str:
    """The API's streamed CSV export of the same filters (it takes the console's cookie for a GET)."""
    f = listing.filters
    pairs: list[tuple[str, str]] = [("bom", "true")]
    if f.q:
        pairs.append(("q", f.q))
    pairs += [("status", s) for s in f.statuses] + [("tag_id", str(t)) for t in f.tag_ids]
    if f.import_id:
        pairs.append(("import_id", str(f.import_id)))
    if f.created_from:
        pairs.append(("created_from", f.created_from.isoformat()))
    if f.created_to:
        pairs.append(("created_to", f.created_to.isoformat()))
    return "/api/v1/contacts/export?" + urlencode(pairs)


def _tag_options(tree: list[TagNodeOut]) -> list[tuple[str, str]]:
    options = []
    for root in tree:
        options.append((str(root.id), root.name))
        options += [(str(child.id), f"{root.name} / {child.name}") for child in root.children]
    return options


def _notice(catalogue: Catalogue, notice: str | None, values: dict[str, str]) -> str:
    if notice not in NOTICES:
        return ""
    text = catalogue.gettext(NOTICES[notice])
    if notice == "bulk":
        return text % {k: _number(catalogue, values.get(k)) for k in ("matched", "changed")}
    return text


def _number(catalogue: Catalogue, value: str | None) -> str:
    return format_decimal(int(value), locale=catalogue.locale) if value and value.isdigit() else "0"


# --------------------------------------------------------------------------------------------------------
# The list
# --------------------------------------------------------------------------------------------------------


async def _list_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    listing: Listing,
    *,
    cursor: str | None = None,
    bulk: Form | None = None,
    status: int = 200,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    sort = Sort.parse(listing.sort)
    if listing.form.errors:
        status = 422
    if listing.filters.tag_ids and sort.key == "created":
        # A tag's members newest first in id order (creation order, ties aside), read from the tag's memberships:
        # the created order would walk every contact to find the members of a tag on old contacts.
        sort = Sort("id", sort.descending)
    try:
        after = decode_sort_cursor(cursor, sort)
    except BadInput:
        after, cursor = None, None  # a cursor of another sort (an old link): the first page
    result = await service.contact_page(
        session, user_id=viewer.id, page=Page(PAGE_SIZE, None), filters=listing.filters, sort=sort, cursor=after
    )
    if after is None and result.next_cursor is None:  # the first page holds every match: no count query needed
        total = len(result.items)
    else:
        total = await service.count_contacts(session, user_id=viewer.id, filters=listing.filters, cap=COUNT_CAP)
    tree = await tags.tag_tree(session, user_id=viewer.id, count_cap=1)  # names only
    filtered = bool(listing.params)
    context = {
        "contacts": result.items,
        "total": min(total, COUNT_CAP),
        "more": total > COUNT_CAP,  # "more than COUNT_CAP"
        "next_url": listing.url(cursor=result.next_cursor) if result.next_cursor else "",
        "first_url": listing.url() if cursor else "",
        "listing": listing,
        "filters": listing.form,
        "filtered": filtered,
        "columns": _columns(listing, Sort.parse(listing.sort)),
        "export_url": _export_url(listing),
        "status_options": [("", catalogue.gettext(N_("Any status"))), *_statuses(catalogue)],
        "tag_options": [("", catalogue.gettext(N_("Any tag"))), *_tag_options(tree)],
        "bulk_tag_options": _tag_options(tree),
        "bulk_status_options": _statuses(catalogue),
        "action_options": [(k, catalogue.gettext(v)) for k, v in ACTIONS.items()],
        "bulk": bulk or Form({"action": "tag", "scope": "selected"}),
        "status_labels": STATUS,
        "notice": _notice(catalogue, request.query_params.get("notice"), dict(request.query_params)),
    }
    return render(request, "contacts/list.html", context, status=status)


@dataclass(frozen=True)
class Column:
    label: str  # a msgid
    url: str  # sorts by this column (the other way when it is the current one)
    aria_sort: str  # ascending | descending | "" when not sorted by it


def _columns(listing: Listing, sort: Sort) -> list[Column]:
    columns = []
    for key, label in SORTABLE.items():
        if sort.key == key:
            aria = "descending" if sort.descending else "ascending"
            target = key if sort.descending else f"-{key}"
        else:
            aria = ""
            target = f"-{key}" if key in ("created", "last_activity") else key
        columns.append(Column(label, listing.url(sort=target), aria))
    return columns


def _statuses(catalogue: Catalogue) -> list[tuple[str, str]]:
    return [(k, catalogue.gettext(v)) for k, v in STATUS.items()]


@router.get("/contacts")
async def contacts_list(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    listing = _listing(dict(request.query_params), viewer)
    return await _list_page(request, session, viewer, listing, cursor=request.query_params.get("cursor"))


@dataclass
class BulkChoice:
    action: str
    scope: str  # selected | all
    ids: list[int]
    tag_id: int | None
    status: str | None


async def _bulk_choice(request: Request, form: Form) -> BulkChoice:
    """The bulk form's choice; a missing part is a field error of that form."""
    data = await request.form()
    action = form["action"]
    if action not in ACTIONS:
        raise form.invalid("action", N_("Choose one of the options."))
    scope = "all" if form["scope"] == "all" else "selected"
    ids: list[int] = []
    for value in data.getlist("id"):
        if not isinstance(value, str) or not value.isdigit() or not 1 <= int(value) <= MAX_ID:
            raise form.invalid("form", N_("Choose one of the options."))
        ids.append(int(value))
    if scope == "selected" and not ids:
        raise form.invalid("scope", N_("Select at least one contact, or choose all matching contacts."))
    if len(ids) > MAX_SELECTED:
        raise form.invalid("scope", N_("Select at most 10,000 contacts, or choose all matching contacts."))
    tag_id = _id(form["tag_id"], "tag_id", {}) if action in ("tag", "untag") else None
    if action in ("tag", "untag") and tag_id is None:
        raise form.invalid("tag_id", N_("Choose a tag."))
    status = form["new_status"] if action == "set_status" else None  # not "status": that is the list's filter
    if action == "set_status" and status not in STATUS:
        raise form.invalid("new_status", N_("Choose one of the options."))
    return BulkChoice(action, scope, ids, tag_id, status)


def _bulk_action(choice: BulkChoice, listing: Listing, expected: int | None) -> BulkAction:
    return BulkAction(
        action=choice.action,
        ids=tuple(choice.ids) if choice.scope == "selected" else None,
        filters=listing.filters if choice.scope == "all" else ContactFilter(),
        tag_ids=(choice.tag_id,) if choice.tag_id else (),
        status=choice.status,
        expected_count=expected,
    )


@router.post("/contacts/bulk")
async def bulk(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    """First post: the confirmation page with the count. Second post (`expected_count`): the action."""
    form = await read_form(request)
    listing = _listing(form.values, viewer)
    catalogue = catalogue_of(request)
    if listing.form.errors:
        return await _list_page(request, session, viewer, listing, status=422)
    try:
        choice = await _bulk_choice(request, form)
    except BadInput as exc:
        form.fail(catalogue, exc)
        return await _list_page(request, session, viewer, listing, bulk=form, status=422)
    expected_text = form["expected_count"]
    if expected_text.isdigit():
        try:
            result = await run_bulk(
                session, user_id=viewer.id, request=_bulk_action(choice, listing, int(expected_text))
            )
        except Conflict as exc:  # the matching contacts changed since the count was shown
            return await _confirm_page(request, session, viewer, listing, choice, form, changed=exc)
        except BadInput as exc:
            form.fail(catalogue, exc)
            return await _list_page(request, session, viewer, listing, bulk=form, status=422)
        query = urlencode(
            {
                **listing.params,
                "sort": listing.sort,
                "notice": "bulk",
                "matched": result.matched,
                "changed": result.changed,
            }
        )
        return RedirectResponse(f"/contacts?{query}", status_code=303)
    return await _confirm_page(request, session, viewer, listing, choice, form)


async def _confirm_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    listing: Listing,
    choice: BulkChoice,
    form: Form,
    *,
    changed: EdmError | None = None,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    if choice.scope == "all":
        count = await service.count_contacts(session, user_id=viewer.id, filters=listing.filters)
    else:
        count = len(await service.own_contact_ids(session, user_id=viewer.id, ids=choice.ids, field="id"))
    tag_name = ""
    if choice.tag_id:
        tag_name = (await tags.tag_detail(session, user_id=viewer.id, tag_id=choice.tag_id)).name
    question = catalogue.gettext(QUESTIONS[choice.action]) % {
        "tag": tag_name,
        "status": catalogue.gettext(STATUS.get(choice.status or "", N_("Active"))),
    }
    context = {
        "question": question,
        "count": count,
        "choice": choice,
        "listing": listing,
        "changed": changed is not None,
        "back_url": listing.url(),
        "danger": choice.action == "delete",
    }
    return render(request, "contacts/confirm.html", context, status=409 if changed else 200)


# --------------------------------------------------------------------------------------------------------
# New contact
# --------------------------------------------------------------------------------------------------------


def _text_values(form: Form, *, partial: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        if name == "email":
            values[name] = form[name]
        elif form[name] or partial:
            values[name] = form[name] or None
    return values


@router.get("/contacts/new")
async def new_contact(request: Request, viewer: CurrentViewer) -> Response:
    return _new_page(request, Form({"status": "active"}))


def _new_page(request: Request, form: Form, status: int = 200) -> HTMLResponse:
    context = {
        "form": form,
        "text_fields": TEXT_FIELDS,
        "status_options": _statuses(catalogue_of(request)),
    }
    return render(request, "contacts/new.html", context, status=status)


@router.post("/contacts/new")
async def create_contact(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        body = form.parse(
            ContactCreate, **_text_values(form, partial=False), status=form["status"] or "active", source="console"
        )
        values = body.model_dump(exclude={"tag_ids"})
        contact = await service.create_contact(session, user_id=viewer.id, values=values)
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), exc)
        return _new_page(request, form, status=exc.status)
    return RedirectResponse(f"/contacts/{contact.id}?notice=created", status_code=303)


# --------------------------------------------------------------------------------------------------------
# A contact
# --------------------------------------------------------------------------------------------------------


def _edit_form(contact: Any) -> Form:
    values = {name: getattr(contact, name) or "" for name in TEXT_FIELDS}
    values["status"] = contact.status
    values["custom_attributes"] = (
        json.dumps(contact.custom_attributes, ensure_ascii=False, indent=1) if contact.custom_attributes else ""
    )
    return Form(values)


async def _detail_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    contact_id: int,
    *,
    edit: Form | None = None,
    resubscribe: Form | None = None,
    tagging: Form | None = None,
    status: int = 200,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    contact = await service.get_contact(session, user_id=viewer.id, contact_id=contact_id)
    detail = await activity.contact_detail(session, contact)
    explicit = [t for t in detail.tags if not t.implied]
    tag_options: list[tuple[str, str]] = []
    if viewer.can_write:  # the tags it may still get: every tag of the user but its explicit ones
        tree = await tags.tag_tree(session, user_id=viewer.id, count_cap=1)  # names only
        has = {str(t.id) for t in explicit}
        tag_options = [(k, v) for k, v in _tag_options(tree) if k not in has]
    cursor = request.query_params.get("activity")
    try:
        timeline = await activity.activity(
            session, user_id=viewer.id, contact_id=contact_id, limit=ACTIVITY_SIZE, cursor=cursor
        )
    except BadInput:
        cursor = None
        timeline = await activity.activity(
            session, user_id=viewer.id, contact_id=contact_id, limit=ACTIVITY_SIZE, cursor=None
        )
    context = {
        "contact": detail,
        "explicit_tags": explicit,
        "implied_tags": [t for t in detail.tags if t.implied],
        "timeline": timeline.items,
        "older_url": f"/contacts/{contact_id}?{urlencode({'activity': timeline.next_cursor})}#activity"
        if timeline.next_cursor
        else "",
        "newest_url": f"/contacts/{contact_id}#activity" if cursor else "",
        "edit": edit or _edit_form(detail),
        "resubscribe": resubscribe or Form(),
        "tagging": tagging or Form(),
        "tag_options": [("", catalogue.gettext(N_("Choose a tag"))), *tag_options] if tag_options else [],
        "text_fields": TEXT_FIELDS,
        "status_options": _statuses(catalogue),
        "status_labels": STATUS,
        "event_labels": EVENTS,
        "suppression_reasons": SUPPRESSION_REASONS,
        "notice": _notice(catalogue, request.query_params.get("notice"), {}),
        "conversations": await conversation_pages.of_contact(session, viewer, contact_id),
    }
    return render(request, "contacts/detail.html", context, status=status)


@router.get("/contacts/{contact_id}")
async def contact_page(contact_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    return await _detail_page(request, session, viewer, contact_id)


@router.post("/contacts/{contact_id}")
async def save_contact(contact_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    catalogue = catalogue_of(request)
    try:
        attributes = _attributes(form)
        body = form.parse(
            ContactUpdate, **_text_values(form, partial=True), status=form["status"], custom_attributes=attributes
        )
        await service.update_contact(
            session, user_id=viewer.id, contact_id=contact_id, changes=body.model_dump(exclude_unset=True)
        )
    except (BadInput, Conflict) as exc:
        if any(str(d.get("field", "")).startswith("custom_attributes") for d in exc.details):
            exc = form.invalid("custom_attributes", ATTRIBUTES_INVALID)
        form.fail(catalogue, exc)
        return await _detail_page(request, session, viewer, contact_id, edit=form, status=exc.status)
    return RedirectResponse(f"/contacts/{contact_id}?notice=saved", status_code=303)


def _attributes(form: Form) -> dict[str, Any]:
    text = form["custom_attributes"]
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise form.invalid("custom_attributes", ATTRIBUTES_INVALID) from None
    if not isinstance(value, dict):
        raise form.invalid("custom_attributes", ATTRIBUTES_INVALID)
    return value


@router.post("/contacts/{contact_id}/resubscribe")
async def resubscribe(contact_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        body = form.parse(ResubscribeIn, reason=form["reason"])
        await activity.resubscribe(
            session, user_id=viewer.id, contact_id=contact_id, reason=body.reason, actor=viewer.actor(request)
        )
    except (BadInput, Conflict) as exc:
        form.fail(catalogue_of(request), exc)
        return await _detail_page(request, session, viewer, contact_id, resubscribe=form, status=exc.status)
    return RedirectResponse(f"/contacts/{contact_id}?notice=resubscribed", status_code=303)


@router.post("/contacts/{contact_id}/tags")
async def add_tag(contact_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    """One of the user's tags added to this contact (the service behind `POST /api/v1/contacts/{id}/tags`)."""
    form = await read_form(request)
    try:
        tag_id = _id(form["tag_id"], "tag_id", {})
        if tag_id is None:
            raise form.invalid("tag_id", N_("Choose a tag."))
        async with session.begin_nested():
            await tags.tag_contact(session, user_id=viewer.id, contact_id=contact_id, tag_ids=[tag_id])
    except BadInput as exc:  # not a tag of the user's (another's, or deleted meanwhile): beside the field
        form.fail(catalogue_of(request), exc, rename={"tag_ids": "tag_id"})
        return await _detail_page(request, session, viewer, contact_id, tagging=form, status=exc.status)
    return RedirectResponse(f"/contacts/{contact_id}?notice=tagged#tags", status_code=303)


@router.post("/contacts/{contact_id}/tags/{tag_id}/remove")
async def remove_tag(
    contact_id: IdPath, tag_id: IdPath, request: Request, session: Session, viewer: CurrentViewer
) -> Response:
    """One explicit tag removed from this contact (`DELETE /api/v1/contacts/{id}/tags/{tag_id}`); an implied
    parent goes with its last child. A tag that is not the user's is a message over the tags' panel."""
    await service.get_contact(session, user_id=viewer.id, contact_id=contact_id)  # an unknown contact: 404 page
    try:
        async with session.begin_nested():
            await tags.untag_contact(session, user_id=viewer.id, contact_id=contact_id, tag_id=tag_id)
    except NotFound:
        form = Form(error=catalogue_of(request).gettext(N_("This tag no longer exists.")))
        return await _detail_page(request, session, viewer, contact_id, tagging=form, status=422)
    return RedirectResponse(f"/contacts/{contact_id}?notice=untagged#tags", status_code=303)


@router.post("/contacts/{contact_id}/delete")
async def delete(contact_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    await service.delete_contact(session, user_id=viewer.id, contact_id=contact_id)
    return RedirectResponse("/contacts?notice=deleted", status_code=303)
