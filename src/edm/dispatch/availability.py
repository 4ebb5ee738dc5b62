"""Service availability now (docs/states.md#service-states) and how outcomes move a service's runtime state
(docs/sending.md#failures-and-failover). Pure."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from edm.dispatch import retry, slots
from edm.models.email_services import FreezeReason, StatusChange
from edm.providers.base import Outcome, SendResult
from edm.system.runtime_settings import Policy


@dataclass(frozen=True, slots=True)
class Limits:
    is_enabled: bool
    max_concurrency: int
    batch_size: int
    daily_quota: int
    interval: float


@dataclass(slots=True)
class RuntimeState:
    """The mutable fields of EmailServiceState that outcomes and claims touch."""

    frozen: bool = False
    frozen_reason: str | None = None
    frozen_until: dt.datetime | None = None
    freeze_level: int = 0
    probe_in_flight: bool = False
    throttled_until: dt.datetime | None = None
    throttle_level: int = 0
    exhausted_until: dt.datetime | None = None
    consecutive_failures: int = 0
    next_slot_at: dt.datetime | None = None
    last_success_at: dt.datetime | None = None
    last_failure_at: dt.datetime | None = None
    last_error: str | None = None
    recent_success_rate: float | None = None
    recent_samples: int = 0
    latency_ms_ewma: float | None = None


@dataclass(frozen=True, slots=True)
class Availability:
    eligible: bool
    probe: bool = False  # half-open: exactly one SubTask may be claimed
    reason: str | None = None  # why not: disabled, frozen, throttled, exhausted, daily_quota, busy, slot
    until: dt.datetime | None = None  # when the reason ends, if known

    @property
    def slot_waiting(self) -> bool:
        return self.reason in ("busy", "slot")


def availability(
    state: RuntimeState,
    limits: Limits,
    *,
    now: dt.datetime,
    used_today: int,
    in_flight: int,
    next_reset: dt.datetime,
) -> Availability:
    if not limits.is_enabled:
        return Availability(False, reason="disabled")
    probe = False
    if state.frozen:
        if state.frozen_reason != FreezeReason.FAILURES or state.frozen_until is None:
            return Availability(False, reason="frozen", until=state.frozen_until)
        if state.frozen_until > now or state.probe_in_flight:
            return Availability(False, reason="frozen", until=max(state.frozen_until, now))
        probe = True
    if state.throttled_until and state.throttled_until > now:
        return Availability(False, reason="throttled", until=state.throttled_until)
    if state.exhausted_until and state.exhausted_until > now:
        return Availability(False, reason="exhausted", until=state.exhausted_until)
    if used_today >= limits.daily_quota:
        return Availability(False, reason="daily_quota", until=next_reset)
    if in_flight >= limits.max_concurrency * limits.batch_size:
        return Availability(False, reason="busy")
    if slots.slots_due(next_slot_at=state.next_slot_at, now=now, interval=limits.interval) == 0:
        return Availability(False, reason="slot", until=state.next_slot_at)
    return Availability(True, probe=probe)


@dataclass(slots=True)
class StateUpdate:
    state: RuntimeState
    log: list[tuple[str, str | None, str | None, str]] = field(default_factory=list)  # change, old, new, reason


SERVICE_LEVEL_FAILURES = {Outcome.TRANSIENT, Outcome.MAYBE_SENT}


def apply_results(
    state: RuntimeState,
    results: list[SendResult],
    *,
    now: dt.datetime,
    probe: bool,
    policy: Policy,
    next_reset: dt.datetime,
) -> StateUpdate:
    """Fold a batch of results into the service state, in order, returning status-log entries."""
    update = StateUpdate(state)
    for result in results:
        _apply_one(update, result, now=now, probe=probe, policy=policy, next_reset=next_reset)
    state.probe_in_flight = False
    return update


def _apply_one(
    update: StateUpdate,
    result: SendResult,
    *,
    now: dt.datetime,
    probe: bool,
    policy: Policy,
    next_reset: dt.datetime,
) -> None:
    state = update.state
    _track_health(state, result)
    if result.outcome is Outcome.ACCEPTED:
        _on_success(update, now, probe)
        return
    if result.outcome is Outcome.PERMANENT:
        return  # the message was wrong, not the service
    state.last_failure_at = now
    state.last_error = result.message[:500] or result.outcome.value
    if result.outcome is Outcome.AUTH_CONFIG:
        _freeze(update, FreezeReason.AUTH_CONFIG, None, result.message or "authentication/configuration error")
    elif result.outcome is Outcome.QUOTA_EXHAUSTED:
        if not (state.exhausted_until and state.exhausted_until >= next_reset):
            state.exhausted_until = next_reset
            update.log.append((StatusChange.EXHAUSTED, None, next_reset.isoformat(), result.message[:200]))
    elif result.outcome is Outcome.THROTTLED:
        _throttle(update, now, result.retry_after, policy)
    elif result.outcome in SERVICE_LEVEL_FAILURES and not result.recipient_level:
        _count_failure(update, now, probe, policy, result.message)


def _on_success(update: StateUpdate, now: dt.datetime, probe: bool) -> None:
    state = update.state
    state.consecutive_failures = 0
    state.last_success_at = now
    state.throttle_level = 0
    if state.frozen and state.frozen_reason == FreezeReason.FAILURES:
        state.frozen, state.frozen_reason, state.frozen_until, state.freeze_level = False, None, None, 0
        update.log.append((StatusChange.PROBE_SUCCEEDED, "frozen", "active", "half-open probe accepted"))


def _count_failure(update: StateUpdate, now: dt.datetime, probe: bool, policy: Policy, message: str) -> None:
    state = update.state
    state.consecutive_failures += 1
    if state.frozen and state.frozen_reason == FreezeReason.FAILURES and probe:
        state.freeze_level += 1
        state.frozen_until = now + retry.freeze_cooldown(
            state.freeze_level, base=policy.freeze_base, cap=policy.freeze_max
        )
        update.log.append((StatusChange.PROBE_FAILED, "half-open", "frozen", message[:200]))
    elif not state.frozen and state.consecutive_failures >= policy.freeze_threshold:
        state.freeze_level += 1
        until = now + retry.freeze_cooldown(state.freeze_level, base=policy.freeze_base, cap=policy.freeze_max)
        _freeze(update, FreezeReason.FAILURES, until, f"{state.consecutive_failures} consecutive failures")


def _freeze(update: StateUpdate, reason: FreezeReason, until: dt.datetime | None, why: str) -> None:
    state = update.state
    if state.frozen and state.frozen_reason == reason and state.frozen_until == until:
        return
    state.frozen, state.frozen_reason, state.frozen_until = True, reason, until
    update.log.append((StatusChange.FROZEN, None, reason, why[:200]))


def _throttle(update: StateUpdate, now: dt.datetime, retry_after: float | None, policy: Policy) -> None:
    state = update.state
    state.throttle_level += 1
    until = now + retry.throttle_backoff(
        state.throttle_level, retry_after=retry_after, base=policy.throttle_base, cap=policy.throttle_max
    )
    if state.throttled_until is None or until > state.throttled_until:
        state.throttled_until = until
    update.log.append((StatusChange.THROTTLED, None, state.throttled_until.isoformat(), "provider throttled"))


def _track_health(state: RuntimeState, result: SendResult) -> None:
    """Exponentially weighted success rate and latency over roughly the last 100 attempts."""
    alpha = 1 / min(100, state.recent_samples + 1)
    ok = 1.0 if result.outcome is Outcome.ACCEPTED else 0.0
    state.recent_success_rate = (
        ok
        if state.recent_success_rate is None
        else (state.recent_success_rate + alpha * (ok - state.recent_success_rate))
    )
    if result.latency_ms:
        prev = state.latency_ms_ewma
        state.latency_ms_ewma = float(result.latency_ms) if prev is None else prev + alpha * (result.latency_ms - prev)
    state.recent_samples = min(100, state.recent_samples + 1)
