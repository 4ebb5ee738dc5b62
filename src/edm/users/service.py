"""Accounts and personal API tokens (docs/auth.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import string
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.addresses import normalize_email
from edm.clock import utc_now
from edm.db.dialect import escape_like
from edm.errors import BadInput, Conflict, InUse, InvalidToken, LastAdmin, NotFound
from edm.models.contacts import Contact, Import, Tag
from edm.models.content import Media, Sender, Template
from edm.models.email_services import UserServiceMapping
from edm.models.events import Event
from edm.models.suppressions import Suppression
from edm.models.tasks import Task
from edm.models.users import ApiToken, LedgerKind, QuotaLedgerEntry, Role, TokenScope, User
from edm.paging import Page
from edm.security.passwords import check_password_rules, hash_password
from edm.system.service import Actor, audit
from edm.users.credit import apply_credit
from edm.users.sessions import revoke_sessions

USERNAME = re.compile(r"^[a-z0-9._-]{3,64}$")
TOKEN_ALPHABET = string.ascii_letters + string.digits
# The languages of the web console (docs/console.md#languages); `users.locale` holds one of them or null.
LOCALES = ("en", "zh_Hans")


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise BadInput.field("timezone", f"{name!r} is not an IANA time zone name") from None
    return name


def check_locale(name: str | None) -> str | None:
    if name is not None and name not in LOCALES:
        raise BadInput.field("locale", f"must be one of {', '.join(LOCALES)} or null")
    return name


def normalize_username(username: str) -> str:
    value = username.strip().lower()
    if not USERNAME.fullmatch(value):
        raise BadInput.field("username", "must be 3–64 characters of a-z, 0-9, '.', '_' or '-'")
    return value


async def create_user(
    session: AsyncSession,
    *,
    username: str,
    email: str,
    password: str,
    role: str = Role.USER,
    credit: int = 0,
    credit_reason: str = "initial credit",
    timezone: str = "UTC",
    actor_user_id: int | None = None,
    actor: Actor | None = None,
    must_change_password: bool = False,
) -> User:
    """A new account, with its initial credit granted in the ledger. With an `actor` the creation is audited
    (`user.create`: username, role and credit). `must_change_password`: the first login leads to the password
    page (the console's "New user" form)."""
    name = normalize_username(username)
    address = normalize_email(email, field="email").normalized
    if role not in set(Role):
        raise BadInput.field("role", "must be admin, user or read_only")
    check_password_rules(password, username=name)
    timezone = check_timezone(timezone)
    if await session.scalar(select(User.id).where(func.lower(User.username) == name)):
        raise Conflict("username already exists", details=[{"field": "username", "message": "already exists"}])
    if await session.scalar(select(User.id).where(User.email == address)):
        raise Conflict("email already exists", details=[{"field": "email", "message": "already exists"}])
    user = User(
        username=name,
        email=address,
        password_hash=hash_password(password),
        role=role,
        timezone=timezone,
        credit_balance=0,
        created_by=actor_user_id,
        must_change_password=must_change_password,
    )
    session.add(user)
    await session.flush()
    if credit:
        await apply_credit(
            session,
            user_id=user.id,
            kind=LedgerKind.GRANT,
            amount=credit,
            reason=credit_reason,
            actor_user_id=actor_user_id,
        )
    if actor is not None:
        await audit(
            session,
            actor,
            "user.create",
            target_type="user",
            target_id=user.id,
            details={"username": user.username, "role": user.role, "credit": credit},
        )
    return user


async def get_user(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("user not found")
    return user


async def list_users(
    session: AsyncSession,
    page: Page | None = None,
    *,
    role: str | None = None,
    active: bool | None = None,
    q: str | None = None,
) -> list[User]:
    """Every account by id; with a `page`, the next page of it plus one row (`page_of` makes the cursor).
    Optionally only one role, only active (or inactive) accounts, and those whose username or email contains `q`
    (the console's user list)."""
    query = select(User).order_by(User.id)
    if role is not None:
        query = query.where(User.role == role)
    if active is not None:
        query = query.where(User.is_active.is_(active))
    if q:
        pattern = f"%{escape_like(q.strip().lower())}%"
        query = query.where(
            func.lower(User.username).like(pattern, escape="\\") | func.lower(User.email).like(pattern, escape="\\")
        )
    if page is not None:
        query = query.limit(page.limit + 1)
        if page.after_id:
            query = query.where(User.id > page.after_id)
    return list(await session.scalars(query))


async def first_admin(session: AsyncSession) -> User | None:
    """The admin account created first (whose view the CLI shows when no user is named)."""
    return await session.scalar(select(User).where(User.role == Role.ADMIN).order_by(User.id).limit(1))


async def find_user(session: AsyncSession, name_or_id: str) -> User:
    query = select(User)
    if name_or_id.isdigit():
        query = query.where(User.id == int(name_or_id))
    else:
        value = name_or_id.strip().lower()
        query = query.where((func.lower(User.username) == value) | (User.email == value))
    user = await session.scalar(query)
    if user is None:
        raise NotFound(f"user {name_or_id!r} not found")
    return user


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(
    session: AsyncSession,
    *,
    user_id: int,
    name: str,
    scope: str = TokenScope.WRITE,
    expires_at: dt.datetime | None = None,
    actor: Actor | None = None,
) -> tuple[str, ApiToken]:
    """Returns the token text (shown once) and its row; only the SHA-256 hash is stored. With an `actor` the
    creation is audited (`token.create`: name, scope, expiry, never the token or its hash)."""
    if not 1 <= len(name.strip()) <= 100:
        raise BadInput.field("name", "must be 1–100 characters")
    if scope not in set(TokenScope):
        raise BadInput.field("scope", "must be read or write")
    token = "edm_" + "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(40))
    row = ApiToken(
        user_id=user_id,
        name=name.strip(),
        scope=scope,
        token_prefix=token[:8],
        token_hash=_hash_token(token),
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    if actor is not None:
        await audit(
            session,
            actor,
            "token.create",
            target_type="api_token",
            target_id=row.id,
            details={
                "user_id": user_id,
                "name": row.name,
                "scope": row.scope,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return token, row


async def list_tokens(session: AsyncSession, user_id: int, page: Page) -> list[ApiToken]:
    """The user's tokens not revoked, by id: the next page plus one row."""
    query = (
        select(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.id)
        .limit(page.limit + 1)
    )
    if page.after_id is not None:
        query = query.where(ApiToken.id > page.after_id)
    return list(await session.scalars(query))


async def revoke_token(session: AsyncSession, *, user_id: int, token_id: int, actor: Actor) -> None:
    """Revoke one of the user's tokens (404 for a token of anyone else); it fails from the next request.
    Audited as `token.revoke` the first time."""
    row = await session.get(ApiToken, token_id)
    if row is None or row.user_id != user_id:
        raise NotFound("token not found")
    if row.revoked_at is not None:
        return
    row.revoked_at = utc_now()
    await audit(
        session,
        actor,
        "token.revoke",
        target_type="api_token",
        target_id=row.id,
        details={"user_id": user_id, "name": row.name, "scope": row.scope},
    )


async def authenticate_token(session: AsyncSession, token: str) -> tuple[User, str]:
    """The user and effective scope of a bearer token; 401 invalid_token for anything unusable."""
    now = utc_now()
    row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == _hash_token(token)))
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        raise InvalidToken("invalid or expired token")
    user = await session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise InvalidToken("invalid or expired token")
    if row.last_used_at is None or now - row.last_used_at > dt.timedelta(minutes=1):
        row.last_used_at = now
    scope = TokenScope.READ if user.role == Role.READ_ONLY else row.scope
    return user, scope


# --------------------------------------------------------------------------------------------------------
# Admin lifecycle: edit, password reset, delete (docs/auth.md#managing-users-admins)
# --------------------------------------------------------------------------------------------------------

ACTIVE_TASK_STATUSES = ("queued", "sending", "paused")
EDITABLE = ("email", "role", "is_active", "timezone", "low_credit_threshold", "locale")
# What users change of their own account (PATCH /api/v1/me, the console's account page).
OWN_EDITABLE = ("timezone", "locale")


async def _guard_last_admin(session: AsyncSession, user: User) -> None:
    """Refuse (409 last_admin) when `user` is the only active admin. The active admins' rows are locked on
    PostgreSQL, so two admins demoting each other at once cannot both succeed."""
    if user.role != Role.ADMIN or not user.is_active:
        return
    admins = (
        await session.scalars(
            select(User.id).where(User.role == Role.ADMIN, User.is_active.is_(True)).with_for_update()
        )
    ).all()
    if len([i for i in admins if i != user.id]) == 0:
        raise LastAdmin("the last active admin cannot be demoted, deactivated or deleted")


async def update_user(session: AsyncSession, user: User, changes: Mapping[str, Any], *, actor: Actor) -> User:
    """Apply an admin edit. A role change revokes all the user's sessions (tokens follow the new role at once);
    deactivation revokes its sessions and tokens. Audited with the changed fields."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise BadInput.field(sorted(unknown)[0], "unknown field")
    values = dict(changes)
    for key in ("email", "role", "is_active", "timezone"):
        if key in values and values[key] is None:
            raise BadInput.field(key, "must not be null")
    if "email" in values:
        values["email"] = normalize_email(values["email"], field="email").normalized
        if values["email"] != user.email and await session.scalar(
            select(User.id).where(User.email == values["email"], User.id != user.id)
        ):
            raise Conflict("email already exists", details=[{"field": "email", "message": "already exists"}])
    if "role" in values and values["role"] not in set(Role):
        raise BadInput.field("role", "must be admin, user or read_only")
    if "timezone" in values:
        values["timezone"] = check_timezone(values["timezone"])
    if "locale" in values:
        values["locale"] = check_locale(values["locale"])
    if values.get("low_credit_threshold") is not None and values["low_credit_threshold"] < 0:
        raise BadInput.field("low_credit_threshold", "must be ≥ 0")
    new_role = values.get("role", user.role)
    role_changed = new_role != user.role
    deactivating = values.get("is_active") is False and user.is_active
    if (role_changed and new_role != Role.ADMIN) or deactivating:
        await _guard_last_admin(session, user)
    changed = {k: v for k, v in values.items() if getattr(user, k) != v}
    for key, value in changed.items():
        setattr(user, key, value)
    revoked = 0
    if role_changed or deactivating:
        revoked = await revoke_sessions(session, user.id)
    if deactivating:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utc_now())
        )
    if changed:
        await audit(
            session,
            actor,
            "user.update",
            target_type="user",
            target_id=user.id,
            details={
                "changed": sorted(changed),
                "role": user.role,
                "is_active": user.is_active,
                "sessions_revoked": revoked,
            },
        )
    await session.flush()
    return user


async def update_own_profile(session: AsyncSession, user: User, changes: Mapping[str, Any], *, actor: Actor) -> User:
    """A user's own preferences: time zone and console language (`OWN_EDITABLE`). Audited as `user.update` like an
    admin's edit."""
    unknown = set(changes) - set(OWN_EDITABLE)
    if unknown:
        raise BadInput.field(sorted(unknown)[0], "unknown field")
    return await update_user(session, user, changes, actor=actor)


async def reset_password(
    session: AsyncSession,
    user: User,
    password: str,
    *,
    must_change: bool,
    actor: Actor,
    keep_session: int | None = None,
) -> int:
    """An admin (or the CLI) sets a user's password: the rules of docs/auth.md#your-own-password-and-sessions, optional
    "must change at next login"; all the user's sessions are revoked (except `keep_session`, the admin's own when it
    resets itself)."""
    check_password_rules(password, username=user.username)
    user.password_hash = hash_password(password)
    user.must_change_password = must_change
    revoked = await revoke_sessions(session, user.id, keep=keep_session)
    await audit(
        session,
        actor,
        "user.password_reset",
        target_type="user",
        target_id=user.id,
        details={"must_change_password": must_change, "sessions_revoked": revoked},
    )
    return revoked


# What deleting a user takes with it, in the order the console's confirmation page names it.
DELETION_PARTS: tuple[tuple[str, Any], ...] = (
    ("contacts", Contact),
    ("tags", Tag),
    ("imports", Import),
    ("templates", Template),
    ("senders", Sender),
    ("images", Media),
    ("campaigns", Task),
    ("suppressions", Suppression),
    ("service_mappings", UserServiceMapping),
    ("api_tokens", ApiToken),
    ("ledger_entries", QuotaLedgerEntry),
    ("events", Event),
)


async def deletion_preview(session: AsyncSession, user_id: int, *, cap: int = 10_000) -> dict[str, int]:
    """How many rows of each kind `delete_user` deletes with the user (`DELETION_PARTS`), each counted up to
    cap + 1 (cap + 1 means "more than cap"), and how many of its campaigns are queued, sending or paused (which
    make `delete_user` refuse)."""
    counts: dict[str, int] = {}
    for name, model in DELETION_PARTS:
        matching = select(model.id).where(model.user_id == user_id).limit(cap + 1).subquery()
        counts[name] = int(await session.scalar(select(func.count()).select_from(matching)) or 0)
    active = select(Task.id).where(Task.user_id == user_id, Task.status.in_(ACTIVE_TASK_STATUSES)).limit(cap + 1)
    counts["active_campaigns"] = int(await session.scalar(select(func.count()).select_from(active.subquery())) or 0)
    return counts


async def delete_user(session: AsyncSession, user: User, *, actor: Actor) -> None:
    """Delete the user and all its data (foreign keys cascade; events carry user_id without one and are
    deleted here). Refused (409 in_use) while it owns a queued, sending or paused task, and for the last
    active admin (409 last_admin). The audit entry keeps the username and id."""

    active = (
        await session.scalars(
            select(Task.id)
            .where(Task.user_id == user.id, Task.status.in_(ACTIVE_TASK_STATUSES))
            .order_by(Task.id)
            .limit(20)
        )
    ).all()
    if active:
        raise InUse("the user owns tasks that are queued, sending or paused; cancel them first", task_ids=list(active))
    await _guard_last_admin(session, user)
    user_id, username = user.id, user.username
    await session.execute(delete(Event).where(Event.user_id == user_id))
    await session.execute(delete(User).where(User.id == user_id).execution_options(synchronize_session=False))
    session.expunge(user)
    await audit(
        session,
        actor,
        "user.deleted",
        target_type="user",
        target_id=user_id,
        details={"username": username, "id": user_id},
    )
