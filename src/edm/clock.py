"""The one place that reads the wall clock, so tests can freeze or shift time without mocks."""

from __future__ import annotations

import datetime as dt

_offset = dt.timedelta(0)
_frozen: dt.datetime | None = None


def utc_now() -> dt.datetime:
    """Aware UTC now, honouring a test freeze or shift."""
    if _frozen is not None:
        return _frozen
    return dt.datetime.now(dt.UTC) + _offset


def freeze(at: dt.datetime | None) -> None:
    """Freeze the clock at `at` (aware), or unfreeze with None. Testing switch only."""
    global _frozen
    _frozen = at


def shift(by: dt.timedelta) -> None:
    """Move the clock by `by` from now on (cumulative). Testing switch only."""
    global _offset
    _offset += by


def reset() -> None:
    global _offset, _frozen
    _offset, _frozen = dt.timedelta(0), None
