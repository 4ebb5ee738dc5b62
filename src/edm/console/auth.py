"""Who is looking at a console page, and what they may do (docs/console.md#what-the-frame-does-for-you).

Every console page takes the `Viewer` dependency. It reads the `edm_session` cookie (the console session of
`edm.users.sessions`, the same one `POST /api/v1/auth/login` makes) and:

- without a live session, redirects to `/login?next=<this path>`;
- on POST, PUT, PATCH and DELETE, requires the session's CSRF secret, as form field `csrf_token` or header
  `X-CSRF-Token` (compared in constant time): otherwise 403;
- refuses every such request of a `read_only` user (403), except the few that only touch the viewer's own
  session, preferences and view (`SELF_SERVICE`: log out, change the own password, switch the language, mark one's
  own notification read, mark one's own conversation unread);
- while the user must change its password, redirects every page but `/password` (and logout) to `/password`.

A `Viewer` is the API's `Caller` (so `viewer.owner_filter(...)`, `viewer.actor(request)` and `viewer.can_write`
work as in an API handler) plus the CSRF token and a copy of what the page frame shows (name, credit, language,
time zone), taken when the session was checked: an error page rendered after the unit of work rolled back must
not read the database again.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import Response

from edm.api.deps import UNSAFE_METHODS, Caller, Session
from edm.conversations import service as conversations
from edm.errors import Forbidden, NotFound, Unauthenticated
from edm.models.users import Role, TokenScope
from edm.settings import Settings
from edm.system.service import unread_count
from edm.users.sessions import COOKIE, CSRF_HEADER, LIFETIME, authenticate_session

CSRF_FIELD = "csrf_token"
# What a read-only user may still post: its own session, password and language, and marking its own notifications
# read (that changes only its own view, not the account's data: `POST /api/v1/me/notifications/{id}/read` takes
# every role and read-scope tokens too).
SELF_SERVICE = frozenset({"/logout", "/password", "/language"})
# Marking one's own conversation unread is reading, which read-only users may do (opening it marks it read).
SELF_SERVICE_PATTERNS = (re.compile(r"/notifications/[0-9]+/read"), re.compile(r"/conversations/[0-9]+/unread"))
# Where a user who must change its password may go.
PASSWORD_PATHS = frozenset({"/password", "/logout"})
# The login form's own CSRF token (before there is a session): a random value in this cookie and in the form.
LOGIN_CSRF_COOKIE = "edm_login_csrf"


class Redirect(Exception):
    """Answer with a 303 to `location` (turned into a response by the console's routes)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class CsrfFailed(Forbidden):
    code = "csrf_failed"


class ReadOnlyAccount(Forbidden):
    code = "read_only"


@dataclass(frozen=True)
class Viewer(Caller):
    csrf_token: str = ""
    username: str = ""
    credit: int = 0
    locale: str | None = None
    timezone: str = "UTC"
    unread: int = 0  # unread notifications, for the top bar (C5)
    unread_conversations: int = 0  # conversations with unread replies, for the menu's badge
    # Whose data the page shows when it is not the viewer's: an admin's read-only look at another user's campaign
    # (`tasks.readable_task`); the frame names the owner.
    owner_name: str = ""


def safe_next(value: str | None, default: str = "/") -> str:
    """`value` when it is a path on this site (`/account?x=1`), else `default`: never another host, whatever the
    spelling (`//evil.example`, `/\\evil.example`, `https://…`, control characters)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def login_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login" if here == "/" else f"/login?next={quote(here, safe='/')}"


async def _viewer(request: Request, session: Session) -> Viewer:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        raise Redirect(login_url(request) if request.method == "GET" else "/login")
    try:
        user, row = await authenticate_session(session, cookie)
    except Unauthenticated:
        raise Redirect(login_url(request) if request.method == "GET" else "/login") from None
    request.state.user_id = user.id
    viewer = Viewer(
        user,
        TokenScope.READ if user.role == Role.READ_ONLY else TokenScope.WRITE,
        kind="session",
        session_id=row.id,
        csrf_token=row.csrf_secret,
        username=user.username,
        credit=user.credit_balance,
        locale=user.locale,
        timezone=user.timezone,
        unread=await unread_count(session, user.id),
        unread_conversations=(await conversations.unread_totals(session, user_id=user.id))[0],
    )
    request.state.viewer = viewer
    path = request.url.path
    if request.method in UNSAFE_METHODS:
        await check_csrf(request, row.csrf_secret)
        if not viewer.can_write and not _self_service(path):
            raise ReadOnlyAccount("this account is read-only")
    if user.must_change_password and path not in PASSWORD_PATHS:
        raise Redirect("/password")
    return viewer


def _self_service(path: str) -> bool:
    return path in SELF_SERVICE or any(pattern.fullmatch(path) for pattern in SELF_SERVICE_PATTERNS)


async def check_csrf(request: Request, secret: str) -> None:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else ""
    if not hmac.compare_digest(sent.encode(), secret.encode()):
        raise CsrfFailed(f"missing or wrong {CSRF_FIELD}")


CurrentViewer = Annotated[Viewer, Depends(_viewer)]


async def _admin(viewer: CurrentViewer) -> Viewer:
    """The viewer of an admin page: anyone else gets the same 404 as for a page that does not exist (an admin page's
    existence is not shown to users), for GET and POST alike."""
    if not viewer.is_admin:
        raise NotFound("not found")
    return viewer


AdminViewer = Annotated[Viewer, Depends(_admin)]


# ---- cookies -------------------------------------------------------------------------------------------------


def secure_cookies(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    return settings.public_url.lower().startswith("https://")


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    """The cookie as `POST /api/v1/auth/login` sets it: HttpOnly, SameSite=Lax, Secure on https."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(LIFETIME.total_seconds()),
        path="/",
        secure=secure_cookies(request),
        httponly=True,
        samesite="lax",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", secure=secure_cookies(request), httponly=True, samesite="lax")


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def set_login_token(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, path="/login", secure=secure_cookies(request), httponly=True, samesite="strict"
    )


def login_token_matches(request: Request, sent: str) -> bool:
    """The login form's double-submit check: the form's token equals the one in its cookie."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())
