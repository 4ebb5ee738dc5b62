"""Suppression lists (docs/suppression.md): each user's own list and the admins' global list.

An entry blocks one address or a whole domain, for good or until `expires_at`. Generation and the claim-time
check read the table directly (`tasks/recipients.py`, `dispatch/queue.py`); this module is how people manage
it: list, add, remove (audited, and clearing the contact flag, for unsubscribes and complaints), check, and
CSV import/export. Every function takes the caller's session and flushes; the entry point commits.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.addresses import normalize_email
from edm.db.dialect import dialect_insert, escape_like
from edm.errors import BadInput, Conflict, NotFound
from edm.models.contacts import Contact, ContactStatus
from edm.models.suppressions import Suppression
from edm.paging import Page
from edm.system.service import Actor, audit

KINDS = ("address", "domain")
REASONS = ("unsubscribed", "hard_bounce", "soft_bounce_limit", "complaint", "provider_suppressed", "manual", "import")
# Removing these needs a reason, is audited and clears the contact flag the same event set
# (docs/suppression.md#removing-an-unsubscribe-or-a-complaint).
FLAG_OF_REASON = {"unsubscribed": "unsubscribed_at", "complaint": "complained_at"}
NOTE_LIMIT, REASON_LIMIT = 500, 500
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_BLOCKING_STATUSES = (ContactStatus.INACTIVE, ContactStatus.ARCHIVED)


@dataclass(frozen=True)
class SuppressionList:
    """Which list: the global one, or one user's."""

    scope: str  # global | user
    user_id: int | None = None

    @classmethod
    def of_user(cls, user_id: int) -> SuppressionList:
        return cls("user", user_id)

    @property
    def owner_key(self) -> int:
        return self.user_id or 0

    def holds(self) -> list[Any]:
        return [Suppression.scope == self.scope, Suppression.owner_key == self.owner_key]


GLOBAL = SuppressionList("global")


@dataclass(frozen=True)
class NewEntry:
    """A validated entry to add: kind and normalized value, plus the optional note and expiry."""

    kind: str
    value: str
    note: str | None = None
    expires_at: dt.datetime | None = None


# --------------------------------------------------------------------------------------------------------
# Validation (shared by the API, the CLI and the CSV import)
# --------------------------------------------------------------------------------------------------------


def normalize_domain(value: str, *, field: str = "domain") -> str:
    """Lower-case IDNA ASCII, as contact addresses store their domain (a leading `@` is allowed)."""
    text = (value or "").strip().removeprefix("@").rstrip(".")
    try:
        domain = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise BadInput.field(field, f"{text[:100]!r} is not a valid domain") from None
    labels = domain.split(".")
    if len(labels) < 2 or len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadInput.field(field, f"{text[:100]!r} is not a valid domain")
    return domain


def new_entry(
    *,
    email: str | None,
    domain: str | None,
    note: str | None = None,
    expires_at: dt.datetime | None = None,
    now: dt.datetime,
) -> NewEntry:
    """Exactly one of `email` or `domain`; the note at most 500 characters; an expiry in the future."""
    email, domain = (email or "").strip() or None, (domain or "").strip() or None
    if (email is None) == (domain is None):
        raise BadInput.field("email", "give either an email or a domain")
    for name, text in (("email", email), ("domain", domain), ("note", note)):
        if text is not None and "\x00" in text:
            raise BadInput.field(name, "must not contain NUL characters")
    if note is not None and len(note) > NOTE_LIMIT:
        raise BadInput.field("note", f"at most {NOTE_LIMIT} characters")
    if expires_at is not None and expires_at <= now:
        raise BadInput.field("expires_at", "must be in the future")
    if email is not None:
        return NewEntry("address", _address(email), note or None, expires_at)
    return NewEntry("domain", normalize_domain(domain or ""), note or None, expires_at)


def _address(email: str) -> str:
    if len(email) > 320:
        raise BadInput.field("email", "is not a valid email address")
    return normalize_email(email, field="email").normalized


def guess_entry(
    value: str, *, note: str | None = None, expires_at: dt.datetime | None = None, now: dt.datetime
) -> NewEntry:
    """An address when the value has an `@` after its first character, else a domain (the CLI's form)."""
    text = value.strip()
    if "@" in text[1:]:
        return new_entry(email=text, domain=None, note=note, expires_at=expires_at, now=now)
    return new_entry(email=None, domain=text, note=note, expires_at=expires_at, now=now)


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryFilter:
    kind: str | None = None
    reasons: tuple[str, ...] = ()
    q: str | None = None  # substring of the value or the note
    expired: bool | None = None  # None: all; False: in force; True: expired only


