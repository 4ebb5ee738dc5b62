"""The service day (docs/sending.md#daily-quota-and-the-service-day): the period between two daily-quota resets of
a service, named by its local date. A new day begins at the reset time by itself, so no reset job exists.

The day is a function of the *instant*: service day D starts at `day_start(D)`, the first instant whose
local reading reaches D's reset time. On a spring-forward day whose reset time does not exist, that is the
end of the gap; on a fall-back day whose reset time occurs twice, it is the first occurrence, so the day
starts only once. `service_day(t)` is the last day whose start is ≤ t, which keeps it monotonic.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

GAP_SCAN_LIMIT = 4 * 60  # minutes: no DST gap is longer than a few hours


def parse_reset_time(value: str) -> dt.time:
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


def day_start(day: dt.date, *, timezone: str, reset_time: str) -> dt.datetime:
    """The first instant (UTC) of service day `day`."""
    zone = ZoneInfo(timezone)
    naive = dt.datetime.combine(day, parse_reset_time(reset_time))
    first = naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first  # the reset time exists (fold=0 is its first occurrence when it repeats)
    return _end_of_gap(naive, zone)


def _end_of_gap(naive: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The first instant whose local reading is at or after `naive`, which lies in a skipped interval."""
    start = min(
        naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC), naive.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
    )
    start = start.replace(second=0, microsecond=0)
    for minute in range(GAP_SCAN_LIMIT):
        instant = start + dt.timedelta(minutes=minute)
        if instant.astimezone(zone).replace(tzinfo=None) >= naive:
            return instant
    raise ValueError(f"no instant reaches {naive} in {zone}")  # pragma: no cover - no such zone exists


def service_day(at: dt.datetime, *, timezone: str, reset_time: str) -> dt.date:
    local_date = at.astimezone(ZoneInfo(timezone)).date()
    if at >= day_start(local_date, timezone=timezone, reset_time=reset_time):
        return local_date
    return local_date - dt.timedelta(days=1)


def next_reset(at: dt.datetime, *, timezone: str, reset_time: str) -> dt.datetime:
    """The instant the service day after the one containing `at` begins."""
    today = service_day(at, timezone=timezone, reset_time=reset_time)
    return day_start(today + dt.timedelta(days=1), timezone=timezone, reset_time=reset_time)
