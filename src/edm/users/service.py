"""Accounts and personal API tokens (SPEC §3.3, §3.4, §15.1)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import string

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.contacts.emails import normalize_email
from edm.errors import BadInput, Conflict, InvalidToken, NotFound
from edm.security.passwords import check_password_rules, hash_password
from edm.users.credit import apply_credit
from edm.users.models import ApiToken, LedgerKind, Role, TokenScope, User

USERNAME = re.compile(r"^[a-z0-9._-]{3,64}$")
TOKEN_ALPHABET = string.ascii_letters + string.digits


def normalize_username(username: str) -> str:
    value = username.strip().lower()
    if not USERNAME.fullmatch(value):
        raise BadInput.field("username", "must be 3–64 characters of a-z, 0-9, '.', '_' or '-'")
    return value


async def create_user(
    session: AsyncSession, *, username: str, email: str, password: str, role: str = Role.USER,
    credit: int = 0, credit_reason: str = "initial credit", timezone: str = "UTC", actor_user_id: int | None = None,
) -> User:
    name = normalize_username(username)
    address = normalize_email(email, field="email").normalized
    if role not in set(Role):
        raise BadInput.field("role", "must be admin, user or read_only")
    check_password_rules(password, username=name)
    if await session.scalar(select(User.id).where(func.lower(User.username) == name)):
        raise Conflict("username already exists", details=[{"field": "username", "message": "already exists"}])
    if await session.scalar(select(User.id).where(User.email == address)):
        raise Conflict("email already exists", details=[{"field": "email", "message": "already exists"}])
    user = User(username=name, email=address, password_hash=hash_password(password), role=role,
                timezone=timezone, credit_balance=0, created_by=actor_user_id)
    session.add(user)
    await session.flush()
    if credit:
        await apply_credit(session, user_id=user.id, kind=LedgerKind.GRANT, amount=credit, reason=credit_reason,
                           actor_user_id=actor_user_id)
    return user


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
    session: AsyncSession, *, user_id: int, name: str, scope: str = TokenScope.WRITE,
    expires_at: dt.datetime | None = None,
) -> tuple[str, ApiToken]:
    """Returns the token text (shown once) and its row; only the SHA-256 hash is stored."""
    if not 1 <= len(name.strip()) <= 100:
        raise BadInput.field("name", "must be 1–100 characters")
    if scope not in set(TokenScope):
        raise BadInput.field("scope", "must be read or write")
    token = "edm_" + "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(40))
    row = ApiToken(user_id=user_id, name=name.strip(), scope=scope, token_prefix=token[:8],
                   token_hash=_hash_token(token), expires_at=expires_at)
    session.add(row)
    await session.flush()
    return token, row


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
