"""The account page (`/account`): profile (time zone, language), password, API tokens, console sessions — the
service functions behind `/api/v1/me/*`.

Every write is a plain form POST answered by a redirect back to the page with a `notice` (post/redirect/get), so
a reload never repeats it; the one exception is creating a token, whose answer is the page showing the token,
once. A read-only account sees the same page without any form that writes.
"""

from __future__ import annotations

import datetime as dt

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import IdPath, Session
from edm.clock import utc_now
from edm.console import i18n
from edm.console.auth import CurrentViewer, Viewer
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.labels import Labels as LABELS
from edm.console.rendering import catalogue_of, render, time_zones, zone_of
from edm.console.routing import new_router
from edm.errors import BadInput
from edm.models.users import Role
from edm.paging import Page
from edm.users import sessions
from edm.users.schemas import SessionOut, TokenCreate
from edm.users.service import create_token, list_tokens, revoke_token, update_own_profile

router = new_router()

SHOWN = 100  # tokens and sessions listed (more is unusual; the API pages through them all)
NOTICES = {
    "password_changed": N_("Your password was changed. Your other sessions have ended."),
    "profile_saved": N_("Your profile was saved."),
    "token_revoked": N_("The token was revoked; it no longer works."),
    "session_ended": N_("The session was ended."),
    "sessions_ended": N_("All your other sessions were ended."),
}


async def _page(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    status: int = 200,
    notice: str | None = None,
    profile: Form | None = None,
    token_form: Form | None = None,
    new_token: str = "",
) -> HTMLResponse:
    tokens = (await list_tokens(session, viewer.id, Page(SHOWN, None)))[:SHOWN]
    rows = await sessions.list_sessions(session, viewer.id, after_id=None, limit=SHOWN)
    user = viewer.user
    catalogue = catalogue_of(request)
    context = {
        "user": user,
        "tokens": tokens,
        "sessions": [SessionOut.of(r, viewer.session_id) for r in rows],
        "notice": catalogue.gettext(NOTICES[notice]) if notice in NOTICES else "",
        "profile": profile or Form({"timezone": user.timezone, "locale": user.locale or ""}),
        "token_form": token_form or Form({"scope": "write"}),
        "new_token": new_token,
        "time_zone_options": [(z, z) for z in time_zones()],
        "language_options": [("", catalogue.gettext(N_("The browser's language"))), *i18n.NAMES.items()],
        "scope_options": [(scope, catalogue.gettext(LABELS.token_scope[scope])) for scope in ("write", "read")],
        "read_only": user.role == Role.READ_ONLY,
    }
    return render(request, "account.html", context, status=status)


def _back(notice: str, anchor: str = "") -> RedirectResponse:
    return RedirectResponse(f"/account?notice={notice}{anchor}", status_code=303)


@router.get("/account")
async def account_page(
    request: Request, session: Session, viewer: CurrentViewer, notice: str | None = None
) -> Response:
    return await _page(request, session, viewer, notice=notice)


@router.post("/account/profile")
async def save_profile(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        changes = {"timezone": form["timezone"], "locale": form["locale"] or None}
        async with session.begin_nested():  # a refused form leaves nothing behind in the page's transaction
            await update_own_profile(session, viewer.user, changes, actor=viewer.actor(request))
    except BadInput as exc:
        form.fail(catalogue_of(request), exc)
        return await _page(request, session, viewer, status=422, profile=form)
    return _back("profile_saved")


@router.post("/account/tokens")
async def new_token(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    try:
        expires_at = _end_of_day(form, viewer)
        body = form.parse(TokenCreate, name=form["name"], scope=form["scope"] or "write", expires_at=expires_at)
        async with session.begin_nested():
            token, _ = await create_token(
                session,
                user_id=viewer.id,
                name=body.name,
                scope=body.scope,
                expires_at=body.expires_at,
                actor=viewer.actor(request),
            )
    except BadInput as exc:
        form.fail(catalogue_of(request), exc, rename={"expires_at": "expires_on"})
        return await _page(request, session, viewer, status=422, token_form=form)
    return await _page(request, session, viewer, new_token=token)


def _end_of_day(form: Form, viewer: Viewer) -> dt.datetime | None:
    """ "Expires on" a day: the token works through that day, in the viewer's time zone."""
    if not form["expires_on"]:
        return None
    try:
        day = dt.date.fromisoformat(form["expires_on"])
    except ValueError:
        raise form.invalid("expires_on", N_("Enter a valid date.")) from None
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone_of(viewer.timezone))
    if end <= utc_now():
        raise form.invalid("expires_on", N_("Choose a day that has not passed."))
    return end.astimezone(dt.UTC)


@router.post("/account/tokens/{token_id}/revoke")
async def revoke(token_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    await revoke_token(session, user_id=viewer.id, token_id=token_id, actor=viewer.actor(request))
    return _back("token_revoked", "#tokens")


@router.post("/account/sessions/{session_id}/end")
async def end_session(session_id: IdPath, request: Request, session: Session, viewer: CurrentViewer) -> Response:
    await sessions.end_own_session(session, user_id=viewer.id, session_id=session_id)
    return _back("session_ended", "#sessions")


@router.post("/account/sessions/end-others")
async def end_other_sessions(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    await sessions.revoke_sessions(session, viewer.id, keep=viewer.session_id)
    return _back("sessions_ended", "#sessions")
