"""The suppression policy: which applied events put the recipient's address on a suppression list, and on
which one (the sending user's or the global list, as the admin settings say)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.dialect import dialect_insert
from edm.events.delivery import ADDRESS_REJECTIONS
from edm.events.records import core_execute
from edm.models.suppressions import Suppression
from edm.system.runtime_settings import RuntimeSettings
from edm.vocabulary.events import BounceClass, EventType

# The automatic suppressions. Where each goes is an admin setting (`suppression.*_scope`: user,
# global or off); the soft-bounce limit is `bounce.soft_limit`. This is its default, kept for readers.
SOFT_BOUNCE_LIMIT = 3


def suppression_for(event: Any, subtask: Any, contact: Any, runtime: RuntimeSettings) -> dict[str, Any] | None:
    """The suppression entry an applied event adds, or None. By default an unsubscribe goes to the sending
    user's list; a hard bounce, a bad or provider-suppressed address, a complaint and the soft-bounce limit go
    to the global list. A provider-suppressed address follows the hard-bounce scope."""
    trigger = _suppression_trigger(event, contact, runtime)
    if trigger is None:
        return None
    scope, reason = trigger
    return _suppression(scope, subtask, reason, event.id) if scope in ("user", "global") else None  # or "off"


def _suppression_trigger(event: Any, contact: Any, runtime: RuntimeSettings) -> tuple[str, str] | None:
    """(scope setting, reason) of the policy row an event triggers, or None."""
    bounce_class = (event.details or {}).get("bounce_class")
    kind = event.event_type
    if kind == EventType.UNSUBSCRIBED:
        return runtime.suppression_unsubscribe_scope, "unsubscribed"
    if kind == EventType.COMPLAINED:
        return runtime.suppression_complaint_scope, "complaint"
    if kind == EventType.HARD_BOUNCED and bounce_class != BounceClass.BLOCK:
        return runtime.suppression_hard_bounce_scope, "hard_bounce"
    if kind == EventType.REJECTED and bounce_class in ADDRESS_REJECTIONS:
        reason = "provider_suppressed" if bounce_class == BounceClass.SUPPRESSED else "hard_bounce"
        return runtime.suppression_hard_bounce_scope, reason
    streak = (contact.soft_bounce_streak or 0) if contact is not None else 0
    # A limit of 0 would suppress on a streak of nothing: the first soft bounce is the least that counts.
    if kind == EventType.SOFT_BOUNCED and streak >= max(runtime.bounce_soft_limit, 1):
        return runtime.suppression_soft_bounce_scope, "soft_bounce_limit"
    return None


def _suppression(scope: str, subtask: Any, reason: str, event_id: int) -> dict[str, Any]:
    owner = subtask.user_id if scope == "user" else None
    return {
        "scope": scope,
        "user_id": owner,
        "owner_key": owner or 0,
        "kind": "address",
        "value": subtask.recipient_email,
        "reason": reason,
        "source_task_id": subtask.task_id,
        "source_event_id": event_id,
    }


async def add_suppressions(session: AsyncSession, rows: list[dict[str, Any]], now: dt.datetime) -> None:
    """One insert; an address already on that list keeps its first entry (and within a batch, the entry of
    the earliest event). Rows go in key order: two batches adding the same addresses take the unique index's
    locks in one order, never waiting on each other crosswise."""
    unique: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in rows:
        unique.setdefault((row["scope"], row["owner_key"], row["value"]), row)
    if not unique:
        return
    statement = dialect_insert(session, Suppression.__table__).on_conflict_do_nothing(
        index_elements=["scope", "owner_key", "kind", "value"]
    )
    ordered = [{**unique[key], "created_at": now, "updated_at": now} for key in sorted(unique)]
    await core_execute(session, statement, ordered)
