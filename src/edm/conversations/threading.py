"""Who owns an inbound message (docs/conversations.md#threading-and-owner).

1. **Threading headers.** In-Reply-To, then References newest first: an id of the form EDM generates,
   `<SubTask.public_id@service domain>` (dispatch/message.py), names a SubTask by the unique index on
   `subtasks.public_id`; it counts only when its domain is the one that SubTask was sent from (the domain of its
   `from_address`, or its recorded Message-ID). One SELECT for every candidate id. The SubTask gives the user, the
   task, the contact and our address (its `from_address`).
2. **The address it was sent to.** Its local part names a sender (`senders.local_part_lower` is unique across the
   deployment, uniquely indexed), and its domain is one of the email services' domains: the sender's user owns it.
3. Otherwise the message is **unrouted** (admins only).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from edm.models.content import Sender
from edm.models.email_services import EmailService
from edm.models.tasks import SubTask, Task

MAX_CANDIDATES = 50


@dataclasses.dataclass(frozen=True, slots=True)
class ThreadMatch:
    subtask_id: int
    public_id: uuid.UUID
    task_id: int
    task_kind: str
    user_id: int
    contact_id: int | None
    our_address: str | None  # the SubTask's from_address
    matched_id: str  # the Message-ID that matched


@dataclasses.dataclass(frozen=True, slots=True)
class AddressOwner:
    user_id: int
    our_address: str  # normalized


def key_of(message_id: str) -> tuple[uuid.UUID, str] | None:
    """`<uuid>@<domain>` → (uuid, domain lower-cased), else None."""
    local, at, domain = message_id.strip().strip("<>").rpartition("@")
    if not at or not domain:
        return None
    try:
        key = uuid.UUID(local)
    except ValueError:
        return None
    return key, _ascii_lower(domain)


async def match_thread(session: AsyncSession, ids: Sequence[str]) -> ThreadMatch | None:
    """The SubTask the best candidate id names (In-Reply-To first, then References newest first), or None."""
    candidates: list[tuple[str, uuid.UUID, str]] = []
    for message_id in ids[:MAX_CANDIDATES]:
        parsed = key_of(message_id)
        if parsed is not None:
            candidates.append((message_id, *parsed))
    if not candidates:
        return None
    rows = (
        await session.execute(
            select(
                SubTask.id,
                SubTask.public_id,
                SubTask.task_id,
                SubTask.user_id,
                SubTask.contact_id,
                SubTask.from_address,
                SubTask.message_id,
                Task.kind,
            )
            .join(Task, Task.id == SubTask.task_id)
            .where(SubTask.public_id.in_([key for _, key, _ in candidates]))
        )
    ).all()
    by_key = {row.public_id: row for row in rows}
    for message_id, key, domain in candidates:
        row = by_key.get(key)
        if row is None or not _sent_from(row.from_address, row.message_id, domain):
            continue
        return ThreadMatch(
            subtask_id=row.id,
            public_id=row.public_id,
            task_id=row.task_id,
            task_kind=row.kind,
            user_id=row.user_id,
            contact_id=row.contact_id,
            our_address=row.from_address.strip().lower() if row.from_address else None,
            matched_id=message_id,
        )
    return None


async def owner_by_address(session: AsyncSession, recipient: str | None) -> tuple[AddressOwner | None, str]:
    """(the owner, "") when `recipient` names a sender at one of our domains, else (None, the reason)."""
    if not recipient or "@" not in recipient:
        return None, "no_recipient"
    local, _, domain = recipient.strip().rpartition("@")
    local_lower = local.lower()
    if "+" in local_lower:  # sub-addressing: news+anything@ still names the sender `news`
        local_lower = local_lower.split("+", 1)[0]
    if not local_lower or len(local_lower) > 64:
        return None, "unknown_sender"
    user_id = await session.scalar(select(Sender.user_id).where(Sender.local_part_lower == local_lower).limit(1))
    if user_id is None:
        return None, "unknown_sender"
    ascii_domain = _ascii_lower(domain)
    ours = await session.scalar(select(EmailService.id).where(func.lower(EmailService.domain) == ascii_domain).limit(1))
    if ours is None:
        return None, "foreign_domain"
    return AddressOwner(user_id=int(user_id), our_address=f"{local.lower()}@{ascii_domain}"), ""


def _sent_from(from_address: str | None, recorded_id: str | None, domain: str) -> bool:
    if recorded_id:
        recorded = key_of(recorded_id)
        if recorded is not None and recorded[1] == domain:
            return True
    if from_address and "@" in from_address:
        return _ascii_lower(from_address.rpartition("@")[2]) == domain
    return False


def _ascii_lower(domain: str) -> str:
    text = domain.strip().rstrip(".").lower()
    if text.isascii():
        return text
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return text
