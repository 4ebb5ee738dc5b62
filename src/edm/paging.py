"""Keyset pagination: a page request (`limit`, the id after which to continue), the opaque cursor that
carries that id between requests, and the page answer. Services take a `Page`; the web layer and the CLI
build it from what the caller typed."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from edm.errors import BadInput

T = TypeVar("T")

# Ids are 64-bit: a larger number can name nothing, and PostgreSQL would refuse to compare it.
MAX_ID = 2**63 - 1
# List pages in the console count their matches up to this many and then say "more than 10,000": an exact count
# of every match on each load grows with the data (bench/RESULTS.md (k)). Confirmations of bulk actions count exactly.
LIST_COUNT_CAP = 10_000


@dataclass(frozen=True)
class Page:
    limit: int
    after_id: int | None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))["after"]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
            raise ValueError
        return value
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise BadInput.field("cursor", "is not a valid cursor") from None


def decode_cursor_or_first(cursor: str | None) -> tuple[int | None, str | None]:
    """What a console list's `cursor` continues after, and the cursor as kept: one that does not decode (edited by hand,
    or from an older version) shows the first page rather than an error."""
    try:
        return decode_cursor(cursor), cursor
    except BadInput:
        return None, None


def page_of(items: list[Any], page: Page, *, key: str = "id") -> dict[str, Any]:
    """Items fetched with limit + 1 → one page and the cursor of the next."""
    more = len(items) > page.limit
    items = items[: page.limit]
    last = items[-1] if items else None
    last_id = (last[key] if isinstance(last, dict) else getattr(last, key)) if last is not None else None
    return {"items": items, "next_cursor": encode_cursor(last_id) if more and last_id is not None else None}


class PageOut(BaseModel, Generic[T]):
    """One page of a list answer: its items and the cursor of the next page (None on the last one)."""

    items: list[T]
    next_cursor: str | None = None


class CountedPageOut(PageOut[T], Generic[T]):
    """A page of a list that can also count every match (`include_total=true`)."""

    total: int | None = Field(default=None, description="how many items match in all; only with `include_total=true`")
