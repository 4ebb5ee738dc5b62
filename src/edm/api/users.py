"""Account routes: /me, personal tokens, admin users and credit (docs/auth.md, docs/admin.md#credit)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from edm.api.answers import error_body
from edm.api.deps import Admin, AdminWriter, Caller, CurrentCaller, IdPath, Paging, Session
from edm.db.session import end_transaction
from edm.errors import Forbidden, Unauthenticated
from edm.models.users import Role, TokenScope
from edm.paging import PageOut, page_of
from edm.users import sessions
from edm.users.schemas import (
    LoginBody,
    LoginOut,
    MeOut,
    PasswordChange,
    PasswordChangedOut,
    PasswordReset,
    PasswordResetOut,
    ProfilePatch,
    SessionOut,
    TokenCreate,
    TokenCreatedOut,
    TokenOut,
    UserCreate,
    UserOut,
    UserPatch,
)
from edm.users.service import (
    create_token,
    create_user,
    delete_user,
    get_user,
    list_tokens,
    reset_password,
    update_own_profile,
    update_user,
)
from edm.users.service import list_users as list_accounts
from edm.users.service import revoke_token as revoke_own_token

router = APIRouter(prefix="/api/v1", tags=["users"])


def _self_service(caller: Caller, what: str = "the password or sessions") -> None:
    """Password, session and token changes: any role with its console session, or a write-scope token. A
    read-scope token is handed to scripts that should only look: it must not mint itself a write token or
    revoke its owner's other tokens."""
    if caller.kind != "session" and caller.scope != TokenScope.WRITE:
        raise Forbidden(f"a read-scope token cannot change {what}")


def _secure_cookie(request: Request) -> bool:
    return str(request.app.state.settings.public_url).lower().startswith("https://")


