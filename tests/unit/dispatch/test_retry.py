"""Back-off policies: doubling from the base, the cap, the ±20 % jitter, and levels of any size."""

from __future__ import annotations

import datetime as dt

import pytest

from edm.dispatch.retry import default_jitter, freeze_cooldown, retry_delay, throttle_backoff


def seconds(delay: dt.timedelta) -> float:
    return delay.total_seconds()


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        (1, 60),
        (2, 120),
        (3, 240),
        (4, 480),
        (5, 960),
        (6, 1920),
        (7, 3600),
        (8, 3600),
        (50, 3600),
    ],
)
def test_retry_delay_doubles_from_a_minute_up_to_an_hour(failures: int, expected: float) -> None:
    assert seconds(retry_delay(failures, jitter=lambda: 1.0)) == expected


@pytest.mark.parametrize("failures", [0, -3])
def test_no_failures_yet_counts_as_the_first(failures: int) -> None:
    assert seconds(retry_delay(failures, jitter=lambda: 1.0)) == 60


def test_jitter_scales_the_capped_delay() -> None:
    assert seconds(retry_delay(2, jitter=lambda: 0.8)) == pytest.approx(96)
    assert seconds(retry_delay(2, jitter=lambda: 1.2)) == pytest.approx(144)
    assert seconds(retry_delay(99, jitter=lambda: 1.2)) == pytest.approx(4320), "±20 % around the cap too"
    assert seconds(retry_delay(3, base=0.5, cap=1.5, jitter=lambda: 1.0)) == 1.5


def test_default_jitter_stays_within_twenty_percent() -> None:
    draws = [default_jitter() for _ in range(2000)]
    assert all(0.8 <= d <= 1.2 for d in draws)
    assert max(draws) - min(draws) > 0.2, "it actually varies"


@pytest.mark.parametrize(("level", "expected"), [(0, 30), (1, 30), (2, 60), (3, 120), (5, 480), (6, 900), (60, 900)])
def test_throttle_backoff_without_retry_after(level: int, expected: float) -> None:
    assert seconds(throttle_backoff(level, retry_after=None)) == expected


@pytest.mark.parametrize(
    ("level", "retry_after", "expected"),
    [
        (1, 120.0, 120),  # the provider asks for longer than our first step: honoured
        (4, 10.0, 240),  # our back-off is already longer: kept
        (1, 7200.0, 3600),  # a Retry-After above an hour is cut to an hour
        (1, 0.0, 30),  # zero means "no advice"
    ],
)
def test_throttle_backoff_honours_retry_after_up_to_an_hour(level: int, retry_after: float, expected: float) -> None:
    assert seconds(throttle_backoff(level, retry_after=retry_after)) == expected


@pytest.mark.parametrize(("level", "expected"), [(1, 600), (2, 1200), (4, 4800), (8, 76800), (9, 86400), (40, 86400)])
def test_freeze_cooldown_doubles_from_ten_minutes_up_to_a_day(level: int, expected: float) -> None:
    assert seconds(freeze_cooldown(level)) == expected


@pytest.mark.parametrize("level", [1025, 10**6])
def test_a_very_long_run_of_failures_stays_at_the_cap(level: int) -> None:
    # A service throttled by every answer of a long campaign raises its level by one per answer.
    assert seconds(throttle_backoff(level, retry_after=None)) == 900
    assert seconds(freeze_cooldown(level)) == 86400
    assert seconds(retry_delay(level, jitter=lambda: 1.0)) == 3600
