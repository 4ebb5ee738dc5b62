"""Account routes: /me, personal tokens, admin users and credit (SPEC §16.3)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from edm.api.answers import error_body
from edm.api.deps import Admin, AdminWriter, Caller, CurrentCaller, IdPath, Paging, Session
from edm.errors import Forbidden, NotFound, Unauthenticated
from edm.models.users import ApiToken, Role, TokenScope, User
from edm.paging import page_of
from edm.system.service import Actor, audit
from edm.users import sessions
from edm.users.service import create_token, create_user, delete_user, reset_password, update_user
from edm.users.service import revoke_token as revoke_own_token

router = APIRouter(prefix="/api/v1", tags=["users"])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCreate(Strict):
    name: str = Field(..., min_length=1, max_length=100)
    scope: Literal["read", "write"] = "write"
    expires_at: AwareDatetime | None = None


class UserCreate(Strict):
    username: str = Field(..., min_length=3, max_length=64)
    email: str = Field(..., max_length=320)
    password: str = Field(..., min_length=10, max_length=128)
    role: Literal["admin", "user", "read_only"] = "user"
    credit: int = Field(0, ge=0)
    credit_reason: str = Field("initial credit", min_length=1, max_length=500)
    timezone: str = "UTC"


class UserPatch(Strict):
    email: str | None = Field(None, max_length=320)
    role: Literal["admin", "user", "read_only"] | None = None
    is_active: bool | None = None
    timezone: str | None = None
    low_credit_threshold: int | None = Field(None, ge=0)


class LoginBody(Strict):
    username: str = Field(..., min_length=1, max_length=320, description="username or email, any case")
    password: str = Field(..., min_length=1, max_length=1024)


class PasswordChange(Strict):
    current_password: str = Field(..., min_length=1, max_length=1024)
    new_password: str = Field(..., min_length=10, max_length=128)


class PasswordReset(Strict):
    password: str = Field(..., min_length=10, max_length=128)
    must_change_password: bool = False


def _actor(caller: Caller, request: Request) -> Actor:
    return Actor(caller.id, caller.kind, request.client.host if request.client else None)


def _self_service(caller: Caller, what: str = "the password or sessions") -> None:
    """Password, session and token changes: any role with its console session, or a write-scope token. A
    read-scope token is handed to scripts that should only look: it must not mint itself a write token or
    revoke its owner's other tokens."""
    if caller.kind != "session" and caller.scope != TokenScope.WRITE:
        raise Forbidden(f"a read-scope token cannot change {what}")


def _secure_cookie(request: Request) -> bool:
    return str(request.app.state.settings.public_url).lower().startswith("https://")


def session_view(row: Any, current: int | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": row.created_at,
        "last_seen_at": row.last_seen_at,
        "expires_at": sessions.expiry_of(row),
        "ip": row.ip,
        "user_agent": row.user_agent,
        "current": row.id == current,
    }


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "is_active": user.is_active,
        "timezone": user.timezone,
        "credit_balance": user.credit_balance,
        "low_credit_threshold": user.low_credit_threshold,
        "must_change_password": user.must_change_password,
        "last_login_at": user.last_login_at,
        "created_at": user.created_at,
    }


@router.post("/auth/login")
async def auth_login(body: LoginBody, request: Request, response: Response, session: Session) -> Any:
    """Console login with username or email and password. Sets the `edm_session` cookie and returns the CSRF
    token that writes made with the cookie must send in `X-CSRF-Token`. Every failure answers the same 401;
    too many failures answer 429 with `Retry-After`."""
    ip = request.client.host if request.client else None
    try:
        result = await sessions.login(
            session, login=body.username, password=body.password, ip=ip, user_agent=request.headers.get("user-agent")
        )
    except sessions.RateLimited as exc:
        await session.commit()
        return JSONResponse(
            error_body(request, exc.code, exc.message, retry_after=exc.retry_after),
            status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(result, sessions.LoginFailed):
        await session.commit()  # keep the attempt and the audit entry: the 401 below rolls back the rest
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
    return {
        "user": user_view(result.user),
        "csrf_token": result.row.csrf_secret,
        "must_change_password": result.user.must_change_password,
    }


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
) -> dict[str, Any]:
    """Change the own password with the current one; the caller's other sessions are revoked."""
    _self_service(caller)
    revoked = await sessions.change_own_password(
        session,
        caller.user,
        current=body.current_password,
        new=body.new_password,
        keep_session=caller.session_id,
        actor=_actor(caller, request),
    )
    return {"changed": True, "sessions_revoked": revoked}


@router.get("/me/sessions")
async def my_sessions(session: Session, caller: CurrentCaller, page: Paging) -> dict[str, Any]:
    """The caller's live console sessions, newest first; `current` marks the one making this request."""
    rows = await sessions.list_sessions(session, caller.id, after_id=page.after_id, limit=page.limit + 1)
    return page_of([session_view(r, caller.session_id) for r in rows], page)


