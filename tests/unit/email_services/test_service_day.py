"""The service day (docs/sending.md#daily-quota-and-the-service-day): the calendar date of (t in the service's zone −
reset time). A new day begins at the reset time by itself; on a DST day whose reset time does not exist the day begins
at the first later instant, and a repeated local time starts the day only once."""

from __future__ import annotations

import datetime as dt

from edm.dispatch.service_day import next_reset, service_day

NY = "America/New_York"
SPRING = dt.date(2025, 3, 9)  # 02:00 EST -> 03:00 EDT (07:00 UTC): 02:00–02:59 does not exist
FALL = dt.date(2025, 11, 2)  # 02:00 EDT -> 01:00 EST (06:00 UTC): 01:00–01:59 happens twice


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def sweep(start: dt.datetime, hours: int, step_minutes: int = 1) -> list[dt.datetime]:
    return [start + dt.timedelta(minutes=m) for m in range(0, hours * 60 + 1, step_minutes)]


def check_invariants(instants: list[dt.datetime], *, timezone: str, reset_time: str) -> None:
    """For every instant t: the day never goes backwards, next_reset(t) lies after t, is the first instant
    of the next service day, and the day starts only once."""
    days = [service_day(t, timezone=timezone, reset_time=reset_time) for t in instants]
    assert days == sorted(days), "the service day went backwards"
    for t, day in zip(instants, days, strict=True):
        reset = next_reset(t, timezone=timezone, reset_time=reset_time)
        assert reset > t, f"next_reset({t}) = {reset} is not after it"
        assert service_day(reset, timezone=timezone, reset_time=reset_time) == day + dt.timedelta(days=1)
        just_before = reset - dt.timedelta(microseconds=1)
        assert service_day(just_before, timezone=timezone, reset_time=reset_time) == day, (
            f"next_reset({t}) = {reset} is not the first instant of the next day"
        )


# ---- a zone without DST ----------------------------------------------------------------------------------


def test_shanghai_day_changes_exactly_at_the_reset_time() -> None:
    kw = {"timezone": "Asia/Shanghai", "reset_time": "02:00"}
    # 2025-03-10 02:00 Shanghai = 2025-03-09 18:00 UTC
    assert service_day(utc(2025, 3, 9, 17, 59, 59), **kw) == dt.date(2025, 3, 9)
    assert service_day(utc(2025, 3, 9, 18, 0, 0), **kw) == dt.date(2025, 3, 10)
    assert service_day(utc(2025, 3, 9, 17, 59, 59, 999999), **kw) == dt.date(2025, 3, 9)
    assert next_reset(utc(2025, 3, 9, 17, 58), **kw) == utc(2025, 3, 9, 18, 0)
    assert next_reset(utc(2025, 3, 9, 18, 0), **kw) == utc(2025, 3, 10, 18, 0)
    # Midnight local is still the previous service day.
    assert service_day(utc(2025, 3, 9, 16, 30), **kw) == dt.date(2025, 3, 9)
    check_invariants(sweep(utc(2025, 3, 8, 12, 0), 48, 7), **kw)


def test_utc_midnight_reset() -> None:
    kw = {"timezone": "UTC", "reset_time": "00:00"}
    assert service_day(utc(2025, 6, 1, 0, 0), **kw) == dt.date(2025, 6, 1)
    assert service_day(utc(2025, 5, 31, 23, 59, 59), **kw) == dt.date(2025, 5, 31)
    assert next_reset(utc(2025, 5, 31, 12, 0), **kw) == utc(2025, 6, 1)


# ---- spring forward ------------------------------------------------------------------------------------


def test_spring_forward_reset_in_the_gap_day_begins_at_the_first_later_instant() -> None:
    kw = {"timezone": NY, "reset_time": "02:30"}
    # 01:59:59 EST is still the previous service day; 03:00 EDT (07:00 UTC) is the first instant of 03-09.
    assert service_day(utc(2025, 3, 9, 6, 59, 59), **kw) == dt.date(2025, 3, 8)
    assert service_day(utc(2025, 3, 9, 7, 0), **kw) == SPRING
    assert service_day(utc(2025, 3, 9, 7, 45), **kw) == SPRING
    # The next day is an ordinary one: 02:30 EDT = 06:30 UTC.
    assert next_reset(utc(2025, 3, 9, 12, 0), **kw) == utc(2025, 3, 10, 6, 30)
    # The day before the change: 02:30 EST = 07:30 UTC.
    assert next_reset(utc(2025, 3, 7, 12, 0), **kw) == utc(2025, 3, 8, 7, 30)


