"""Answering from EDM (docs/conversations-answers.md): an answer in a conversation, a conversation started with a
contact, a failed answer sent again, and the service an answer would go through.

An answer is an outbound ConversationMessage plus a task of kind `reply` with one SubTask, created already `queued`
in one transaction with a `charge` of 1 credit, as template test sends are (tasks/proof_sends.py). From there it is
ordinary work: the claim takes it before bulk SubTasks of the same service, with the same rate slots, quota,
concurrency, retries and failover; the composer sends the message as written (no template, no tracking, no
List-Unsubscribe, no footer) with In-Reply-To and References; the record path copies the send onto the message
and the conversation (dispatch/queue/replies.py); the finalize job completes the task.

Which service sends it is decided here and stored as the task's `allowed_service_ids`, the restriction the claim
already honours: the conversation's last service while it is usable, else the usable services of the same domain
(the From address stays the same), else any usable service (the From domain changes: `answer_route` says so).
`widen_stranded` (the worker's `answers` job) moves an answer whose preferred services all became unusable to the
next tier, so a frozen or exhausted service never strands it.

Services: they flush, the entry point commits. No network call is made here.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edm.conversations import service
from edm.db.dialect import escape_like
from edm.dispatch import allocation, queue
from edm.errors import BadInput, Conflict, InsufficientCredit, NotFound
from edm.models.contacts import Contact
from edm.models.content import Sender
from edm.models.conversations import Conversation, ConversationMessage
from edm.models.email_services import EmailService, UserServiceMapping
from edm.models.tasks import SendAttempt, SubTask, Task, TaskStatusChange
from edm.models.users import LedgerKind
from edm.system import runtime_settings
from edm.tasks.exclusions import Recipient, SuppressionLookup, exclusion_reason
from edm.users.credit import apply_credit, lock_user
from edm.vocabulary.tasks import OPEN_SEND_STATES, SendState, TaskKind, TaskStatus

KIND = TaskKind.REPLY
CREDIT_PER_ANSWER = 1
MAX_TEXT = 100_000  # characters of an answer's text part
MAX_HTML = 500_000  # characters of an answer's HTML part
MAX_SUBJECT = 998
REFERENCES_KEPT = 10  # the first id and the last 10 (RFC 5322 §3.6.4 lets a client shorten References)
RUNNING = (TaskStatus.QUEUED, TaskStatus.SENDING)

# Reply and forward prefixes, also localized ones (Outlook's AW:/SV:/Antw:, numbered Re[2]:), repeated or not.
_PREFIXES = re.compile(r"^(?:\s*(?:re|fwd?|aw|sv|antw|wg)\s*(?:\[\d+\])?\s*[:：]\s*)+", re.IGNORECASE)
# A Message-ID as threading headers may carry it again: printable ASCII, no brackets or spaces, with an @.
_MESSAGE_ID = re.compile(r"[!-;=?-~]{1,398}@[!-;=?-~]{1,398}")


class HasId(Protocol):
    """The acting user: the API's caller, the CLI's user row."""

    @property
    def id(self) -> int: ...


class NoSender(BadInput):
    """422: none of the user's senders has the local part of the conversation's address."""


# ---- which service sends ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """The service an answer goes through now, and whether its From keeps the conversation's domain.

    `allowed_service_ids` is what the reply task is restricted to (None: any service of the user). `tier` is
    `last_service`, `same_domain`, `other_domain` or `none` (nothing can send now: the answer waits)."""

    tier: str
    service_id: int | None
    service_label: str | None
    domain: str | None
    same_domain: bool
    allowed_service_ids: list[int] | None
    our_domain: str
    warning: str | None = None
    usable: list[int] = field(default_factory=list)

    def view(self, local_part: str) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "service_id": self.service_id,
            "service": self.service_label,
            "domain": self.domain,
            "from_address": f"{local_part}@{self.domain or self.our_domain}",
            "same_domain": self.same_domain,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class _Usable:
    """The user's services that take work now or when their slot comes, best first (priority, then id)."""

    services: list[EmailService]
    sending_paused: bool

    def ids(self) -> list[int]:
        return [s.id for s in self.services]


