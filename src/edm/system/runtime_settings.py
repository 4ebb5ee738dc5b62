"""Admin-editable settings (docs/operations.md#admin-settings), read from the `settings` table into one typed object.

Workers re-read them at most every 30 s, so a change takes effect without a restart.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.errors import BadInput
from edm.models.system import Setting


class Strategy(enum.StrEnum):
    ROUND_ROBIN = "round_robin"  # every eligible service pulls as its slots come due, in rotation
    WEIGHTED = "weighted"  # smooth weighted round-robin on weight × quota left × health
    PRIORITY = "priority"  # the best (lowest) priority tier that can work takes everything


@dataclass(frozen=True, slots=True)
class Policy:
    """Admin settings that shape back-off (docs/operations.md#admin-settings)."""

    max_attempts: int = 5
    retry_base: float = 60.0
    retry_max: float = 3600.0
    freeze_threshold: int = 10
    freeze_base: float = 600.0
    freeze_max: float = 86400.0
    throttle_base: float = 30.0
    throttle_max: float = 900.0


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
    compliance_footer_html: str = ""
    # Bounce and suppression policy (docs/suppression.md#what-is-added-automatically-the-bounce-policy): where each
    # automatic suppression goes (user, global or off).
    bounce_soft_limit: int = 3
    suppression_unsubscribe_scope: str = "user"
    suppression_hard_bounce_scope: str = "global"
    suppression_soft_bounce_scope: str = "global"
    suppression_complaint_scope: str = "global"
    # Human and machine engagement (docs/tracking.md#people-and-machines). The lists extend the built-in ones.
    tracking_machine_open_window: float = 60.0
    tracking_machine_click_window: float = 10.0
    tracking_click_burst_window: float = 2.0
    tracking_bot_user_agents: tuple[str, ...] = ()
    tracking_proxy_cidrs: tuple[str, ...] = ()
    credit_low_threshold: int = 100
    testsend_daily_limit: int = 50
    # Retention (docs/operations.md#retention) in days; 0 keeps the rows for ever. The daily `retention` job reads them.
    retention_raw_payload_days: int = 90
    retention_events_days: int = 365
    retention_send_attempts_days: int = 180
    retention_test_sends_days: int = 30
    retention_import_errors_days: int = 30
    retention_audit_log_days: int = 730
    retention_status_log_days: int = 365
    retention_unrouted_days: int = 365
    retention_notifications_days: int = 365

    @property
    def strategy(self) -> Strategy:
        return Strategy(self.allocation_strategy)

    @property
    def policy(self) -> Policy:
        return Policy(
            max_attempts=self.retry_max_attempts,
            retry_base=self.retry_base_delay,
            retry_max=self.retry_max_delay,
            freeze_threshold=self.freeze_failure_threshold,
            freeze_base=self.freeze_base_cooldown,
            freeze_max=self.freeze_max_cooldown,
            throttle_base=self.throttle_base_backoff,
            throttle_max=self.throttle_max_backoff,
        )


def key_of(field_name: str) -> str:
    """`retry_max_attempts` is stored under `retry.max_attempts` (the dotted names of
    docs/operations.md#admin-settings)."""
    head, _, rest = field_name.partition("_")
    return f"{head}.{rest}"


KEYS = {key_of(f.name): f for f in fields(RuntimeSettings)}
# The fewest days a retention period other than 0 may keep. Send attempts feed a service's 7-day health history
# (docs/providers.md#the-health-view), so they stay at least 8 days.
RETENTION_MINIMUM_DAYS = {key: 1 for key in KEYS if key.startswith("retention.")} | {"retention.send_attempts_days": 8}
SCOPES = ("user", "global", "off")
_NON_NEGATIVE = ("int", "float")


async def load(session: AsyncSession) -> RuntimeSettings:
    rows = (await session.execute(select(Setting.key, Setting.value))).all()
    values = {KEYS[k].name: _loaded(KEYS[k].type, v) for k, v in rows if k in KEYS}
    return RuntimeSettings(**values)


def _loaded(kind: Any, value: Any) -> Any:
    return tuple(value or ()) if str(kind).startswith("tuple") else value


def current_values(runtime: RuntimeSettings) -> dict[str, Any]:
    """Every setting under its dotted key, lists as lists: what the settings API shows."""
    return {key: (list(v) if isinstance(v := getattr(runtime, f.name), tuple) else v) for key, f in KEYS.items()}


def coerce(key: str, value: Any) -> Any:
    """The stored form of `value` for `key`, or BadInput naming the key and what is wrong."""
    if key not in KEYS:
        raise BadInput.field(key, "unknown setting")
    kind = str(KEYS[key].type)
    try:
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind in _NON_NEGATIVE:
            number = _coerce_number(key, value, integer=kind == "int")
            least = RETENTION_MINIMUM_DAYS.get(key)
            if least is not None and 0 < number < least:
                raise BadInput.field(key, f"must be 0 (keep for ever) or at least {least} days")
            return number
        if kind.startswith("tuple"):
            return _coerce_list(key, value)
        if key == "allocation.strategy":
            return Strategy(value).value
        if key.endswith("_scope") and value not in SCOPES:
            raise BadInput.field(key, f"must be one of {', '.join(SCOPES)}")
        if not isinstance(value, str):
            raise ValueError
        if key == "compliance.footer_html" and value.strip() and "{{ unsubscribe_url }}" not in value:
            raise BadInput.field(key, "must contain {{ unsubscribe_url }} (every task mail shows the link)")
        return value
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadInput.field(key, f"invalid value {value!r}") from exc


def _coerce_number(key: str, value: Any, *, integer: bool) -> int | float:
    """A finite, non-negative number; for integer keys a whole one (2.7 is refused, not truncated)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError
    number = float(value)
    if not math.isfinite(number):
        raise BadInput.field(key, "must be a finite number")
    if number < 0:
        raise BadInput.field(key, "must not be negative")
    if integer:
        if not number.is_integer():
            raise BadInput.field(key, "must be a whole number")
        return int(number)
    return number


def _coerce_list(key: str, value: Any) -> list[str]:
    """A list of strings, or one string of comma- or newline-separated items."""
    items = value.replace("\n", ",").split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise BadInput.field(key, "must be a list of strings")
    cleaned = [item.strip() for item in items if item.strip()]
    if key == "tracking.proxy_cidrs":
        for item in cleaned:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise BadInput.field(key, f"{item!r} is not an IP network (e.g. 66.102.0.0/20)") from None
        return [str(ipaddress.ip_network(item, strict=False)) for item in cleaned]
    return cleaned


async def put(session: AsyncSession, key: str, value: Any, *, actor_user_id: int | None = None) -> None:
    value = coerce(key, value)
    row = await session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value=value, updated_by=actor_user_id))
    else:
        row.value = value
        row.updated_by = actor_user_id
    await session.flush()