@router.post("/auth/login", response_model=LoginOut)
async def auth_login(
    body: LoginBody, request: Request, response: Response, session: Session
) -> LoginOut | JSONResponse:
    """Console login with username or email and password. Sets the `edm_session` cookie and returns the CSRF
    token that writes made with the cookie must send in `X-CSRF-Token`. Every failure answers the same 401;
    too many failures answer 429 with `Retry-After`."""
    ip = request.client.host if request.client else None
    try:
        result = await sessions.login(
            session, login=body.username, password=body.password, ip=ip, user_agent=request.headers.get("user-agent")
        )
    except sessions.RateLimited as exc:
        await end_transaction(session)
        return JSONResponse(
            error_body(request, exc.code, exc.message, retry_after=exc.retry_after),
            status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(result, sessions.LoginFailed):
        await end_transaction(session)  # keep the attempt and the audit entry: the 401 below rolls back the rest
        raise Unauthenticated(sessions.LOGIN_FAILED)
    response.set_cookie(
        sessions.COOKIE,
        result.cookie,
        max_age=int(sessions.LIFETIME.total_seconds()),
        path="/",
        secure=_secure_cookie(request),
        httponly=True,
        samesite="lax",
    )
    return LoginOut(
        user=UserOut.model_validate(result.user),
        csrf_token=result.row.csrf_secret,
        must_change_password=result.user.must_change_password,
    )


@router.post("/auth/logout", status_code=204)
async def auth_logout(request: Request, session: Session, caller: CurrentCaller) -> Response:
    """End the console session (its row is deleted) and clear the cookie. With a bearer token: nothing to end."""
    if caller.session_id is not None:
        await sessions.logout(session, caller.session_id)
    response = Response(status_code=204)
    response.delete_cookie(sessions.COOKIE, path="/", secure=_secure_cookie(request), httponly=True, samesite="lax")
    return response


@router.put("/me/password")
async def change_password(
    body: PasswordChange, request: Request, session: Session, caller: CurrentCaller
) -> PasswordChangedOut:
    """Change the own password with the current one; the caller's other sessions are revoked."""
    _self_service(caller)
    revoked = await sessions.change_own_password(
        session,
        caller.user,
        current=body.current_password,
        new=body.new_password,
        keep_session=caller.session_id,
        actor=caller.actor(request),
    )
    return PasswordChangedOut(changed=True, sessions_revoked=revoked)


@router.get("/me/sessions")
async def my_sessions(session: Session, caller: CurrentCaller, page: Paging) -> PageOut[SessionOut]:
    """The caller's live console sessions, newest first; `current` marks the one making this request."""
    rows = await sessions.list_sessions(session, caller.id, after_id=page.after_id, limit=page.limit + 1)
    return PageOut[SessionOut].model_validate(page_of([SessionOut.of(r, caller.session_id) for r in rows], page))


@router.delete("/me/sessions/{session_id}", status_code=204)
async def revoke_my_session(session_id: IdPath, request: Request, session: Session, caller: CurrentCaller) -> Response:
    _self_service(caller)
    await sessions.end_own_session(session, user_id=caller.id, session_id=session_id)
    response = Response(status_code=204)
    if session_id == caller.session_id:
        response.delete_cookie(sessions.COOKIE, path="/", secure=_secure_cookie(request), httponly=True, samesite="lax")
    return response


@router.get("/me")
async def me(caller: CurrentCaller) -> MeOut:
    return MeOut(**UserOut.model_validate(caller.user).model_dump(), token_scope=caller.scope)


@router.patch("/me")
async def update_me(body: ProfilePatch, request: Request, session: Session, caller: CurrentCaller) -> MeOut:
    """Change the own time zone and console language (`null`: follow the browser). Any role, with its console
    session or a write-scope token."""
    _self_service(caller, "the profile")
    await update_own_profile(session, caller.user, body.model_dump(exclude_unset=True), actor=caller.actor(request))
    return MeOut(**UserOut.model_validate(caller.user).model_dump(), token_scope=caller.scope)


@router.get("/me/tokens")
async def my_tokens(session: Session, caller: CurrentCaller, page: Paging) -> PageOut[TokenOut]:
    """The caller's tokens not revoked, oldest first: name, scope, prefix, expiry and last use (never the token)."""
    rows = await list_tokens(session, caller.id, page)
    return PageOut[TokenOut].model_validate(page_of(rows, page), from_attributes=True)


@router.post("/me/tokens", status_code=201)
async def new_token(body: TokenCreate, request: Request, session: Session, caller: CurrentCaller) -> TokenCreatedOut:
    """The token is returned once; only its hash is stored. Needs the console session or a write-scope token
    (403 with a read-scope token); read-only users get read tokens only."""
    _self_service(caller, "API tokens")
    scope = TokenScope.READ if caller.user.role == Role.READ_ONLY else body.scope
    token, row = await create_token(
        session,
        user_id=caller.id,
        name=body.name,
        scope=scope,
        expires_at=body.expires_at,
        actor=caller.actor(request),
    )
    return TokenCreatedOut(id=row.id, name=row.name, scope=row.scope, token=token)


@router.delete("/me/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: IdPath, request: Request, session: Session, caller: CurrentCaller) -> Response:
    """Revoke one of the caller's tokens; it fails from the next request. Needs the console session or a
    write-scope token (403 with a read-scope token)."""
    _self_service(caller, "API tokens")
    await revoke_own_token(session, user_id=caller.id, token_id=token_id, actor=caller.actor(request))
    return Response(status_code=204)


@router.get("/admin/users")
async def list_users(session: Session, caller: Admin, page: Paging) -> PageOut[UserOut]:
    """Every account, by id."""
    rows = await list_accounts(session, page)
    return PageOut[UserOut].model_validate(page_of(rows, page), from_attributes=True)


@router.post("/admin/users", status_code=201)
async def admin_create_user(body: UserCreate, session: Session, caller: AdminWriter, request: Request) -> UserOut:
    user = await create_user(
        session,
        username=body.username,
        email=body.email,
        password=body.password,
        role=body.role,
        credit=body.credit,
        credit_reason=body.credit_reason,
        timezone=body.timezone,
        actor_user_id=caller.id,
        actor=caller.actor(request),
    )
    return UserOut.model_validate(user)


@router.get("/admin/users/{user_id}")
async def admin_get_user(user_id: IdPath, session: Session, caller: Admin) -> UserOut:
    return UserOut.model_validate(await get_user(session, user_id))


@router.patch("/admin/users/{user_id}")
async def admin_patch_user(
    user_id: IdPath, body: UserPatch, session: Session, caller: AdminWriter, request: Request
) -> UserOut:
    """Edit email, role, active flag, time zone, low-credit threshold, console language. A role change revokes the
    user's sessions; deactivation revokes its sessions and tokens. The last active admin stays (409 last_admin)."""
    user = await get_user(session, user_id)
    await update_user(session, user, body.model_dump(exclude_unset=True), actor=caller.actor(request))
    return UserOut.model_validate(user)


@router.post("/admin/users/{user_id}/password")
async def admin_reset_password(
    user_id: IdPath, body: PasswordReset, session: Session, caller: AdminWriter, request: Request
) -> PasswordResetOut:
    """Set a user's password (optionally "must change at next login"); revokes all its sessions."""
    user = await get_user(session, user_id)
    keep = caller.session_id if user.id == caller.id else None
    revoked = await reset_password(
        session,
        user,
        body.password,
        must_change=body.must_change_password,
        actor=caller.actor(request),
        keep_session=keep,
    )
    return PasswordResetOut(**UserOut.model_validate(user).model_dump(), sessions_revoked=revoked)


@router.delete("/admin/users/{user_id}", status_code=204)
async def admin_delete_user(user_id: IdPath, session: Session, caller: AdminWriter, request: Request) -> Response:
    """Delete a user and all its data. 409 in_use while it owns a queued/sending/paused task; 409 last_admin
    for the last active admin."""
    user = await get_user(session, user_id)
    await delete_user(session, user, actor=caller.actor(request))
    return Response(status_code=204)


# Credit routes (/me/credit, /admin/users/{id}/credit, /admin/credit/*) live in edm.api.credit.
