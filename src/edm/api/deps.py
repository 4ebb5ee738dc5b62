"""Request dependencies: the unit of work, the caller, role and scope checks, pagination."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.session import unit_of_work
from edm.errors import Forbidden, Unauthenticated
from edm.models.users import Role, TokenScope, User
from edm.paging import MAX_ID, Page, decode_cursor
from edm.system.service import Actor
from edm.users.service import authenticate_token
from edm.users.sessions import COOKIE, CSRF_HEADER, authenticate_session

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# An optional id filter in a query string (a larger number would reach the database and fail there).
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    """One unit of work per request, committed before the response is sent (scope="function")."""
    async with unit_of_work(request.app.state.sessionmaker) as session:
        yield session


Session = Annotated[AsyncSession, Depends(_session, scope="function")]


class CsrfFailed(Forbidden):
    code = "csrf_failed"


class PasswordChangeRequired(Forbidden):
    code = "password_change_required"


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a console session flagged "must change password" may still do (docs/auth.md#must-change-password): see itself,
# change it, leave.
_MUST_CHANGE_ALLOWED = frozenset(
    {("GET", "/api/v1/me"), ("PUT", "/api/v1/me/password"), ("POST", "/api/v1/auth/logout")}
)


@dataclass(frozen=True)
class Caller:
    user: User
    scope: str
    kind: str = "token"  # token | session: how the caller authenticated
    session_id: int | None = None  # the console session, when kind == "session"

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def is_admin(self) -> bool:
        return self.user.role == Role.ADMIN

    @property
    def can_write(self) -> bool:
        return self.scope == TokenScope.WRITE and self.user.role != Role.READ_ONLY

    def actor(self, request: Request) -> Actor:
        """Who the audit log names for this caller's writes: the user, how they authenticated, from where."""
        return Actor(self.id, self.kind, request.client.host if request.client else None)

    def owner_filter(self, requested_user_id: int | None) -> int:
        """Own data by default; admins may look at another user's data with `user_id`."""
        if requested_user_id is not None and requested_user_id != self.id:
            if not self.is_admin:
                raise Forbidden("only admins may read other users' data")
            return requested_user_id
        return self.id


async def _caller(request: Request, session: Session) -> Caller:
    """A bearer token (no CSRF needed) or, without an Authorization header, the console session cookie; with
    the cookie every POST/PUT/PATCH/DELETE must echo the session's CSRF secret in `X-CSRF-Token`
    (docs/auth.md#logging-in)."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>'")
        user, scope = await authenticate_token(session, token.strip())
        request.state.user_id = user.id
        return Caller(user, scope)
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>' or log in")
    user, row = await authenticate_session(session, cookie)
    if request.method in UNSAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), row.csrf_secret.encode()):
            raise CsrfFailed(f"missing or wrong {CSRF_HEADER} header")
    if user.must_change_password and (request.method, request.url.path) not in _MUST_CHANGE_ALLOWED:
        raise PasswordChangeRequired("change your password first: PUT /api/v1/me/password")
    request.state.user_id = user.id
    scope = TokenScope.READ if user.role == Role.READ_ONLY else TokenScope.WRITE
    return Caller(user, scope, kind="session", session_id=row.id)


CurrentCaller = Annotated[Caller, Depends(_caller)]


async def _writer(caller: CurrentCaller) -> Caller:
    if not caller.can_write:
        raise Forbidden("this token or account is read-only")
    return caller


async def _admin(caller: CurrentCaller) -> Caller:
    if not caller.is_admin:
        raise Forbidden("admin role required")
    return caller


async def _admin_writer(caller: CurrentCaller) -> Caller:
    if not caller.is_admin:
        raise Forbidden("admin role required")
    if not caller.can_write:
        raise Forbidden("this token is read-only")
    return caller


Writer = Annotated[Caller, Depends(_writer)]
Admin = Annotated[Caller, Depends(_admin)]
AdminWriter = Annotated[Caller, Depends(_admin_writer)]


def _page(limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: str | None = None) -> Page:
    return Page(limit, decode_cursor(cursor))


Paging = Annotated[Page, Depends(_page)]