async def _usable(session: AsyncSession, user_id: int, now: dt.datetime) -> _Usable:
    """The services mapped to the user that are in the claim's available pool (enabled, not frozen, throttled,
    exhausted or at quota; backups only when no primary is available; for `priority` the best tier)."""
    runtime = await runtime_settings.load(session)
    snapshots = await queue.snapshot_services(session, now=now)
    return _usable_of(snapshots, await _mapped(session, [user_id]), user_id, runtime)


def _usable_of(
    snapshots: Sequence[queue.ServiceSnapshot],
    mapped: dict[int, set[int]],
    user_id: int,
    runtime: runtime_settings.RuntimeSettings,
) -> _Usable:
    views = [queue.service_view(s) for s in snapshots]
    pool = {v.service_id for v in allocation.available_pool(views, runtime.strategy)}
    mine = mapped.get(user_id, set())
    services = [s.service for s in snapshots if s.service.id in pool and s.service.id in mine]
    services.sort(key=lambda s: (s.priority, s.id))
    return _Usable(services, runtime.sending_paused)


async def _mapped(session: AsyncSession, user_ids: Iterable[int]) -> dict[int, set[int]]:
    rows = await session.execute(
        select(UserServiceMapping.user_id, UserServiceMapping.service_id).where(
            UserServiceMapping.user_id.in_(list(user_ids)), UserServiceMapping.is_active.is_(True)
        )
    )
    out: dict[int, set[int]] = {}
    for user_id, service_id in rows.all():
        out.setdefault(user_id, set()).add(service_id)
    return out


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _choose(
    usable: _Usable, *, our_address: str, last_service_id: int | None, exclude: frozenset[int] = frozenset()
) -> Route:
    """The product rule: the last service if usable, else a usable service of the same domain, else any usable
    service (with a warning: the From domain changes). Services in `exclude` (where a retried answer failed)
    are passed over while another one is usable."""
    our_domain = domain_of(our_address)
    services = [s for s in usable.services if s.id not in exclude] or usable.services
    by_id = {s.id: s for s in services}
    same = [s for s in services if s.domain.lower() == our_domain]
    paused = " Sending is paused by an admin: the answer is sent when it resumes." if usable.sending_paused else ""
    if last_service_id in by_id and by_id[last_service_id].domain.lower() == our_domain:
        chosen = by_id[last_service_id]
        return Route(
            "last_service", chosen.id, chosen.label, chosen.domain, True, [chosen.id], our_domain,
            paused.strip() or None, usable.ids(),
        )  # fmt: skip
    if same:
        return Route(
            "same_domain", same[0].id, same[0].label, same[0].domain, True, sorted(s.id for s in same), our_domain,
            paused.strip() or None, usable.ids(),
        )  # fmt: skip
    if services:
        chosen = services[0]
        others = sorted(s.id for s in services)
        warning = (
            f"no usable service sends from {our_domain}: this answer goes from {chosen.domain} instead, "
            f"so its From address changes domain ({our_address} → …@{chosen.domain})." + paused
        )
        return Route(
            "other_domain", chosen.id, chosen.label, chosen.domain, False, others if exclude else None, our_domain,
            warning, usable.ids(),
        )  # fmt: skip
    return Route(
        "none", None, None, None, False, None, our_domain,
        "no sending service can send for you now: the answer is queued and waits until one can "
        "(its From domain may then differ)." + paused,
    )  # fmt: skip


async def answer_route(session: AsyncSession, caller: HasId, conversation_id: int, now: dt.datetime) -> dict[str, Any]:
    """The service an answer in this conversation would go through now, its From address, whether it keeps the
    conversation's domain, and the warning to show when it does not (404 for another user's conversation)."""
    conversation = await service.get_conversation(session, user_id=caller.id, conversation_id=conversation_id)
    sender = await _sender_for(session, caller.id, conversation.our_address)
    route = _choose(
        await _usable(session, caller.id, now),
        our_address=conversation.our_address,
        last_service_id=conversation.last_service_id,
    )
    view = route.view(sender.local_part)
    return {"conversation_id": conversation.id, "our_address": conversation.our_address, **view}


