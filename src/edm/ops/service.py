"""Admin operations shared by the API and the CLI: audit log rows and audited settings changes (SPEC §4.8,
§15.4, §19.2).

Services take the caller's session and flush; the entry point commits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.clock import utc_now
from edm.errors import BadInput
from edm.ops import runtime_settings
from edm.ops.models import AuditLog, Setting
from edm.ops.runtime_settings import KEYS, RuntimeSettings

MAX_INT = 2**63 - 1  # a setting larger than BIGINT is a typo, and some readers would overflow on it


@dataclass(frozen=True)
class Actor:
    """Who did it, as the audit log records it: a user (or None for the CLI and the system) and how."""

    user_id: int | None
    kind: str  # session | token | cli | system
    ip: str | None = None


CLI = Actor(None, "cli")


async def audit(session: AsyncSession, actor: Actor, action: str, *, target_type: str | None = None,
                target_id: Any = None, details: dict[str, Any] | None = None) -> None:
    """One audit row. `details` never holds secrets."""
    session.add(AuditLog(actor_user_id=actor.user_id, actor_kind=actor.kind, action=action, target_type=target_type,
                         target_id=None if target_id is None else str(target_id), details=details, ip=actor.ip,
                         at=utc_now()))
    await session.flush()


# --------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------


async def settings_view(session: AsyncSession) -> list[dict[str, Any]]:
    """Every known key with its current value, its default, and who changed it last (when stored)."""
    current = runtime_settings.current_values(await runtime_settings.load(session))
    defaults = runtime_settings.current_values(RuntimeSettings())
    stored = {row.key: row for row in await session.scalars(select(Setting))}
    return [{"key": key, "value": current[key], "default": defaults[key],
             "updated_by": stored[key].updated_by if key in stored else None,
             "updated_at": stored[key].updated_at if key in stored else None} for key in sorted(KEYS)]


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
        await audit(session, actor, "settings.update", target_type="setting", target_id=key,
                    details={"old": current[key], "new": value})
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
