"""Rate-slot arithmetic: when a service's next sends may start, and the spacing invariant across claims."""

from __future__ import annotations

import datetime as dt
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from edm.dispatch.slots import CLAIM_HORIZON, MAX_CLAIM, assign_slots, first_slot, seconds_until, slots_due

NOW = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


def test_the_first_slot_is_now_unless_the_service_is_booked_ahead() -> None:
    assert first_slot(None, NOW) == NOW
    assert first_slot(NOW - 5 * SECOND, NOW) == NOW, "a slot in the past is not waited for"
    assert first_slot(NOW + 5 * SECOND, NOW) == NOW + 5 * SECOND


def test_slots_due_within_the_claim_horizon() -> None:
    assert slots_due(next_slot_at=None, now=NOW, interval=0.5) == 3  # now, +0.5 s, +1 s
    assert slots_due(next_slot_at=None, now=NOW, interval=2.0) == 1
    assert slots_due(next_slot_at=NOW + CLAIM_HORIZON, now=NOW, interval=2.0) == 1, "a slot at the edge counts"
    assert slots_due(next_slot_at=NOW + CLAIM_HORIZON + dt.timedelta(microseconds=1), now=NOW, interval=0.1) == 0


def test_slots_due_is_capped_by_the_largest_claim() -> None:
    assert slots_due(next_slot_at=None, now=NOW, interval=0.0) == MAX_CLAIM, "no interval: no spacing"
    assert slots_due(next_slot_at=None, now=NOW, interval=0.001) == MAX_CLAIM


def test_assign_slots_spaces_starts_and_books_the_next_one() -> None:
    slots, next_free = assign_slots(next_slot_at=NOW + SECOND, now=NOW, interval=0.5, count=3)
    assert slots == [NOW + SECOND, NOW + 1.5 * SECOND, NOW + 2 * SECOND]
    assert next_free == NOW + 2.5 * SECOND


def test_an_empty_claim_books_nothing() -> None:
    slots, next_free = assign_slots(next_slot_at=NOW - SECOND, now=NOW, interval=0.5, count=0)
    assert slots == [] and next_free == NOW


def test_seconds_until_a_slot_is_never_negative() -> None:
    assert seconds_until(NOW + 1.5 * SECOND, NOW) == 1.5
    assert seconds_until(NOW - SECOND, NOW) == 0.0


@settings(database=None, deadline=None)  # no example store in the tree; no per-example deadline under load
@given(
    interval=st.floats(min_value=0.05, max_value=5.0),
    claims=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=3.0), st.integers(min_value=0, max_value=20)),
        min_size=1,
        max_size=20,
    ),
    window=st.floats(min_value=0.0, max_value=10.0),
)
def test_no_window_holds_more_starts_than_the_interval_allows(
    interval: float,
    claims: list[tuple[float, int]],
    window: float,
) -> None:
    """Claims at any moments (each `gap` seconds after the previous), of any sizes: in every window of length T
    at most ⌊T/s⌋ + 1 sends start."""
    now, next_slot_at, starts = NOW, None, []
    for gap, count in claims:
        now += dt.timedelta(seconds=gap)
        count = min(count, slots_due(next_slot_at=next_slot_at, now=now, interval=interval))
        slots, next_slot_at = assign_slots(next_slot_at=next_slot_at, now=now, interval=interval, count=count)
        assert all(slot >= now for slot in slots), "no slot lies in the past of its claim"
        starts.extend(slots)
    starts.sort()
    allowed = math.floor(window / interval) + 1
    tolerance = dt.timedelta(microseconds=1)  # timedelta keeps microseconds: a step may round down by one
    for i, first in enumerate(starts):
        inside = [s for s in starts[i:] if s - first <= dt.timedelta(seconds=window) - tolerance]
        assert len(inside) <= allowed, (interval, window, starts)
