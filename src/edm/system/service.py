"""Admin operations shared by the API and the CLI: audit log rows and audited settings changes
(docs/admin.md#audit-log-get-adminaudit-log, docs/operations.md#admin-settings).

Services take the caller's session and flush; the entry point commits.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.errors import BadInput, NotFound
from edm.models.system import AuditLog, Notification, Setting
from edm.system import runtime_settings
from edm.system.runtime_settings import KEYS, RuntimeSettings

MAX_INT = 2**63 - 1  # a setting larger than BIGINT is a typo, and some readers would overflow on it


@dataclass(frozen=True)
class Actor:
    """Who did it, as the audit log records it: a user (or None for the CLI and the system) and how."""

    user_id: int | None
    kind: str  # session | token | cli | system
    ip: str | None = None


CLI = Actor(None, "cli")

# Detail keys that name a secret. Callers pass only what is safe to keep (names of fields, ids, counts); the
# helper still replaces these keys' values at any depth, so one careless caller cannot store a credential,
# webhook secret, token or password in a table every admin can read.
SECRET_DETAIL_KEYS = frozenset(
    {
        "password",
        "new_password",
        "current_password",
        "password_hash",
        "token",
        "token_hash",
        "secret",
        "secrets",
        "webhook_secret",
        "webhook_secrets",
        "credentials",
        "api_key",
        "private_key",
        "signing_key",
    }
)
REDACTED = "[redacted]"


def _without_secrets(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: REDACTED if str(k).lower() in SECRET_DETAIL_KEYS else _without_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_secrets(v) for v in value]
    return value


async def audit(
    session: AsyncSession,
    actor: Actor,
    action: str,
    *,
    target_type: str | None = None,
    target_id: Any = None,
    details: dict[str, Any] | None = None,
) -> None:
    """One audit row: who (`actor`), what (`action`, dotted: `service.update`), to which object, and details.
    Details hold what an admin needs to see later, never a secret value (see SECRET_DETAIL_KEYS)."""
    session.add(
        AuditLog(
            actor_user_id=actor.user_id,
            actor_kind=actor.kind,
            action=action,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            details=None if details is None else _without_secrets(details),
            ip=actor.ip,
            at=utc_now(),
        )
    )
    await session.flush()


# --------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------


async def settings_view(session: AsyncSession) -> list[dict[str, Any]]:
    """Every known key with its current value, its default, and who changed it last (when stored)."""
    current = runtime_settings.current_values(await runtime_settings.load(session))
    defaults = runtime_settings.current_values(RuntimeSettings())
    stored = {row.key: row for row in await session.scalars(select(Setting))}
    return [
        {
            "key": key,
            "value": current[key],
            "default": defaults[key],
            "updated_by": stored[key].updated_by if key in stored else None,
            "updated_at": stored[key].updated_at if key in stored else None,
        }
        for key in sorted(KEYS)
    ]


async def update_settings(session: AsyncSession, changes: Any, *, actor: Actor) -> list[str]:
    """Validate every change first (all or nothing: a bad key or value changes nothing and is named in the
    error), then store them and audit each one that differs from the current value. Returns the changed keys."""
    coerced = _validated(changes)
    current = runtime_settings.current_values(await runtime_settings.load(session))
    changed = []
    for key, value in coerced.items():
        if value == current[key]:
            continue
        await runtime_settings.put(session, key, value, actor_user_id=actor.user_id)
        await audit(
            session,
            actor,
            "settings.update",
            target_type="setting",
            target_id=key,
            details={"old": current[key], "new": value},
        )
        changed.append(key)
    return changed


def _validated(changes: Any) -> dict[str, Any]:
    if not isinstance(changes, Mapping) or not changes:
        raise BadInput.field("body", "give an object of {key: value}, at least one")
    coerced: dict[str, Any] = {}
    problems: list[dict[str, str]] = []
    for key, value in changes.items():
        try:
            coerced[key] = _finite(key, runtime_settings.coerce(key, _finite(key, value)))
        except BadInput as exc:
            problems.extend(exc.details)
    if problems:
        raise BadInput("; ".join(f"{p['field']}: {p['message']}" for p in problems), details=problems)
    return coerced


def _finite(key: str, value: Any) -> Any:
    """JSON admits 1e400 (infinity) and huge integers, and `coerce` reads "nan" as a float: none of them is a
    setting (an overflow in `coerce`, a NaN that PostgreSQL's JSONB refuses)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput.field(key, "must be a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise BadInput.field(key, "is too large")
    return value


# --------------------------------------------------------------------------------------------------------
# Audit log and notifications (reads, and marking a notification read)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    actor_user_id: int | None = None
    action: str | None = None  # a prefix: "credit." or "credit.adjust"
    target_type: str | None = None
    target_id: str | None = None
    since: dt.datetime | None = None  # at ≥ since
    until: dt.datetime | None = None  # at < until


async def list_audit(
    session: AsyncSession, filters: AuditFilter, *, limit: int, before_id: int | None = None
) -> list[AuditLog]:
    """Newest first (by id; rows are appended in time order)."""
    q = select(AuditLog)
    if filters.actor_user_id is not None:
        q = q.where(AuditLog.actor_user_id == filters.actor_user_id)
    if filters.action:
        q = q.where(AuditLog.action.startswith(filters.action, autoescape=True))
    if filters.target_type is not None:
        q = q.where(AuditLog.target_type == filters.target_type)
    if filters.target_id is not None:
        q = q.where(AuditLog.target_id == filters.target_id)
    if filters.since is not None:
        q = q.where(AuditLog.at >= filters.since)
    if filters.until is not None:
        q = q.where(AuditLog.at < filters.until)
    if before_id is not None:
        q = q.where(AuditLog.id < before_id)
    return list(await session.scalars(q.order_by(AuditLog.id.desc()).limit(limit)))


async def list_notifications(
    session: AsyncSession, user_id: int, *, unread: bool | None, limit: int, before_id: int | None = None
) -> list[Notification]:
    q = select(Notification).where(Notification.user_id == user_id)
    if unread is True:
        q = q.where(Notification.read_at.is_(None))
    elif unread is False:
        q = q.where(Notification.read_at.is_not(None))
    if before_id is not None:
        q = q.where(Notification.id < before_id)
    return list(await session.scalars(q.order_by(Notification.id.desc()).limit(limit)))


async def unread_count(session: AsyncSession, user_id: int) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.user_id == user_id, Notification.read_at.is_(None))
        )
        or 0
    )


async def mark_read(session: AsyncSession, user_id: int, notification_id: int) -> Notification:
    """Own notifications only: another user's id is 404, like a missing one. Marking twice keeps the first time."""
    row = await session.get(Notification, notification_id)
    if row is None or row.user_id != user_id:
        raise NotFound("notification not found")
    if row.read_at is None:
        row.read_at = utc_now()
        await session.flush()
    return row
