"""Back-off policies (docs/sending.md#failures-and-failover, docs/states.md#service-states). Pure; `jitter` is injected
so tests are deterministic."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

Jitter = Callable[[], float]  # returns a factor in [0.8, 1.2]


def default_jitter() -> float:
    return random.uniform(0.8, 1.2)


def retry_delay(
    retryable_failures: int, *, base: float = 60.0, cap: float = 3600.0, jitter: Jitter = default_jitter
) -> dt.timedelta:
    """min(base × 2^(n−1), cap) ± 20 %, n = retryable failures so far (≥ 1)."""
    return dt.timedelta(seconds=_doubled(base, retryable_failures, cap) * jitter())


def throttle_backoff(level: int, *, retry_after: float | None, base: float = 30.0, cap: float = 900.0) -> dt.timedelta:
    """max(Retry-After ≤ 1 h, base × 2^(level−1) ≤ cap)."""
    exponential = _doubled(base, level, cap)
    honoured = min(retry_after, 3600.0) if retry_after else 0.0
    return dt.timedelta(seconds=max(honoured, exponential))


def freeze_cooldown(level: int, *, base: float = 600.0, cap: float = 86400.0) -> dt.timedelta:
    """min(base × 2^(level−1), cap)."""
    return dt.timedelta(seconds=_doubled(base, level, cap))


def _doubled(base: float, level: int, cap: float) -> float:
    """min(base × 2^(level−1), cap), level counted from 1. The exponent is bounded: a long run of throttled
    answers raises a service's level by one each, and 2^1024 no longer converts to a float."""
    return min(base * 2.0 ** min(max(1, level) - 1, 64), cap)
