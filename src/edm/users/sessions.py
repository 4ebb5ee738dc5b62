"""Console login, sessions and login throttling (docs/auth.md#logging-in).

The session id is 256 random bits sent in the `edm_session` cookie; only its SHA-256 is stored. Each session
has a CSRF secret that state-changing requests made with the cookie must echo in `X-CSRF-Token`.

Throttling reads the `login_attempts` table, so it holds across API processes: after `USERNAME_LIMIT` failed
attempts for one account within `WINDOW`, or `IP_LIMIT` from one IP, further attempts are refused (429 with
`Retry-After`) until the window has passed. An account's failures are those recorded under the user id its
identifier resolved to *or* under the identifier typed, so guesses spread over the username and the email (in
any case) add up; an identifier that names no account is throttled by itself. Refused attempts are not
recorded, so hammering does not extend the block. Rows older than `KEEP_ATTEMPTS` and expired sessions are
pruned by each login.

Services take the caller's session and flush; the entry point commits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.addresses import normalize_email
from edm.clock import utc_now
from edm.errors import BadInput, EdmError, NotFound, Unauthenticated
from edm.models.users import ConsoleSession, LoginAttempt, User
from edm.security.passwords import check_password_rules, hash_password, verify_password, waste_time
from edm.system.service import Actor, audit

COOKIE = "edm_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_TIMEOUT = dt.timedelta(hours=12)
LIFETIME = dt.timedelta(days=14)
TOUCH_EVERY = dt.timedelta(minutes=1)
WINDOW = dt.timedelta(minutes=15)
USERNAME_LIMIT = 10
IP_LIMIT = 50
KEEP_ATTEMPTS = dt.timedelta(days=1)
LOGIN_FAILED = "invalid username or password"  # the one answer for every failure (docs/auth.md#logging-in)


class RateLimited(EdmError):
    """429 `rate_limited`; the handler sends `retry_after` seconds in the `Retry-After` header."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class SessionExpired(Unauthenticated):
    pass


@dataclass(frozen=True)
class LoginFailed:
    reason: str  # unknown_user | wrong_password | inactive | no_password


@dataclass(frozen=True)
class LoggedIn:
    user: User
    cookie: str  # the cookie value: shown to the browser once, stored only hashed
    row: ConsoleSession


