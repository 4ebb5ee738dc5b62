"""Logging in and out, changing the own password, switching the language (docs/console.md#logging-in).

The login form sets the same console session as `POST /api/v1/auth/login` (`edm.users.sessions.login`: throttle,
audit, the cookie). Before a session exists the form is protected by a double-submit token: a random value in a
cookie scoped to `/login` and in a hidden field, which must match. A failed login is recorded and committed like
any other request: the page answers 401 normally rather than by raising.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

from babel.dates import format_timedelta
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edm.api.deps import Session
from edm.console.auth import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    CurrentViewer,
    clear_session_cookie,
    login_token_matches,
    new_login_token,
    safe_next,
    set_login_token,
    set_session_cookie,
)
from edm.console.errors import MESSAGES, message_for
from edm.console.forms import Form, read_form
from edm.console.i18n import N_
from edm.console.rendering import catalogue_of, render
from edm.console.routing import new_router
from edm.errors import BadInput, Unauthenticated
from edm.users import sessions
from edm.users.schemas import PasswordChange
from edm.users.service import first_admin, update_own_profile

router = new_router()


def _with_next(path: str, next_path: str) -> str:
    return path if next_path == "/" else f"{path}?next={quote(next_path, safe='/')}"


async def _login_page(request: Request, session: Session, form: Form, *, status: int = 200) -> HTMLResponse:
    token = new_login_token()
    no_admin = await first_admin(session) is None
    response = render(request, "login.html", {"form": form, "login_token": token, "no_admin": no_admin}, status=status)
    set_login_token(request, response, token)
    return response


@router.get("/login")
async def login_page(request: Request, session: Session, next: str | None = None) -> Response:
    target = safe_next(next)
    cookie = request.cookies.get(sessions.COOKIE)
    if cookie:
        try:
            await sessions.authenticate_session(session, cookie)
            return RedirectResponse(target, status_code=303)
        except Unauthenticated:
            pass
    return await _login_page(request, session, Form({"next": target}))


@router.post("/login")
async def login_submit(request: Request, session: Session) -> Response:
    form = await read_form(request)
    sent = (await request.form()).get(CSRF_FIELD)
    target = safe_next(form["next"])
    catalogue = catalogue_of(request)
    shown = Form({"username": form["username"], "next": target})  # never send a password back
    if not login_token_matches(request, sent if isinstance(sent, str) else ""):
        shown.error = catalogue.gettext(MESSAGES["csrf_failed"])
        return await _login_page(request, session, shown, status=403)
    for name in ("username", "password"):
        if not form[name]:
            shown.errors[name] = catalogue.gettext(N_("This field is required."))
    if shown.errors:
        return await _login_page(request, session, shown, status=422)
    ip = request.client.host if request.client else None
    try:
        result = await sessions.login(
            session,
            login=form["username"][:320],
            password=form["password"][:1024],
            ip=ip,
            user_agent=request.headers.get("user-agent"),
        )
    except sessions.RateLimited as exc:
        wait = format_timedelta(dt.timedelta(seconds=exc.retry_after), threshold=1, locale=catalogue.locale)
        shown.error = message_for(catalogue, exc, wait=wait)
        response = await _login_page(request, session, shown, status=429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(result, sessions.LoginFailed):  # the attempt and its audit entry are committed with the page
        shown.error = catalogue.gettext(MESSAGES["unauthenticated"])
        return await _login_page(request, session, shown, status=401)
    location = _with_next("/password", target) if result.user.must_change_password else target
    redirect = RedirectResponse(location, status_code=303)
    set_session_cookie(request, redirect, result.cookie)
    redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return redirect


@router.post("/logout")
async def logout(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    if viewer.session_id is not None:
        await sessions.logout(session, viewer.session_id)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(request, response)
    return response


@router.get("/password")
async def password_page(request: Request, viewer: CurrentViewer, next: str | None = None) -> Response:
    return render(request, "password.html", {"form": Form({"next": safe_next(next)}), "forced": _forced(viewer)})


@router.post("/password")
async def password_submit(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    form = await read_form(request)
    forced = _forced(viewer)
    try:
        if form["new_password"] != form["new_password_again"]:
            raise form.invalid("new_password_again", N_("The two new passwords differ."))
        body = form.parse(PasswordChange, current_password=form["current_password"], new_password=form["new_password"])
        async with session.begin_nested():  # a refused change leaves nothing behind
            await sessions.change_own_password(
                session,
                viewer.user,
                current=body.current_password,
                new=body.new_password,
                keep_session=viewer.session_id,
                actor=viewer.actor(request),
            )
    except BadInput as exc:
        shown = Form({"next": safe_next(form["next"])})
        shown.fail(catalogue_of(request), exc, rename={"password": "new_password"})
        return render(request, "password.html", {"form": shown, "forced": forced}, status=422)
    location = safe_next(form["next"]) if forced else "/account?notice=password_changed"
    return RedirectResponse(location, status_code=303)


def _forced(viewer: CurrentViewer) -> bool:
    return bool(viewer.user.must_change_password)


@router.post("/language")
async def switch_language(request: Request, session: Session, viewer: CurrentViewer) -> Response:
    """The top bar's language switch: the viewer's own setting, then back to the page it was on."""
    form = await read_form(request)
    await update_own_profile(session, viewer.user, {"locale": form["locale"] or None}, actor=viewer.actor(request))
    return RedirectResponse(safe_next(form["next"]), status_code=303)