# ---- queueing ----------------------------------------------------------------------------------------------


def clean_subject(subject: str) -> str:
    """The subject without reply/forward prefixes and line breaks."""
    one_line = " ".join(subject.split())
    return _PREFIXES.sub("", one_line).strip()


def reply_subject(subject: str) -> str:
    """`Re: ` + the cleaned subject: never `Re: Re:`."""
    cleaned = clean_subject(subject)
    return f"Re: {cleaned}"[:MAX_SUBJECT] if cleaned else "Re:"


def _message_ids(value: str | None) -> list[str]:
    """The ids of a References / Message-ID value (angle brackets or not, spaces or not), valid ones only."""
    if not value:
        return []
    found = re.findall(r"<([^<>]*)>", value) or value.split()
    return [i.strip() for i in found if _MESSAGE_ID.fullmatch(i.strip())]


def references_for(parent: ConversationMessage | None) -> tuple[str | None, str | None]:
    """(In-Reply-To, References) of an answer to `parent`: its Message-ID, and its References + its Message-ID
    keeping the first id and the last 10 (a long thread's header stays short; the root stays known)."""
    if parent is None:
        return None, None
    own = _message_ids(parent.message_id)
    ids = [i for i in _message_ids(parent.references) if i not in own] + own
    deduped: list[str] = []
    for i in ids:
        if i not in deduped:
            deduped.append(i)
    if len(deduped) > REFERENCES_KEPT + 1:
        deduped = [deduped[0], *deduped[-REFERENCES_KEPT:]]
    return (own[0] if own else None), (" ".join(deduped) or None)


def _check_body(text: str, html: str | None) -> tuple[str, str | None]:
    if not isinstance(text, str) or not text.strip():
        raise BadInput.field("text", "write the answer's text")
    if len(text) > MAX_TEXT:
        raise BadInput.field("text", f"at most {MAX_TEXT} characters")
    if html is not None and not html.strip():
        html = None
    if html is not None and len(html) > MAX_HTML:
        raise BadInput.field("html", f"at most {MAX_HTML} characters")
    for name, value in (("text", text), ("html", html or "")):
        if "\x00" in value:
            raise BadInput.field(name, "must not contain NUL characters")
    return text, html