def entry_conditions(lst: SuppressionList, filters: EntryFilter, now: dt.datetime) -> list[Any]:
    conditions = lst.holds()
    if filters.kind:
        conditions.append(Suppression.kind == filters.kind)
    if filters.reasons:
        conditions.append(Suppression.reason.in_(filters.reasons))
    if filters.q and filters.q.strip():
        pattern = f"%{escape_like(filters.q.strip().lower())}%"
        conditions.append(
            or_(Suppression.value.like(pattern, escape="\\"), func.lower(Suppression.note).like(pattern, escape="\\"))
        )
    if filters.expired is True:
        conditions.append(Suppression.expires_at <= now)
    elif filters.expired is False:
        conditions.append(in_force(now))
    return conditions


def in_force(now: dt.datetime) -> Any:
    return or_(Suppression.expires_at.is_(None), Suppression.expires_at > now)


async def list_entries(
    session: AsyncSession, lst: SuppressionList, *, page: Page, filters: EntryFilter, now: dt.datetime
) -> list[Suppression]:
    """One page by id ascending (limit + 1 rows, for the next cursor)."""
    query = (
        select(Suppression)
        .where(*entry_conditions(lst, filters, now), Suppression.id > (page.after_id or 0))
        .order_by(Suppression.id)
        .limit(page.limit + 1)
    )
    return list(await session.scalars(query))


async def count_entries(session: AsyncSession, lst: SuppressionList, *, filters: EntryFilter, now: dt.datetime) -> int:
    query = select(func.count()).select_from(Suppression).where(*entry_conditions(lst, filters, now))
    return int(await session.scalar(query) or 0)


async def get_entry(session: AsyncSession, lst: SuppressionList, entry_id: int) -> Suppression:
    """The list's entry, or 404 (another user's entry is "not found": existence is not leaked)."""
    found = await session.scalar(select(Suppression).where(*lst.holds(), Suppression.id == entry_id))
    if found is None:
        raise NotFound(f"suppression {entry_id} not found")
    return found


async def find_entry(session: AsyncSession, lst: SuppressionList, entry: NewEntry) -> Suppression:
    """The list's entry for this address or domain, or 404."""
    found = await session.scalar(
        select(Suppression).where(*lst.holds(), Suppression.kind == entry.kind, Suppression.value == entry.value)
    )
    if found is None:
        raise NotFound(f"{entry.value} is not on this list")
    return found


# --------------------------------------------------------------------------------------------------------
# Adding
# --------------------------------------------------------------------------------------------------------


async def insert_entries(
    session: AsyncSession,
    lst: SuppressionList,
    entries: Sequence[NewEntry],
    *,
    reason: str,
    created_by: int | None,
    now: dt.datetime,
) -> list[int]:
    """Insert the entries; one already on the list is left alone unless it has expired, in which case it is
    renewed (it becomes this new entry). Returns the ids of the entries added or renewed."""
    if not entries:
        return []
    rows = [
        {
            "scope": lst.scope,
            "user_id": lst.user_id,
            "owner_key": lst.owner_key,
            "kind": e.kind,
            "value": e.value,
            "reason": reason,
            "note": e.note,
            "expires_at": e.expires_at,
            "created_by": created_by,
            "source_task_id": None,
            "source_event_id": None,
            "created_at": now,
            "updated_at": now,
        }
        for e in entries
    ]
    statement = dialect_insert(session, Suppression).values(rows)
    renewed = {
        name: statement.excluded[name]
        for name in (
            "reason",
            "note",
            "expires_at",
            "created_by",
            "source_task_id",
            "source_event_id",
            "created_at",
            "updated_at",
        )
    }
    table = Suppression.__table__
    statement = statement.on_conflict_do_update(
        index_elements=["scope", "owner_key", "kind", "value"],
        set_=renewed,
        where=and_(table.c.expires_at.is_not(None), table.c.expires_at <= now),
    ).returning(table.c.id)
    return list((await session.execute(statement)).scalars())


async def add_entry(
    session: AsyncSession,
    lst: SuppressionList,
    entry: NewEntry,
    *,
    reason: str = "manual",
    actor: Actor,
    now: dt.datetime,
) -> Suppression:
    """Add one entry; 409 with the existing id when the list already holds it (in force)."""
    ids = await insert_entries(session, lst, [entry], reason=reason, created_by=actor.user_id, now=now)
    if not ids:
        existing = await session.scalar(
            select(Suppression.id).where(*lst.holds(), Suppression.kind == entry.kind, Suppression.value == entry.value)
        )
        raise Conflict(
            f"{entry.value} is already on this list",
            existing_id=existing,
            details=[{"field": "email" if entry.kind == "address" else "domain", "message": "already on this list"}],
        )
    if lst.scope == "global":
        await audit(
            session,
            actor,
            "suppression.add",
            target_type="suppression",
            target_id=ids[0],
            details={"scope": "global", "kind": entry.kind, "value": entry.value},
        )
    return await get_entry_fresh(session, lst, ids[0])