@router.delete("/me/sessions/{session_id}", status_code=204)
async def revoke_my_session(session_id: IdPath, request: Request, session: Session, caller: CurrentCaller) -> Response:
    _self_service(caller)
    row = await session.get(sessions.ConsoleSession, session_id)
    if row is None or row.user_id != caller.id:
        raise NotFound("session not found")
    await sessions.logout(session, row.id)
    response = Response(status_code=204)
    if row.id == caller.session_id:
        response.delete_cookie(sessions.COOKIE, path="/", secure=_secure_cookie(request), httponly=True, samesite="lax")
    return response


@router.get("/me")
async def me(caller: CurrentCaller) -> dict[str, Any]:
    return {**user_view(caller.user), "token_scope": caller.scope}


@router.get("/me/tokens")
async def my_tokens(session: Session, caller: CurrentCaller, page: Paging) -> dict[str, Any]:
    query = (
        select(ApiToken)
        .where(ApiToken.user_id == caller.id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.id)
        .limit(page.limit + 1)
    )
    if page.after_id is not None:
        query = query.where(ApiToken.id > page.after_id)
    return page_of(
        [
            {
                "id": t.id,
                "name": t.name,
                "scope": t.scope,
                "prefix": t.token_prefix,
                "expires_at": t.expires_at,
                "last_used_at": t.last_used_at,
                "created_at": t.created_at,
            }
            for t in await session.scalars(query)
        ],
        page,
    )


@router.post("/me/tokens", status_code=201)
async def new_token(body: TokenCreate, request: Request, session: Session, caller: CurrentCaller) -> dict[str, Any]:
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
        actor=_actor(caller, request),
    )
    return {"id": row.id, "name": row.name, "scope": row.scope, "token": token}


@router.delete("/me/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: IdPath, request: Request, session: Session, caller: CurrentCaller) -> Response:
    """Revoke one of the caller's tokens; it fails from the next request. Needs the console session or a
    write-scope token (403 with a read-scope token)."""
    _self_service(caller, "API tokens")
    await revoke_own_token(session, user_id=caller.id, token_id=token_id, actor=_actor(caller, request))
    return Response(status_code=204)


@router.get("/admin/users")
async def list_users(session: Session, caller: Admin, page: Paging) -> dict[str, Any]:
    query = select(User).order_by(User.id).limit(page.limit + 1)
    if page.after_id:
        query = query.where(User.id > page.after_id)
    return page_of([user_view(u) for u in await session.scalars(query)], page)


@router.post("/admin/users", status_code=201)
async def admin_create_user(
    body: UserCreate, session: Session, caller: AdminWriter, request: Request
) -> dict[str, Any]:
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
    )
    await audit(
        session,
        _actor(caller, request),
        "user.create",
        target_type="user",
        target_id=user.id,
        details={"username": user.username, "role": user.role, "credit": body.credit},
    )
    return user_view(user)


async def _user(session: Session, user_id: IdPath) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("user not found")
    return user


@router.get("/admin/users/{user_id}")
async def admin_get_user(user_id: IdPath, session: Session, caller: Admin) -> dict[str, Any]:
    return user_view(await _user(session, user_id))


@router.patch("/admin/users/{user_id}")
async def admin_patch_user(
    user_id: IdPath, body: UserPatch, session: Session, caller: AdminWriter, request: Request
) -> dict[str, Any]:
    """Edit email, role, active flag, time zone, low-credit threshold. A role change revokes the user's
    sessions; deactivation revokes its sessions and tokens. The last active admin stays (409 last_admin)."""
    user = await _user(session, user_id)
    await update_user(session, user, body.model_dump(exclude_unset=True), actor=_actor(caller, request))
    return user_view(user)


@router.post("/admin/users/{user_id}/password")
async def admin_reset_password(
    user_id: IdPath, body: PasswordReset, session: Session, caller: AdminWriter, request: Request
) -> dict[str, Any]:
    """Set a user's password (optionally "must change at next login"); revokes all its sessions."""
    user = await _user(session, user_id)
    keep = caller.session_id if user.id == caller.id else None
    revoked = await reset_password(
        session,
        user,
        body.password,
        must_change=body.must_change_password,
        actor=_actor(caller, request),
        keep_session=keep,
    )
    return {**user_view(user), "sessions_revoked": revoked}


@router.delete("/admin/users/{user_id}", status_code=204)
async def admin_delete_user(user_id: IdPath, session: Session, caller: AdminWriter, request: Request) -> Response:
    """Delete a user and all its data. 409 in_use while it owns a queued/sending/paused task; 409 last_admin
    for the last active admin."""
    user = await _user(session, user_id)
    await delete_user(session, user, actor=_actor(caller, request))
    return Response(status_code=204)


# Credit routes (/me/credit, /admin/users/{id}/credit, /admin/credit/*) live in edm.api.credit.
