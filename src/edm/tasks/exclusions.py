"""Why a recipient cannot be sent to: the one rule, read at generation and again when a SubTask is claimed.

The rule is a SQL CASE over the recipient's contact row and the suppression lists that yields the first
reason that holds, in `REASONS` order, or NULL when the recipient may be mailed. Generation reads it for
every candidate contact (the estimate counts the same rows); the claim reads it again for the pending
SubTasks it is about to send, so a contact deleted, deactivated, unsubscribed, bounced or suppressed after
generation is never mailed. Both read the contact through the `Contact` entity; the caller says where the
address, its domain and the owner come from, and how the suppression lists are searched.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, case, exists, literal, or_, select

from edm.models.contacts import Contact
from edm.models.suppressions import Suppression

# What the estimate reports and generation stores as `suppressed_reason`, in the order they are tested.
EXCLUSION_ORDER = (
    "invalid_address",
    "contact_inactive",
    "unsubscribed",
    "hard_bounced",
    "complained",
    "suppression_list",
)
# A SubTask whose contact row is gone (deleted since generation, or never had one). Only the claim can
# meet it: a candidate at generation is a contact row. Tested first, since nothing else can be read then.
# (`invalid_address` is the converse: a pending SubTask passed it at generation, so only generation meets it.)
CONTACT_DELETED = "contact_deleted"
REASONS = (CONTACT_DELETED, *EXCLUSION_ORDER)
INACTIVE_STATUSES = ("inactive", "archived")


class SuppressionLookup(StrEnum):
    """How the suppression lists are searched; which is fast depends on how many recipients are checked.

    HASHED: uncorrelated `IN (SELECT value …)` subqueries, one for addresses and one for domains. PostgreSQL
    runs each once as a hashed SubPlan and probes it per recipient: right for generation and the estimate
    (hundreds of thousands of recipients). A correlated EXISTS there (inside the CASE it cannot become an
    anti-join) probed the index per candidate: 15.7 s for 500,000 candidates against 10,000 entries, 0.7 s
    hashed (bench/RESULTS.md).

    PER_ROW: a correlated EXISTS, one probe of the value index per recipient: right for a claim (a few
    hundred SubTasks at most), whose cost then stays flat however long the lists grow, where hashing reads
    every in-force entry at each claim: the check of a 100-recipient claim against 100,000 entries took
    3–7 ms PER_ROW, 45–100 ms HASHED (bench/bench_exclusions.py)."""

    HASHED = "hashed"
    PER_ROW = "per_row"


@dataclass(frozen=True)
class Recipient:
    """Where the rule reads a recipient from: the address mailed, its domain, and the owner whose own
    suppression list applies (a constant for HASHED, which must stay uncorrelated; a column for PER_ROW)."""

    address: SQLColumnExpression[str]
    domain: SQLColumnExpression[str]
    user_id: int | SQLColumnExpression[int]


def exclusion_reason(recipient: Recipient, *, now: dt.datetime, lookup: SuppressionLookup) -> ColumnElement[Any]:
    """The first reason in `REASONS` order that holds for the recipient, or NULL when it may be mailed."""
    conditions: dict[str, ColumnElement[bool]] = {
        CONTACT_DELETED: Contact.id.is_(None),
        "invalid_address": ~recipient.address.like("%_@_%"),
        "contact_inactive": Contact.status.in_(INACTIVE_STATUSES),
        "unsubscribed": Contact.unsubscribed_at.is_not(None),
        "hard_bounced": Contact.hard_bounced_at.is_not(None),
        "complained": Contact.complained_at.is_not(None),
        "suppression_list": _suppressed(recipient, now=now, lookup=lookup),
    }
    return case(*((conditions[reason], literal(reason)) for reason in REASONS), else_=literal(None))


def _in_force(user_id: int | SQLColumnExpression[int], now: dt.datetime) -> ColumnElement[bool]:
    """Entries that apply to the owner's mail now: global or the owner's own, and not expired."""
    return and_(
        or_(Suppression.scope == "global", and_(Suppression.scope == "user", Suppression.user_id == user_id)),
        or_(Suppression.expires_at.is_(None), Suppression.expires_at > now),
    )


def _suppressed(recipient: Recipient, *, now: dt.datetime, lookup: SuppressionLookup) -> ColumnElement[bool]:
    in_force = _in_force(recipient.user_id, now)
    if lookup is SuppressionLookup.HASHED:

        def entries(kind: str) -> Any:
            return select(Suppression.value).where(in_force, Suppression.kind == kind)

        return or_(recipient.address.in_(entries("address")), recipient.domain.in_(entries("domain")))
    return exists().where(
        in_force,
        or_(
            and_(Suppression.kind == "address", Suppression.value == recipient.address),
            and_(Suppression.kind == "domain", Suppression.value == recipient.domain),
        ),
    )