async def get_entry_fresh(session: AsyncSession, lst: SuppressionList, entry_id: int) -> Suppression:
    """The entry as stored now (an upsert bypasses the identity map, so a cached copy may be stale)."""
    entry = await get_entry(session, lst, entry_id)
    await session.refresh(entry)
    return entry


# --------------------------------------------------------------------------------------------------------
# Removing
# --------------------------------------------------------------------------------------------------------


async def remove_entry(
    session: AsyncSession, lst: SuppressionList, entry_id: int, *, reason: str | None, actor: Actor
) -> int:
    """Delete an entry. An `unsubscribed` or `complaint` entry needs a reason; its removal also clears that
    flag on the matching contacts (the user's own for a user list, every user's for the global list, since
    one global entry stands for all of them). Every removal is audited. Returns the contacts cleared."""
    entry = await get_entry(session, lst, entry_id)
    reason = (reason or "").strip() or None
    flag = FLAG_OF_REASON.get(entry.reason)
    if flag is not None and reason is None:
        raise BadInput.field("reason", f"removing an entry of reason {entry.reason!r} needs a reason")
    if reason is not None and (len(reason) > REASON_LIMIT or "\x00" in reason):
        raise BadInput.field("reason", f"at most {REASON_LIMIT} characters, no NUL")
    cleared = await _clear_contact_flag(session, entry, flag) if flag is not None else 0
    await session.execute(delete(Suppression).where(Suppression.id == entry.id))
    await audit(
        session,
        actor,
        "suppression.remove",
        target_type="suppression",
        target_id=entry.id,
        details={
            "scope": entry.scope,
            "user_id": entry.user_id,
            "kind": entry.kind,
            "value": entry.value,
            "entry_reason": entry.reason,
            "reason": reason,
            "contacts_cleared": cleared,
        },
    )
    return cleared


async def _clear_contact_flag(session: AsyncSession, entry: Suppression, flag: str) -> int:
    if entry.kind != "address":
        return 0
    conditions = [Contact.email_normalized == entry.value, getattr(Contact, flag).is_not(None)]
    if entry.scope == "user":
        conditions.append(Contact.user_id == entry.user_id)
    result = await session.execute(
        update(Contact).where(*conditions).values({flag: None}).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --------------------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """Whether an address is blocked for a user (or on the global list), and by what."""

    email: str
    entries: list[Suppression] = field(default_factory=list)
    contact: Contact | None = None
    contact_reasons: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return bool(self.entries or self.contact_reasons)


async def check(session: AsyncSession, email: str, *, user_id: int | None, now: dt.datetime) -> CheckResult:
    """The entries in force that block `email` for `user_id` (theirs and the global list's, address or domain),
    plus the contact flags that would also exclude it. With `user_id=None`: the global list alone."""
    if len(email) > 320:
        raise BadInput.field("email", "is not a valid email address")
    address = normalize_email(email, field="email")
    lists = [GLOBAL.holds()] + ([SuppressionList.of_user(user_id).holds()] if user_id is not None else [])
    query = (
        select(Suppression)
        .where(
            or_(*(and_(*holds) for holds in lists)),
            or_(
                and_(Suppression.kind == "address", Suppression.value == address.normalized),
                and_(Suppression.kind == "domain", Suppression.value == address.domain),
            ),
            in_force(now),
        )
        .order_by(Suppression.scope.desc(), Suppression.id)
    )  # the user's own entries first
    result = CheckResult(address.normalized, list(await session.scalars(query)))
    if user_id is not None:
        result.contact = await session.scalar(
            select(Contact).where(Contact.user_id == user_id, Contact.email_normalized == address.normalized)
        )
        result.contact_reasons = contact_reasons(result.contact)
    return result


def contact_reasons(contact: Contact | None) -> list[str]:
    """The contact's own exclusions, named as generation names them (docs/tasks.md#selection-and-the-estimate)."""
    if contact is None:
        return []
    flags = [
        ("contact_inactive", contact.status in _BLOCKING_STATUSES),
        ("unsubscribed", contact.unsubscribed_at is not None),
        ("hard_bounced", contact.hard_bounced_at is not None),
        ("complained", contact.complained_at is not None),
    ]
    return [name for name, on in flags if on]
