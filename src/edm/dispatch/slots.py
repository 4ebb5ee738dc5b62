"""Rate-slot arithmetic (docs/sending.md#the-claim). Pure.

`sending_interval_seconds = s` spaces the *starts* of emails from one service across all workers. A claim
of k items takes slots tᵢ = max(next_slot_at, now) + i·s and leaves next_slot_at = t_{k−1} + s. The
worker must not start item i before tᵢ. Invariant: in any window of length T at most ⌊T/s⌋ + 1 starts.
"""

from __future__ import annotations

import datetime as dt
import math

CLAIM_HORIZON = dt.timedelta(seconds=1)  # slots due within this horizon may be claimed now
MAX_CLAIM = 200


def first_slot(next_slot_at: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    return now if next_slot_at is None or next_slot_at < now else next_slot_at


def slots_due(*, next_slot_at: dt.datetime | None, now: dt.datetime, interval: float, most: int = MAX_CLAIM) -> int:
    """How many slots start within the claim horizon (at least 1 when the first one does), at most `most`."""
    start = first_slot(next_slot_at, now)
    horizon_end = now + CLAIM_HORIZON
    if start > horizon_end:
        return 0
    if interval <= 0:
        return most
    return min(most, 1 + math.floor((horizon_end - start).total_seconds() / interval))


def assign_slots(
    *, next_slot_at: dt.datetime | None, now: dt.datetime, interval: float, count: int
) -> tuple[list[dt.datetime], dt.datetime]:
    """Slot start times for `count` sends, and the service's next free slot after them."""
    start = first_slot(next_slot_at, now)
    step = dt.timedelta(seconds=interval)
    slots = [start + i * step for i in range(count)]
    return slots, start + count * step


def seconds_until(slot: dt.datetime, now: dt.datetime) -> float:
    return max(0.0, (slot - now).total_seconds())
