"""The service day (SPEC §7.4): named by the local date of (t in the service's zone − reset time).

A new day begins at the reset time by itself, so no reset job exists. Local wall-clock arithmetic with
zoneinfo makes DST behave: a reset time that does not exist on a spring-forward day begins the day at the
first later instant, and a repeated local time (fall back) starts the day only once, because the day is a
function of the instant and the instant's local reading only ever moves forward past the reset once.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


def parse_reset_time(value: str) -> dt.time:
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


def service_day(at: dt.datetime, *, timezone: str, reset_time: str) -> dt.date:
    local = at.astimezone(ZoneInfo(timezone))
    reset = parse_reset_time(reset_time)
    # Compare wall-clock readings, not UTC offsets: "before today's reset" means yesterday's service day.
    if (local.hour, local.minute, local.second, local.microsecond) < (reset.hour, reset.minute, 0, 0):
        return local.date() - dt.timedelta(days=1)
    return local.date()


def day_start(day: dt.date, *, timezone: str, reset_time: str) -> dt.datetime:
    """The first instant (UTC) of service day `day`."""
    zone = ZoneInfo(timezone)
    reset = parse_reset_time(reset_time)
    naive = dt.datetime.combine(day, reset)
    candidate = naive.replace(tzinfo=zone, fold=0)
    utc = candidate.astimezone(dt.UTC)
    # A local time inside a spring-forward gap maps to an instant whose local reading differs: the day
    # then starts at the first instant whose service day is `day`, i.e. the end of the gap.
    if utc.astimezone(zone).replace(tzinfo=None) != naive:
        utc = _end_of_gap(naive, zone)
    return utc


def _end_of_gap(naive: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    before = naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    after = naive.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
    return max(before, after) if before != after else before


def next_reset(at: dt.datetime, *, timezone: str, reset_time: str) -> dt.datetime:
    """The instant the service day after the one containing `at` begins."""
    today = service_day(at, timezone=timezone, reset_time=reset_time)
    return day_start(today + dt.timedelta(days=1), timezone=timezone, reset_time=reset_time)
