"""Admin: users (`/admin/users`, `/admin/users/<id>`): every account — filtered by role and state, searched by
name, paged by cursor —, the "New user" form, one user's edit form, password reset, deletion (a confirmation page
that counts what goes with it) and the user's credit: balance, the adjust form and the ledger. The same service
functions as `/api/v1/admin/users` and `/api/v1/admin/users/{id}/credit` (docs/console.md#admin-pages), audited the
same way (`user.create`, `user.update`, `user.password_reset`, `user.deleted`, `credit.adjust`).

Every route takes `AdminViewer`: anyone but an admin gets 404, GET and POST alike.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.console.auth import AdminViewer, Viewer
from edm.console.errors import message_for
from edm.console.forms import Form, read_form
from edm.console.i18n import N_, Catalogue
from edm.console.labels import ROLE
from edm.console.rendering import catalogue_of, render, time_zones
from edm.console.routing import new_router
from edm.errors import BadInput, Conflict, EdmError, InsufficientCredit
from edm.models.users import User
from edm.paging import Page, decode_cursor, page_of
from edm.users import credit
from edm.users import service as users
from edm.users.credit import LedgerFilter
from edm.users.schemas import CreditOperation, PasswordReset, UserCreate, UserPatch

router = new_router()

PER_PAGE = 50
LEDGER_PER_PAGE = 25
COUNT_CAP = 10_000
NOTICES = {
    "created": N_("The user was created."),
    "updated": N_("The user was saved."),
    "password": N_("The password was set. The user's sessions were ended."),
    "adjusted": N_("The credit was adjusted."),
    "deleted": N_("The user and all its data were deleted."),
}
ACTIVE_FILTER = {"yes": N_("Active"), "no": N_("Inactive")}
OPERATIONS = {"add": N_("Add"), "subtract": N_("Subtract"), "set": N_("Set the balance to")}
LEDGER_KINDS = {
    "grant": N_("Granted"),
    "revoke": N_("Taken back"),
    "set": N_("Balance set"),
    "reserve": N_("Reserved for a campaign"),
    "charge": N_("Charged"),
    "refund": N_("Refunded"),
}
# What deleting a user takes with it (`users.DELETION_PARTS`), as the confirmation page names it.
DELETION_LABELS = {
    "contacts": N_("Contacts"),
    "tags": N_("Tags"),
    "imports": N_("Contact imports"),
    "templates": N_("Templates"),
    "senders": N_("Senders"),
    "images": N_("Images"),
    "campaigns": N_("Campaigns"),
    "suppressions": N_("Suppression list entries"),
    "service_mappings": N_("Sending service assignments"),
    "api_tokens": N_("API tokens"),
    "ledger_entries": N_("Credit ledger entries"),
    "events": N_("Delivery and engagement events"),
}
if set(DELETION_LABELS) != {name for name, _ in users.DELETION_PARTS}:
    raise ImportError("the console's deletion labels differ from the service's")

# The English details of the user and credit services' field errors → what a person reads beside the field.
FIELD_MESSAGES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^must be 3–64 characters of a-z"),
        N_("Use 3 to 64 characters: lower-case letters, digits, dots, hyphens or underscores."),
    ),
    (re.compile(r"^must be admin, user or read_only$"), N_("Choose one of the options.")),
    (re.compile(r"^must be add, subtract or set$"), N_("Choose one of the options.")),
    (re.compile(r"^is required$"), N_("This field is required.")),
    (re.compile(r"^must be a positive integer$"), N_("Enter a whole number greater than 0.")),
    (re.compile(r"^must be ≥ 0$"), N_("Enter 0 or more.")),
    (re.compile(r"^must be at most \d+$"), N_("This number is too large.")),
    (re.compile(r"^would take the balance above"), N_("This would take the balance above the largest possible.")),
]
NOT_ENOUGH = N_("The balance is only %(available)s.")


def fail(form: Form, catalogue: Catalogue, exc: EdmError, *, rename: dict[str, str] | None = None) -> None:
    """`form.fail`, with the user and credit services' own field messages translated here first, and a refused
    subtraction named beside the amount."""
    for detail in exc.details:
        if detail.get("translated"):
            continue
        message = str(detail.get("message", ""))
        for pattern, msgid in FIELD_MESSAGES:
            if pattern.search(message):
                detail.update(message=msgid, translated=True, params={})
                break
    form.fail(catalogue, exc, rename=rename)
    if isinstance(exc, InsufficientCredit):
        available = int(exc.extra.get("available", 0))
        form.errors.setdefault("amount", catalogue.gettext(NOT_ENOUGH) % {"available": f"{available:,}"})


def notice_of(request: Request) -> str:
    notice = request.query_params.get("notice", "")
    return catalogue_of(request).gettext(NOTICES[notice]) if notice in NOTICES else ""


def _cursor(request: Request, name: str = "cursor") -> tuple[int | None, bool]:
    """The `after` id of the page asked for (None: the first) and whether it is the first page."""
    try:
        after = decode_cursor(request.query_params.get(name))
    except BadInput:
        after = None
    return after, after is None


def _role_options(catalogue: Catalogue) -> list[tuple[str, str]]:
    return [(value, catalogue.gettext(label)) for value, label in ROLE.items()]


# ---- the list and the new-user form ----------------------------------------------------------------------


def _filters(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
    params = request.query_params
    role = params.get("role", "")
    role = role if role in ROLE else ""
    active = params.get("active", "")
    active = active if active in ACTIVE_FILTER else ""
    q = params.get("q", "").replace("\x00", "").strip()[:200]
    kept = {name: value for name, value in (("q", q), ("role", role), ("active", active)) if value}
    filters = {"role": role or None, "active": {"yes": True, "no": False}.get(active), "q": q or None}
    return filters, kept


async def _list_page(
    request: Request, session: Session, viewer: Viewer, *, form: Form | None = None, status: int = 200
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    filters, kept = _filters(request)
    after, first = _cursor(request)
    page = Page(PER_PAGE, after)
    result = page_of(await users.list_users(session, page, **filters), page)
    context: dict[str, Any] = {
        "users": result["items"],
        "next_query": urlencode({**kept, "cursor": result["next_cursor"] or ""}),
        "has_next": result["next_cursor"] is not None,
        "first_page": first,
        "kept": kept,
        "filtered": bool(kept),
        "query": urlencode(kept),
        "roles": ROLE,
        "active_filter": ACTIVE_FILTER,
        "form": form or Form({"role": "user", "timezone": "UTC", "must_change": "1", "credit": "0"}),
        "role_options": _role_options(catalogue),
        "time_zone_options": [(z, z) for z in time_zones()],
        "notice": notice_of(request),
    }
    return render(request, "admin/users.html", context, status=status)


@router.get("/admin/users")
async def user_list(request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await _list_page(request, session, viewer)


@router.post("/admin/users")
async def create_user(request: Request, session: Session, viewer: AdminViewer) -> Response:
    """`POST /api/v1/admin/users`'s service, with "must change the password" as the console's form offers it."""
    form = await read_form(request)
    try:
        body = form.parse(
            UserCreate,
            username=form["username"],
            email=form["email"],
            password=form["password"],
            role=form["role"],
            timezone=form["timezone"] or "UTC",
            credit=form["credit"] or "0",
        )
        async with session.begin_nested():
            user = await users.create_user(
                session,
                username=body.username,
                email=body.email,
                password=body.password,
                role=body.role,
                credit=body.credit,
                credit_reason=body.credit_reason,
                timezone=body.timezone,
                actor_user_id=viewer.id,
                actor=viewer.actor(request),
                must_change_password=form["must_change"] == "1",
            )
    except (BadInput, Conflict) as exc:
        fail(form, catalogue_of(request), exc)
        return await _list_page(request, session, viewer, form=form, status=exc.status)
    return RedirectResponse(f"/admin/users/{user.id}?notice=created", status_code=303)


# ---- one user ------------------------------------------------------------------------------------------------


def _edit_form(user: User) -> Form:
    return Form(
        {
            "email": user.email,
            "role": user.role,
            "is_active": "1" if user.is_active else "",
            "timezone": user.timezone,
        }
    )


async def _user_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    user_id: int,
    *,
    edit: Form | None = None,
    password: Form | None = None,
    adjust: Form | None = None,
    status: int = 200,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    user = await users.get_user(session, user_id)
    balance = await credit.current_balance(session, user_id)
    before, first = _cursor(request, "ledger")
    page = Page(LEDGER_PER_PAGE, before)
    rows = await credit.list_ledger(
        session, LedgerFilter(user_id=user_id), limit=page.limit + 1, before_id=page.after_id
    )
    ledger = page_of(rows, page)
    context: dict[str, Any] = {
        "user": user,
        "balance": balance,
        "ledger": ledger["items"],
        "ledger_next": ledger["next_cursor"],
        "ledger_first": first,
        "ledger_kinds": LEDGER_KINDS,
        "edit": edit or _edit_form(user),
        "password": password or Form({"must_change": "1"}),
        "adjust": adjust or Form({"operation": "add"}),
        "role_options": _role_options(catalogue),
        "operation_options": [(v, catalogue.gettext(label)) for v, label in OPERATIONS.items()],
        "time_zone_options": [(z, z) for z in time_zones()],
        "roles": ROLE,
        "notice": notice_of(request),
        "is_self": user.id == viewer.id,
    }
    return render(request, "admin/user.html", context, status=status)


@router.get("/admin/users/{user_id}")
async def user_page(user_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await _user_page(request, session, viewer, user_id)


@router.post("/admin/users/{user_id}")
async def edit_user(user_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    """`PATCH /api/v1/admin/users/{id}`: email, role, active, time zone."""
    form = await read_form(request)
    form.values["is_active"] = "1" if form["is_active"] == "1" else ""
    try:
        body = form.parse(
            UserPatch,
            email=form["email"],
            role=form["role"],
            is_active=form["is_active"] == "1",
            timezone=form["timezone"],
        )
        async with session.begin_nested():
            user = await users.get_user(session, user_id)
            await users.update_user(session, user, body.model_dump(exclude_unset=True), actor=viewer.actor(request))
    except (BadInput, Conflict) as exc:
        fail(form, catalogue_of(request), exc)
        return await _user_page(request, session, viewer, user_id, edit=form, status=exc.status)
    return RedirectResponse(f"/admin/users/{user_id}?notice=updated", status_code=303)


@router.post("/admin/users/{user_id}/password")
async def reset_password(user_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    """`POST /api/v1/admin/users/{id}/password`: a temporary password, "must change" by default."""
    form = await read_form(request)
    must_change = form["must_change"] == "1"
    try:
        body = form.parse(PasswordReset, password=form["password"], must_change_password=must_change)
        async with session.begin_nested():
            user = await users.get_user(session, user_id)
            await users.reset_password(
                session,
                user,
                body.password,
                must_change=body.must_change_password,
                actor=viewer.actor(request),
                keep_session=viewer.session_id if user.id == viewer.id else None,
            )
    except BadInput as exc:
        fail(form, catalogue_of(request), exc)
        return await _user_page(request, session, viewer, user_id, password=form, status=exc.status)
    return RedirectResponse(f"/admin/users/{user_id}?notice=password", status_code=303)


@router.post("/admin/users/{user_id}/credit")
async def adjust_credit(user_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    """`POST /api/v1/admin/users/{id}/credit`: add, subtract or set, with a reason (audited `credit.adjust`)."""
    form = await read_form(request)
    try:
        body = form.parse(CreditOperation, operation=form["operation"], amount=form["amount"], reason=form["reason"])
        async with session.begin_nested():
            await users.get_user(session, user_id)
            await credit.adjust(
                session,
                user_id=user_id,
                operation=body.operation,
                amount=body.amount,
                reason=body.reason,
                actor=viewer.actor(request),
            )
    except (BadInput, Conflict) as exc:
        fail(form, catalogue_of(request), exc)
        return await _user_page(request, session, viewer, user_id, adjust=form, status=exc.status)
    return RedirectResponse(f"/admin/users/{user_id}?notice=adjusted#credit", status_code=303)


# ---- deletion -------------------------------------------------------------------------------------------------


async def _delete_page(
    request: Request, session: Session, user_id: int, form: Form, *, status: int = 200
) -> HTMLResponse:
    user = await users.get_user(session, user_id)
    counts = await users.deletion_preview(session, user_id, cap=COUNT_CAP)
    context = {
        "user": user,
        "parts": [(DELETION_LABELS[name], counts[name]) for name, _ in users.DELETION_PARTS],
        "active_campaigns": counts["active_campaigns"],
        "cap": COUNT_CAP,
        "form": form,
    }
    return render(request, "admin/user_delete.html", context, status=status)


@router.get("/admin/users/{user_id}/delete")
async def confirm_delete(user_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await _delete_page(request, session, user_id, Form())


@router.post("/admin/users/{user_id}/delete")
async def delete_user(user_id: IdPath, request: Request, session: Session, viewer: AdminViewer) -> Response:
    """`DELETE /api/v1/admin/users/{id}`: refused while the user has queued, sending or paused campaigns, and for the
    last active admin."""
    form = await read_form(request)
    try:
        async with session.begin_nested():
            user = await users.get_user(session, user_id)
            await users.delete_user(session, user, actor=viewer.actor(request))
    except Conflict as exc:
        form.error = message_for(catalogue_of(request), exc)
        return await _delete_page(request, session, user_id, form, status=exc.status)
    return RedirectResponse("/admin/users?notice=deleted", status_code=303)