def test_spring_forward_next_reset_is_the_end_of_the_gap() -> None:
    """Regression: day_start() answered 03:30 EDT (the reset time moved by the gap) while service_day()
    already started the day at 03:00 EDT, so waiting_until/exhausted_until were 30 min late."""
    kw = {"timezone": NY, "reset_time": "02:30"}
    assert next_reset(utc(2025, 3, 8, 18, 0), **kw) == utc(2025, 3, 9, 7, 0)


def test_spring_forward_gap_invariants() -> None:
    """Regression (see above): next_reset() must be the first instant of the next service day."""
    check_invariants(sweep(utc(2025, 3, 8, 12, 0), 36, 5), timezone=NY, reset_time="02:30")


def test_spring_forward_reset_at_the_gap_start_and_outside_it() -> None:
    # 02:00 is the first non-existent minute: the day begins at 03:00 EDT = 07:00 UTC, which is also 02:00 EST.
    assert next_reset(utc(2025, 3, 8, 18, 0), timezone=NY, reset_time="02:00") == utc(2025, 3, 9, 7, 0)
    check_invariants(sweep(utc(2025, 3, 8, 12, 0), 36, 5), timezone=NY, reset_time="02:00")
    check_invariants(sweep(utc(2025, 3, 8, 12, 0), 36, 5), timezone=NY, reset_time="03:00")
    check_invariants(sweep(utc(2025, 3, 8, 12, 0), 36, 5), timezone=NY, reset_time="01:30")


# ---- fall back -----------------------------------------------------------------------------------------


def test_fall_back_reset_after_the_repeated_hour_starts_the_day_once() -> None:
    kw = {"timezone": NY, "reset_time": "02:30"}
    # 02:30 happens once, in EST: 07:30 UTC.
    assert service_day(utc(2025, 11, 2, 5, 30), **kw) == dt.date(2025, 11, 1)  # 01:30 EDT
    assert service_day(utc(2025, 11, 2, 6, 30), **kw) == dt.date(2025, 11, 1)  # 01:30 EST
    assert service_day(utc(2025, 11, 2, 7, 29, 59), **kw) == dt.date(2025, 11, 1)
    assert service_day(utc(2025, 11, 2, 7, 30), **kw) == FALL
    assert next_reset(utc(2025, 11, 1, 12, 0), **kw) == utc(2025, 11, 2, 7, 30)
    assert next_reset(utc(2025, 11, 2, 12, 0), **kw) == utc(2025, 11, 3, 7, 30)
    # The service day that contains the change (11-01, from 02:30 EDT to 02:30 EST) is 25 hours long.
    assert next_reset(utc(2025, 11, 1, 6, 30), **kw) - utc(2025, 11, 1, 6, 30) == dt.timedelta(hours=25)
    check_invariants(sweep(utc(2025, 11, 1, 12, 0), 36, 5), **kw)


def test_fall_back_reset_in_the_repeated_hour_starts_the_day_only_once() -> None:
    """Regression: comparing wall-clock readings only, the day started at 01:30 EDT, went back to the previous
    day at 01:00 EST (usage counted on a day already closed) and started again at 01:30 EST; next_reset()
    then answered an instant in the past."""
    kw = {"timezone": NY, "reset_time": "01:30"}
    assert service_day(utc(2025, 11, 2, 5, 30), **kw) == FALL  # 01:30 EDT: the first occurrence starts the day
    assert service_day(utc(2025, 11, 2, 6, 0), **kw) == FALL  # 01:00 EST: still the same day
    assert next_reset(utc(2025, 11, 2, 6, 0), **kw) > utc(2025, 11, 2, 6, 0)
    check_invariants(sweep(utc(2025, 11, 1, 12, 0), 36, 5), **kw)
