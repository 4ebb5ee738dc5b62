"""What a recorded send of a conversation answer changes in its conversation
(docs/conversations-answers.md#how-the-thread-learns-the-outcome).

An answer is the single SubTask of a task of kind `reply`; its ConversationMessage names that SubTask. When the
outcome transaction records it `sent` (or a late acceptance of a row the reclaimer took back), the same transaction
copies the send onto the message — sent time, the service, the From and Message-ID actually used — and moves the
conversation's `last_service_id`, `last_message_at` and `message_count`. Only rows still without `sent_at` are
touched, so a retried record (docs/architecture.md#transactions-who-commits) cannot count a message twice.

Failures are not copied: the thread reads the send state and the last error from the SubTask itself, which is
always current (an `uncertain` send later proven by an event included).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from edm.models.conversations import Conversation, ConversationMessage


@dataclass(frozen=True, slots=True)
class SentAnswer:
    subtask_id: int
    from_address: str | None
    message_id: str | None  # as the header carries it: `<id@domain>`


async def record_sent(
    session: AsyncSession, *, service_id: int, answers: Sequence[SentAnswer], now: dt.datetime
) -> int:
    """Copy these sent answers onto their conversation messages and conversations; returns how many messages
    changed. Rows are locked conversations first, in id order (the order inbound storage locks them in)."""
    if not answers:
        return 0
    by_subtask = {a.subtask_id: a for a in answers}
    rows = (
        await session.execute(
            select(ConversationMessage.id, ConversationMessage.subtask_id, ConversationMessage.conversation_id).where(
                ConversationMessage.subtask_id.in_(list(by_subtask)),
                ConversationMessage.direction == "outbound",
                ConversationMessage.sent_at.is_(None),
            )
        )
    ).all()
    if not rows:
        return 0
    per_conversation: dict[int, int] = defaultdict(int)
    for row in rows:
        per_conversation[row.conversation_id] += 1
    await session.execute(
        select(Conversation.id)
        .where(Conversation.id.in_(list(per_conversation)))
        .order_by(Conversation.id)
        .with_for_update()
    )
    for row in sorted(rows, key=lambda r: r.id):
        answer = by_subtask[row.subtask_id]
        values: dict[str, object] = {"sent_at": now, "service_id": service_id}
        if answer.from_address:
            values["from_address"] = answer.from_address
        if answer.message_id:
            values["message_id"] = answer.message_id.strip().strip("<>")[:400]
        await session.execute(
            update(ConversationMessage)
            .where(ConversationMessage.id == row.id, ConversationMessage.sent_at.is_(None))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    for conversation_id, count in sorted(per_conversation.items()):
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(
                last_service_id=service_id,
                last_message_at=case(
                    (Conversation.last_message_at.is_(None), now),
                    (Conversation.last_message_at < now, now),
                    else_=Conversation.last_message_at,
                ),
                message_count=Conversation.message_count + count,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    return len(rows)
