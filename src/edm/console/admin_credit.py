"""Admin: credit (`/admin/credit`): the credit summary of the last 7 or 30 days (`GET /api/v1/admin/credit/summary`:
totals, and the trend per day as a uPlot chart drawn by edm.js like the dashboard's), every user's balance (paged by
cursor) and the batch adjust form (`POST /api/v1/admin/credit/batch`'s service: several users, one operation,
amount and reason; each user applied on its own and audited `credit.adjust`, the result listed per user).

Every route takes `AdminViewer`: anyone but an admin gets 404, GET and POST alike.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from edm.api.deps import Session
from edm.clock import utc_now
from edm.console.admin_users import OPERATIONS, fail
from edm.console.auth import AdminViewer
from edm.console.charts import day_chart
from edm.console.errors import message_for
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.errors import BadInput, NotFound
from edm.paging import Page, decode_cursor, page_of
from edm.users import credit
from edm.users import service as users
from edm.users.credit import BATCH_MAX
from edm.users.schemas import CreditBatch, CreditOperation

router = new_router()

PER_PAGE = 50
PERIODS = {"7d": N_("Last 7 days"), "30d": N_("Last 30 days")}
TOTALS = (
    ("granted", N_("Granted")),
    ("revoked", N_("Taken back")),
    ("reserved", N_("Reserved for campaigns")),
    ("charged", N_("Charged")),
    ("refunded", N_("Refunded")),
)
CHART_ID = "chart-credit"
CHART_TITLE = N_("Credit movements per day (UTC)")
USERS_REQUIRED = N_("Name at least one user.")
TOO_MANY_USERS = N_("At most %(max)s users at a time.")
NO_SUCH_USER = N_("No user “%(name)s”.")
SEPARATORS = re.compile(r"[\s,;]+")


async def _page(
    request: Request,
    session: Session,
    *,
    form: Form | None = None,
    results: list[dict[str, Any]] | None = None,
    status: int = 200,
) -> HTMLResponse:
    catalogue = catalogue_of(request)
    period = request.query_params.get("period", "30d")
    period = period if period in PERIODS else "30d"
    data = await credit.summary(session, period=period, now=utc_now())
    points = data["trend"]["points"]
    chart = day_chart(
        catalogue, chart_id=CHART_ID, title=CHART_TITLE, days=points, series=TOTALS, day=lambda p: p["start"].date()
    )
    try:
        after = decode_cursor(request.query_params.get("cursor"))
    except BadInput:
        after = None
    page = Page(PER_PAGE, after)
    balances = page_of(await users.list_users(session, page), page)
    context: dict[str, Any] = {
        "period": period,
        "periods": PERIODS,
        "summary": data,
        "totals": TOTALS,
        "chart": chart,
        "buckets": data["users_by_balance"],
        "users": balances["items"],
        "next_query": urlencode({"period": period, "cursor": balances["next_cursor"] or ""}),
        "has_next": balances["next_cursor"] is not None,
        "first_page": after is None,
        "form": form or Form({"operation": "add"}),
        "operation_options": [(v, catalogue.gettext(label)) for v, label in OPERATIONS.items()],
        "results": results,
        "batch_max": BATCH_MAX,
    }
    return render(request, "admin/credit.html", context, status=status)


@router.get("/admin/credit")
async def credit_page(request: Request, session: Session, viewer: AdminViewer) -> Response:
    return await _page(request, session)


@router.post("/admin/credit/batch")
async def batch_adjust(request: Request, session: Session, viewer: AdminViewer) -> Response:
    """Several users (usernames, emails or ids, separated by spaces, commas or new lines), one operation, amount and
    reason: `credit.batch_adjust`, as `POST /api/v1/admin/credit/batch`. A refused user changes nothing and the
    others still apply; the page lists each user's result."""
    form = await read_form(request)
    catalogue = catalogue_of(request)
    names = [n for n in SEPARATORS.split(form["users"]) if n]
    try:
        single = form.parse(CreditOperation, operation=form["operation"], amount=form["amount"], reason=form["reason"])
        if single.operation != "set" and single.amount == 0:
            raise BadInput.field("amount", "must be a positive integer")
        if not names:
            raise form.invalid("users", USERS_REQUIRED)
        if len(names) > BATCH_MAX:
            raise BadInput(
                "too many users",
                details=[
                    {"field": "users", "message": TOO_MANY_USERS, "params": {"max": BATCH_MAX}, "translated": True}
                ],
            )
        targets: dict[int, str] = {}
        for name in names:
            try:
                user = await users.find_user(session, name)
            except NotFound:
                raise BadInput(
                    "no such user",
                    details=[{"field": "users", "message": NO_SUCH_USER, "params": {"name": name}, "translated": True}],
                ) from None
            targets.setdefault(user.id, user.username)
        body = form.parse(
            CreditBatch,
            operation=single.operation,
            amount=single.amount,
            reason=single.reason,
            items=[{"user_id": user_id} for user_id in targets],
        )
        done = await credit.batch_adjust(session, body.resolved(), actor=viewer.actor(request))
    except BadInput as exc:
        fail(form, catalogue, exc)
        return await _page(request, session, form=form, status=exc.status)
    results = [
        {
            "user_id": r.user_id,
            "username": targets[r.user_id],
            "balance": r.adjusted.balance if r.adjusted else None,
            "error": message_for(catalogue, r.error) if r.error else "",
        }
        for r in done
    ]
    return await _page(request, session, form=Form({"operation": single.operation}), results=results)
