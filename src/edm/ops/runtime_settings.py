"""Admin-editable settings (SPEC §19.2), read from the `settings` table into one typed object.

Workers re-read them at most every 30 s, so a change takes effect without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.dispatch.allocation import Strategy
from edm.email_services.availability import Policy
from edm.errors import BadInput
from edm.ops.models import Setting


@dataclass(frozen=True)
class RuntimeSettings:
    allocation_strategy: str = Strategy.ROUND_ROBIN
    retry_max_attempts: int = 5
    retry_base_delay: float = 60.0
    retry_max_delay: float = 3600.0
    freeze_failure_threshold: int = 10
    freeze_base_cooldown: float = 600.0
    freeze_max_cooldown: float = 86400.0
    throttle_base_backoff: float = 30.0
    throttle_max_backoff: float = 900.0
    autopause_min_sample: int = 100
    autopause_max_failure_rate: float = 0.20
    autopause_max_bounce_rate: float = 0.10
    uncertain_reconcile_window: float = 3600.0
    uncertain_auto_abandon_days: float = 7.0
    capacity_service_unavailable_grace: float = 600.0
    sending_paused: bool = False
    org_name: str = ""
    compliance_postal_address: str = ""

    @property
    def strategy(self) -> Strategy:
        return Strategy(self.allocation_strategy)

    @property
    def policy(self) -> Policy:
        return Policy(
            max_attempts=self.retry_max_attempts, retry_base=self.retry_base_delay, retry_max=self.retry_max_delay,
            freeze_threshold=self.freeze_failure_threshold, freeze_base=self.freeze_base_cooldown,
            freeze_max=self.freeze_max_cooldown, throttle_base=self.throttle_base_backoff,
            throttle_max=self.throttle_max_backoff,
        )


def key_of(field_name: str) -> str:
    """`retry_max_attempts` is stored under `retry.max_attempts` (the dotted names of SPEC §19.2)."""
    head, _, rest = field_name.partition("_")
    if head == "allocation" or head == "compliance" or head == "org":
        return f"{head}.{rest}"
    if head in ("retry", "freeze", "throttle", "autopause", "uncertain", "capacity", "sending"):
        return f"{head}.{rest}"
    return field_name


KEYS = {key_of(f.name): f for f in fields(RuntimeSettings)}


async def load(session: AsyncSession) -> RuntimeSettings:
    rows = (await session.execute(select(Setting.key, Setting.value))).all()
    values = {KEYS[k].name: v for k, v in rows if k in KEYS}
    return RuntimeSettings(**values)


def coerce(key: str, value: Any) -> Any:
    if key not in KEYS:
        raise BadInput.field(key, "unknown setting")
    kind = KEYS[key].type
    try:
        if kind in ("bool", bool):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
        if key == "allocation.strategy":
            return Strategy(value).value
        return str(value)
    except (ValueError, TypeError) as exc:
        raise BadInput.field(key, f"invalid value {value!r}") from exc


async def put(session: AsyncSession, key: str, value: Any, *, actor_user_id: int | None = None) -> None:
    value = coerce(key, value)
    row = await session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value=value, updated_by=actor_user_id))
    else:
        row.value = value
        row.updated_by = actor_user_id
    await session.flush()