def hash_session_id(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _login_key(login: str) -> str:
    return login.strip().lower()[:320]


async def _throttled_until(session: AsyncSession, condition: Any, limit: int, now: dt.datetime) -> dt.datetime | None:
    """When the block on `condition` lifts, or None when fewer than `limit` failures lie in the window: the
    limit-th most recent failure leaving the window brings the count below the limit."""
    query = (
        select(LoginAttempt.at)
        .where(condition, LoginAttempt.succeeded.is_(False), LoginAttempt.at > now - WINDOW)
        .order_by(LoginAttempt.at.desc())
        .offset(limit - 1)
        .limit(1)
    )
    oldest = await session.scalar(query)
    return None if oldest is None else oldest + WINDOW


async def check_throttle(session: AsyncSession, *, login: str, ip: str | None, user_id: int | None = None) -> None:
    """Raise RateLimited while the account (`user_id`, the account `login` resolved to, when it names one),
    the identifier `login` itself, or `ip` has too many recent failures. Failures before the account's last
    successful login do not count against it."""
    now = utc_now()
    key = _login_key(login)
    by_account = LoginAttempt.username == key
    if user_id is not None:
        by_account = or_(by_account, LoginAttempt.user_id == user_id)
    last_success = await session.scalar(
        select(func.max(LoginAttempt.at)).where(
            by_account, LoginAttempt.succeeded.is_(True), LoginAttempt.at > now - WINDOW
        )
    )
    if last_success is not None:
        by_account = by_account & (LoginAttempt.at > last_success)
    until = [await _throttled_until(session, by_account, USERNAME_LIMIT, now)]
    if ip:
        until.append(await _throttled_until(session, LoginAttempt.ip == ip, IP_LIMIT, now))
    latest = max((u for u in until if u is not None), default=None)
    if latest is not None and latest > now:
        seconds = max(1, math.ceil((latest - now).total_seconds()))
        raise RateLimited(f"too many failed logins; retry in {seconds} s", retry_after=seconds)


async def prune(session: AsyncSession) -> None:
    """Delete login attempts older than a day and sessions past their idle or absolute expiry."""
    now = utc_now()
    await session.execute(delete(LoginAttempt).where(LoginAttempt.at < now - KEEP_ATTEMPTS))
    await session.execute(
        delete(ConsoleSession).where(
            or_(ConsoleSession.expires_at <= now, ConsoleSession.last_seen_at <= now - IDLE_TIMEOUT)
        )
    )


async def _find_login_user(session: AsyncSession, key: str) -> User | None:
    conditions = [func.lower(User.username) == key]
    if "@" in key:
        try:
            conditions.append(User.email == normalize_email(key, field="username").normalized)
        except BadInput:
            pass
    return (await session.scalars(select(User).where(or_(*conditions)).order_by(User.id).limit(1))).first()


async def login(
    session: AsyncSession, *, login: str, password: str, ip: str | None, user_agent: str | None
) -> LoggedIn | LoginFailed:
    """Check the throttle, then the credentials. Every attempt is recorded; a failure is audited with its real
    reason (never the password) and returned, so the caller can commit the record before answering 401."""
    await prune(session)
    key = _login_key(login)
    user = await _find_login_user(session, key)
    await check_throttle(session, login=login, ip=ip, user_id=user.id if user else None)
    now = utc_now()
    reason = None
    if user is None:
        waste_time(password)  # same work as a real check: timing does not tell whether the user exists
        reason = "unknown_user"
    elif not verify_password(user.password_hash, password):
        reason = "wrong_password" if user.password_hash else "no_password"
    elif not user.is_active:
        reason = "inactive"
    session.add(LoginAttempt(username=key, user_id=user.id if user else None, ip=ip, succeeded=reason is None, at=now))
    actor = Actor(user.id if user else None, "session", ip)
    if reason is not None or user is None:
        await audit(
            session,
            actor,
            "auth.login_failed",
            target_type="user",
            target_id=user.id if user else None,
            details={"username": key, "reason": reason},
        )
        return LoginFailed(reason or "unknown_user")
    cookie = secrets.token_urlsafe(32)  # 256 random bits
    row = ConsoleSession(
        id_hash=hash_session_id(cookie),
        user_id=user.id,
        csrf_secret=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + LIFETIME,
        ip=ip,
        user_agent=(user_agent or "")[:300] or None,
    )
    session.add(row)
    user.last_login_at = now
    await session.flush()
    await audit(session, actor, "auth.login", target_type="user", target_id=user.id, details={"session_id": row.id})
    return LoggedIn(user, cookie, row)


def expiry_of(row: ConsoleSession) -> dt.datetime:
    """When the session ends unless it is used again: the idle limit or the absolute lifetime."""
    return min(row.expires_at, row.last_seen_at + IDLE_TIMEOUT)


async def authenticate_session(session: AsyncSession, cookie: str) -> tuple[User, ConsoleSession]:
    """The user and session row of a cookie; 401 for unknown, expired or idle sessions and inactive users.
    `last_seen_at` moves at most once a minute."""
    now = utc_now()
    row = await session.scalar(select(ConsoleSession).where(ConsoleSession.id_hash == hash_session_id(cookie)))
    if row is None or expiry_of(row) <= now:
        raise SessionExpired("session expired or unknown; log in again")
    user = await session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise SessionExpired("session expired or unknown; log in again")
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
    return user, row


async def revoke_sessions(session: AsyncSession, user_id: int, *, keep: int | None = None) -> int:
    """Delete the user's sessions (except `keep`); returns how many."""
    query = delete(ConsoleSession).where(ConsoleSession.user_id == user_id)
    if keep is not None:
        query = query.where(ConsoleSession.id != keep)
    result = await session.execute(query)
    return int(getattr(result, "rowcount", 0) or 0)


async def end_sessions(session: AsyncSession, user_id: int, *, actor: Actor) -> int:
    """End every console session of the user (an operator's "log them out everywhere"), audited as
    `user.sessions_revoked` with the count; returns how many."""
    revoked = await revoke_sessions(session, user_id)
    await audit(
        session,
        actor,
        "user.sessions_revoked",
        target_type="user",
        target_id=user_id,
        details={"sessions_revoked": revoked},
    )
    return revoked


async def logout(session: AsyncSession, session_id: int) -> None:
    await session.execute(delete(ConsoleSession).where(ConsoleSession.id == session_id))


async def end_own_session(session: AsyncSession, *, user_id: int, session_id: int) -> None:
    """End one of the user's own sessions; another user's session is 404, like a missing one."""
    row = await session.get(ConsoleSession, session_id)
    if row is None or row.user_id != user_id:
        raise NotFound("session not found")
    await logout(session, row.id)


async def list_sessions(
    session: AsyncSession, user_id: int, *, after_id: int | None, limit: int
) -> list[ConsoleSession]:
    """The user's live sessions, newest first (`after_id` is the cursor: ids below it)."""
    now = utc_now()
    query = (
        select(ConsoleSession)
        .where(
            ConsoleSession.user_id == user_id,
            ConsoleSession.expires_at > now,
            ConsoleSession.last_seen_at > now - IDLE_TIMEOUT,
        )
        .order_by(ConsoleSession.id.desc())
        .limit(limit)
    )
    if after_id:
        query = query.where(ConsoleSession.id < after_id)
    return list(await session.scalars(query))


async def change_own_password(
    session: AsyncSession, user: User, *, current: str, new: str, keep_session: int | None, actor: Actor
) -> int:
    """Check the current password, set the new one (the rules of docs/auth.md#your-own-password-and-sessions) and revoke
    the user's other sessions."""
    if not verify_password(user.password_hash, current):
        raise BadInput.field("current_password", "is not correct")
    check_password_rules(new, username=user.username)
    user.password_hash = hash_password(new)
    user.must_change_password = False
    revoked = await revoke_sessions(session, user.id, keep=keep_session)
    await audit(
        session,
        actor,
        "user.password_changed",
        target_type="user",
        target_id=user.id,
        details={"sessions_revoked": revoked},
    )
    return revoked