async def reply(
    session: AsyncSession,
    caller: HasId,
    conversation_id: int,
    text: str,
    html: str | None = None,
    *,
    now: dt.datetime,
    message_id: int | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Queue an answer in the conversation, to its outside address, from its address (the sender whose local part
    it has), `Re: ` + the subject, threaded to `message_id` (a message of this conversation) or else to its newest
    inbound message. 1 credit (409 `insufficient_credit`); 404 for another user's conversation."""
    text, html = _check_body(text, html)
    conversation = await service.get_conversation(session, user_id=caller.id, conversation_id=conversation_id)
    sender = await _sender_for(session, caller.id, conversation.our_address)
    parent = await _parent(session, conversation, message_id)
    route = _choose(
        await _usable(session, caller.id, now),
        our_address=conversation.our_address,
        last_service_id=conversation.last_service_id,
    )
    in_reply_to, references = references_for(parent)
    subject = reply_subject(conversation.subject or (parent.subject if parent else ""))
    message = await _queue(
        session,
        conversation=conversation,
        sender=sender,
        route=route,
        subject=subject,
        text=text,
        html=html,
        in_reply_to=in_reply_to,
        references=references,
        now=now,
        actor=actor or str(caller.id),
    )
    return await describe(session, message, route=route)


async def start(
    session: AsyncSession,
    caller: HasId,
    contact_id: int,
    sender_id: int,
    subject: str,
    text: str,
    html: str | None = None,
    *,
    now: dt.datetime,
    actor: str | None = None,
) -> dict[str, Any]:
    """Start a conversation with one of the caller's contacts from one of the caller's senders and queue its first
    message, sent for real like any answer (1 credit). The conversation of (user, our address, their address) is
    reused when it exists. 422 for a contact or sender that is not the caller's, or a contact that may not be
    mailed (unsubscribed, bounced, complained, inactive, suppressed)."""
    text, html = _check_body(text, html)
    subject_clean = " ".join((subject or "").split())
    if not subject_clean:
        raise BadInput.field("subject", "write a subject")
    if len(subject_clean) > MAX_SUBJECT:
        raise BadInput.field("subject", f"at most {MAX_SUBJECT} characters")
    if "\x00" in subject_clean:
        raise BadInput.field("subject", "must not contain NUL characters")
    contact = await session.scalar(select(Contact).where(Contact.id == contact_id, Contact.user_id == caller.id))
    if contact is None:
        raise BadInput.field("contact_id", f"not found: {contact_id}")
    reason = await _unsendable(session, contact, now)
    if reason is not None:
        raise BadInput.field("contact_id", f"this contact may not be mailed: {reason}")
    sender = await session.scalar(
        select(Sender).where(Sender.id == sender_id, Sender.user_id == caller.id, Sender.archived_at.is_(None))
    )
    if sender is None:
        raise BadInput.field("sender_id", f"not found: {sender_id}")
    usable = await _usable(session, caller.id, now)
    their_address = contact.email_normalized
    conversation = await _existing(session, caller.id, sender, their_address)
    if conversation is None:
        domain = await _start_domain(session, caller.id, usable)
        conversation = await _create_conversation(
            session,
            user_id=caller.id,
            our_address=f"{sender.local_part_lower}@{domain}",
            their_address=their_address,
            their_name=contact.name,
            contact_id=contact.id,
            subject=clean_subject(subject_clean),
            now=now,
        )
    route = _choose(usable, our_address=conversation.our_address, last_service_id=conversation.last_service_id)
    message = await _queue(
        session,
        conversation=conversation,
        sender=sender,
        route=route,
        subject=subject_clean,
        text=text,
        html=html,
        in_reply_to=None,
        references=None,
        now=now,
        actor=actor or str(caller.id),
    )
    return await describe(session, message, route=route)


async def retry(
    session: AsyncSession,
    caller: HasId,
    message_id: int,
    *,
    now: dt.datetime,
    conversation_id: int | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Send a failed answer again: a new attempt of the same message, as a new `reply` task with a new SubTask
    (new Message-ID) that the message now names; 1 credit. Routed like a new answer, passing over the services
    it failed on while another is usable. 409 unless its send failed (a sent, pending or uncertain answer is
    never sent twice); 404 for another user's message."""
    message = await session.scalar(
        select(ConversationMessage)
        .where(
            ConversationMessage.id == message_id,
            ConversationMessage.user_id == caller.id,
            ConversationMessage.direction == "outbound",
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if message is None or (conversation_id is not None and message.conversation_id != conversation_id):
        raise NotFound(f"message {message_id} not found")
    subtask = (
        await session.get(SubTask, message.subtask_id, populate_existing=True, with_for_update=True)
        if message.subtask_id
        else None
    )
    state = subtask.send_state if subtask is not None else None
    if state != SendState.FAILED:
        hint = {
            SendState.SENT: "it was sent",
            SendState.UNCERTAIN: "it may have been sent (the provider's answer was lost); wait for its events",
            SendState.PENDING: "it is waiting to be sent",
            SendState.ALLOCATED: "it is being sent",
        }.get(SendState(state) if state else SendState.CANCELLED, f"its state is {state}")
        raise Conflict(f"only a failed answer can be sent again: {hint}", send_state=state)
    assert subtask is not None
    conversation = await service.get_conversation(session, user_id=caller.id, conversation_id=message.conversation_id)
    sender = await _sender_for(session, caller.id, conversation.our_address)
    failed_on: set[int] = {
        i
        for i in await session.scalars(
            select(SendAttempt.service_id).where(SendAttempt.subtask_id == subtask.id).distinct()
        )
        if i is not None
    }
    if subtask.service_id is not None:
        failed_on.add(subtask.service_id)
    route = _choose(
        await _usable(session, caller.id, now),
        our_address=conversation.our_address,
        last_service_id=conversation.last_service_id,
        exclude=frozenset(failed_on),
    )
    task, new_subtask = await _reply_task(
        session,
        conversation=conversation,
        sender=sender,
        route=route,
        subject=message.subject,
        now=now,
        actor=actor or str(caller.id),
        extra_rule={"message_id": message.id, "retry_of_task_id": subtask.task_id},
    )
    domain = route.domain or route.our_domain
    message.task_id, message.subtask_id = task.id, new_subtask.id
    message.message_id = f"{new_subtask.public_id}@{domain}"
    message.from_address = f"{sender.local_part}@{domain}"
    message.service_id = None
    await session.flush()
    await _charge(session, caller.id, task.id, f"answer {message.id} sent again in conversation {conversation.id}")
    return await describe(session, message, route=route)


async def _queue(
    session: AsyncSession,
    *,
    conversation: Conversation,
    sender: Sender,
    route: Route,
    subject: str,
    text: str,
    html: str | None,
    in_reply_to: str | None,
    references: str | None,
    now: dt.datetime,
    actor: str,
) -> ConversationMessage:
    task, subtask = await _reply_task(
        session, conversation=conversation, sender=sender, route=route, subject=subject, now=now, actor=actor
    )
    domain = route.domain or route.our_domain
    message = ConversationMessage(
        conversation_id=conversation.id,
        user_id=conversation.user_id,
        direction="outbound",
        subtask_id=subtask.id,
        task_id=task.id,
        message_id=f"{subtask.public_id}@{domain}",
        in_reply_to=in_reply_to,
        references=references,
        from_address=f"{sender.local_part}@{domain}",
        from_name=sender.display_name,
        to_address=conversation.their_address,
        subject=subject,
        text_body=text,
        html_body=html,
        is_auto_reply=False,
        created_at=now,
    )
    session.add(message)
    await session.flush()
    task.recipient_rule = {**(task.recipient_rule or {}), "message_id": message.id}
    conversation.updated_at = now
    await session.flush()
    await _charge(session, conversation.user_id, task.id, f"answer {message.id} in conversation {conversation.id}")
    return message


async def _reply_task(
    session: AsyncSession,
    *,
    conversation: Conversation,
    sender: Sender,
    route: Route,
    subject: str,
    now: dt.datetime,
    actor: str,
    extra_rule: dict[str, Any] | None = None,
) -> tuple[Task, SubTask]:
    """The `reply` task, queued, with its one SubTask to the conversation's outside address."""
    user = await lock_user(session, conversation.user_id)
    if user.credit_balance < CREDIT_PER_ANSWER:  # refused before anything is written (apply_credit checks again)
        raise InsufficientCredit(
            f"insufficient credit: an answer costs {CREDIT_PER_ANSWER}, available {user.credit_balance}",
            needed=CREDIT_PER_ANSWER,
            available=user.credit_balance,
        )
    task = Task(
        user_id=conversation.user_id,
        kind=KIND,
        name=f"Answer: {subject}"[:200],
        status=TaskStatus.QUEUED,
        sender_id=sender.id,
        timezone=user.timezone or "UTC",
        priority=9,
        track_opens=False,
        track_clicks=False,
        schedule_at=now,
        generated_at=now,
        threshold_window_started_at=now,
        allowed_service_ids=route.allowed_service_ids,
        recipient_rule={
            "type": KIND,
            "conversation_id": conversation.id,
            "our_domain": route.our_domain,
            "route": route.tier,
            **(extra_rule or {}),
        },
        generation_summary={"recipients": 1, "sendable": 1},
    )
    session.add(task)
    await session.flush()
    session.add(
        TaskStatusChange(
            task_id=task.id, from_status=None, to_status=TaskStatus.QUEUED, reason="answer", actor=actor, at=now
        )
    )
    subtask = SubTask(
        public_id=uuid.uuid4(),
        task_id=task.id,
        user_id=conversation.user_id,
        contact_id=conversation.contact_id,
        recipient_email=conversation.their_address,
        task_template_id=None,
        seq=1,
        send_state=SendState.PENDING,
        charged=True,
        attempts=0,
        retryable_failures=0,
        next_attempt_at=now,
    )
    session.add(subtask)
    await session.flush()
    return task, subtask


async def _charge(session: AsyncSession, user_id: int, task_id: int, reason: str) -> None:
    """1 credit when queued, like a test send; not refunded when the send fails (a retry is a new send)."""
    await apply_credit(
        session, user_id=user_id, kind=LedgerKind.CHARGE, amount=-CREDIT_PER_ANSWER, reason=reason, task_id=task_id
    )


# ---- lookups -----------------------------------------------------------------------------------------------


async def _sender_for(session: AsyncSession, user_id: int, our_address: str) -> Sender:
    """The user's sender whose local part is the address's (local parts are unique across the deployment)."""
    local = our_address.rpartition("@")[0].lower()
    sender = await session.scalar(
        select(Sender)
        .where(Sender.user_id == user_id, Sender.local_part_lower == local)
        .order_by(Sender.archived_at.is_not(None), Sender.id)
        .limit(1)
    )
    if sender is None:
        raise NoSender(
            f"none of your senders sends as {local}@…: create a sender with local part {local!r} to answer from "
            f"{our_address}",
            details=[{"field": "sender", "message": f"no sender with local part {local!r}"}],
        )
    return sender


async def _parent(
    session: AsyncSession, conversation: Conversation, message_id: int | None
) -> ConversationMessage | None:
    """The message answered: the given one (of this conversation, else 422), else the newest inbound one, else the
    newest message of the thread (an answer that follows our own), else none."""
    base = select(ConversationMessage).where(ConversationMessage.conversation_id == conversation.id)
    if message_id is not None:
        found = await session.scalar(base.where(ConversationMessage.id == message_id))
        if found is None:
            raise BadInput.field("message_id", f"not a message of conversation {conversation.id}: {message_id}")
        return found
    newest = base.order_by(ConversationMessage.id.desc()).limit(1)
    return await session.scalar(newest.where(ConversationMessage.direction == "inbound")) or await session.scalar(
        newest
    )


async def _unsendable(session: AsyncSession, contact: Contact, now: dt.datetime) -> str | None:
    recipient = Recipient(address=Contact.email_normalized, domain=Contact.email_domain, user_id=contact.user_id)
    reason = exclusion_reason(recipient, now=now, lookup=SuppressionLookup.PER_ROW)
    found: str | None = await session.scalar(select(reason).where(Contact.id == contact.id))
    return found


async def _existing(session: AsyncSession, user_id: int, sender: Sender, their_address: str) -> Conversation | None:
    """The user's conversation between this sender's local part (any domain) and the address, most recent first."""
    return await session.scalar(
        select(Conversation)
        .where(
            Conversation.user_id == user_id,
            Conversation.their_address == their_address,
            Conversation.our_address.like(f"{escape_like(sender.local_part_lower)}@%", escape="\\"),
        )
        .order_by(Conversation.last_message_at.desc().nulls_last(), Conversation.id.desc())
        .limit(1)
    )


async def _start_domain(session: AsyncSession, user_id: int, usable: _Usable) -> str:
    """The domain a new conversation is started from: the best usable service's, else the best mapped one's
    (the answer then waits for it); 409 when no service is mapped to the user at all."""
    if usable.services:
        return usable.services[0].domain.lower()
    mapped = await session.scalar(
        select(EmailService.domain)
        .join(UserServiceMapping, UserServiceMapping.service_id == EmailService.id)
        .where(
            UserServiceMapping.user_id == user_id,
            UserServiceMapping.is_active.is_(True),
            EmailService.archived_at.is_(None),
        )
        .order_by(EmailService.priority, EmailService.id)
        .limit(1)
    )
    if mapped is None:
        raise Conflict("no sending service is mapped to you: ask an admin to give you one")
    return str(mapped).lower()


async def _create_conversation(
    session: AsyncSession,
    *,
    user_id: int,
    our_address: str,
    their_address: str,
    their_name: str | None,
    contact_id: int,
    subject: str,
    now: dt.datetime,
) -> Conversation:
    """A new conversation, or the one a concurrent writer (an inbound mail, another start) created meanwhile."""
    try:
        async with session.begin_nested():
            conversation = Conversation(
                user_id=user_id,
                our_address=our_address,
                their_address=their_address,
                their_name=their_name,
                contact_id=contact_id,
                subject=subject,
                status="active",
                message_count=0,
                unread_count=0,
                created_at=now,
                updated_at=now,
            )
            session.add(conversation)
            await session.flush()
        return conversation
    except IntegrityError:
        found = await session.scalar(
            select(Conversation).where(
                Conversation.user_id == user_id,
                Conversation.our_address == our_address,
                Conversation.their_address == their_address,
            )
        )
        if found is None:
            raise
        return found


# ---- reading -----------------------------------------------------------------------------------------------


def state_of(send_state: str | None, delivery_state: str | None) -> str:
    """One word for an outbound message: pending, sending, sent, delivered, bounced…, failed, uncertain."""
    if send_state is None:
        return "unknown"
    if send_state == SendState.ALLOCATED:
        return "sending"
    if send_state == SendState.SENT and delivery_state not in (None, "none"):
        return str(delivery_state)
    return str(send_state)


async def outbound_states(session: AsyncSession, message_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The send state of outbound messages, read from their SubTasks (always current: an `uncertain` send later
    proven by an event included), for the thread view: per message id, `state`, `send_state`, `sent_at`,
    `failed_at`, `error_code`, `error`, `attempts`, `service_id`, `service`, `retryable`."""
    if not message_ids:
        return {}
    rows = await session.execute(
        select(ConversationMessage.id, SubTask, EmailService.label)
        .join(SubTask, SubTask.id == ConversationMessage.subtask_id)
        .outerjoin(EmailService, EmailService.id == SubTask.service_id)
        .where(ConversationMessage.id.in_(list(message_ids)), ConversationMessage.direction == "outbound")
    )
    return {message_id: _state_view(subtask, label) for message_id, subtask, label in rows.all()}


_NO_SUBTASK: dict[str, Any] = {
    "state": "unknown",
    "send_state": None,
    "delivery_state": None,
    "settled": True,
    "sent_at": None,
    "failed_at": None,
    "attempts": 0,
    "error_code": None,
    "error": None,
    "service_id": None,
    "service": None,
    "sent_from": None,
    "retryable": False,
}


def _state_view(s: SubTask, label: str | None) -> dict[str, Any]:
    settled = s.send_state not in OPEN_SEND_STATES
    return {
        "state": state_of(s.send_state, s.delivery_state),
        "send_state": s.send_state,
        "delivery_state": s.delivery_state,
        "settled": settled,
        "sent_at": s.sent_at,
        "failed_at": s.failed_at,
        "attempts": s.attempts,
        "error_code": s.last_error_code if s.send_state != SendState.SENT else None,
        "error": s.last_error if s.send_state != SendState.SENT else None,
        "service_id": s.service_id if s.send_state != SendState.PENDING else None,
        "service": label if s.send_state != SendState.PENDING else None,
        "sent_from": s.from_address,
        "retryable": s.send_state == SendState.FAILED,
    }


async def describe(
    session: AsyncSession, message: ConversationMessage, *, route: Route | None = None
) -> dict[str, Any]:
    """An outbound message with its send state (the answer of the API and the CLI)."""
    conversation = await session.get(Conversation, message.conversation_id)
    assert conversation is not None
    state = (await outbound_states(session, [message.id])).get(message.id) or _NO_SUBTASK
    state = dict(state)
    sent_from = state.pop("sent_from") or message.from_address
    out = {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "direction": message.direction,
        "task_id": message.task_id,
        "subtask_id": message.subtask_id,
        "message_id": message.message_id,
        "in_reply_to": message.in_reply_to,
        "references": message.references.split() if message.references else [],
        "from_address": sent_from,
        "from_name": message.from_name,
        "to_address": message.to_address,
        "subject": message.subject,
        "text": message.text_body,
        "html": message.html_body,
        "created_at": message.created_at,
        **state,
        "from_domain_changed": domain_of(sent_from) != domain_of(conversation.our_address),
        "route": route.view(sent_from.rpartition("@")[0]) if route is not None else None,
    }
    return out


# ---- keeping answers flowing (the worker's `answers` job) ---------------------------------------------------


async def widen_stranded(
    session: AsyncSession,
    *,
    now: dt.datetime,
    snapshots: Sequence[queue.ServiceSnapshot],
    runtime: runtime_settings.RuntimeSettings,
) -> dict[int, list[int] | None]:
    """Queued answers whose allowed services all stopped being usable (frozen, throttled, exhausted, at quota,
    disabled, unmapped, out of the working tier) move to the next tier: the usable services of the conversation's
    domain, else any service of the user. Nothing moves while no service of the user is usable at all (the answer
    then waits where it is) or while sending is paused. Returns {task id: new allowed ids}."""
    if runtime.sending_paused:
        return {}
    tasks = (
        await session.execute(
            select(Task.id, Task.user_id, Task.allowed_service_ids, Task.recipient_rule).where(
                Task.kind == KIND, Task.status.in_(RUNNING)
            )
        )
    ).all()
    tasks = [t for t in tasks if t.allowed_service_ids]  # (a JSON null is not an SQL NULL on every database)
    if not tasks:
        return {}
    mapped = await _mapped(session, {t.user_id for t in tasks})
    domains = {s.service.id: s.service.domain.lower() for s in snapshots}
    changed: dict[int, list[int] | None] = {}
    usable_by_user: dict[int, _Usable] = {}
    for task in tasks:
        allowed = set(task.allowed_service_ids or [])
        if not allowed:
            continue
        usable = usable_by_user.get(task.user_id) or _usable_of(snapshots, mapped, task.user_id, runtime)
        usable_by_user[task.user_id] = usable
        ids = set(usable.ids())
        if not ids or allowed & ids:
            continue
        our_domain = str((task.recipient_rule or {}).get("our_domain") or "")
        same = sorted(i for i in ids if domains.get(i) == our_domain)
        widened: list[int] | None = same or None
        result = await session.execute(
            update(Task)
            .where(Task.id == task.id, Task.status.in_(RUNNING))
            .values(
                allowed_service_ids=widened,
                recipient_rule={**(task.recipient_rule or {}), "route": "same_domain" if same else "other_domain"},
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            changed[task.id] = widened
    return changed


# ---- for the operator's CLI, which acts as the owner -----------------------------------------------------


@dataclass(frozen=True)
class Acting:
    """A user acted for by the CLI (an operator, who needs no token)."""

    id: int


async def conversation_owner(session: AsyncSession, conversation_id: int) -> Acting:
    found = await session.scalar(select(Conversation.user_id).where(Conversation.id == conversation_id))
    if found is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return Acting(int(found))


async def contact_owner(session: AsyncSession, contact_id: int) -> Acting:
    found = await session.scalar(select(Contact.user_id).where(Contact.id == contact_id))
    if found is None:
        raise BadInput.field("contact_id", f"not found: {contact_id}")
    return Acting(int(found))


async def message_owner(session: AsyncSession, message_id: int) -> Acting:
    found = await session.scalar(
        select(ConversationMessage.user_id).where(
            ConversationMessage.id == message_id, ConversationMessage.direction == "outbound"
        )
    )
    if found is None:
        raise NotFound(f"message {message_id} not found")
    return Acting(int(found))
