"""Answering from EDM (docs/conversations-answers.md): start a conversation, answer in one, send a failed answer
again, and the service preview with its From warning. Every write costs 1 credit and is queued (202): the worker
sends it before bulk work."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edm.api.deps import CurrentCaller, IdPath, Session, Writer
from edm.clock import utc_now
from edm.conversations import answers
from edm.conversations.answer_schemas import AnswerOut, ReplyBody, RouteOut, StartBody

router = APIRouter(prefix="/api/v1", tags=["conversations"])


@router.post("/conversations", status_code=202, response_model=AnswerOut)
async def start_conversation(body: StartBody, session: Session, caller: Writer) -> dict[str, Any]:
    """Start a conversation with one of your contacts (or continue yours with that address from that sender) and
    queue its first message: a real send, 1 credit, no tracking. 422 for a contact that may not be mailed."""
    return await answers.start(
        session,
        caller,
        body.contact_id,
        body.sender_id,
        body.subject,
        body.text,
        body.html,
        now=utc_now(),
    )


@router.post("/conversations/{conversation_id}/reply", status_code=202, response_model=AnswerOut)
async def reply(conversation_id: IdPath, body: ReplyBody, session: Session, caller: Writer) -> dict[str, Any]:
    """Queue an answer: `Re: ` + the subject, threaded (In-Reply-To, References) to the newest inbound message or
    `message_id`, from the conversation's address; 1 credit (409 `insufficient_credit`), no tracking."""
    return await answers.reply(
        session, caller, conversation_id, body.text, body.html, now=utc_now(), message_id=body.message_id
    )


@router.post("/conversations/{conversation_id}/messages/{message_id}/retry", status_code=202, response_model=AnswerOut)
async def retry_answer(conversation_id: IdPath, message_id: IdPath, session: Session, caller: Writer) -> dict[str, Any]:
    """Send a failed answer again (a new attempt, 1 credit), through another service when one is usable. 409
    unless its send failed: a sent, pending or uncertain answer is never sent twice."""
    return await answers.retry(session, caller, message_id, now=utc_now(), conversation_id=conversation_id)


@router.get("/conversations/{conversation_id}/route", response_model=RouteOut)
async def answer_route(conversation_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """The service an answer would go through now, its From address, and the warning to show when the From
    domain would change (no service of the conversation's domain is usable)."""
    return await answers.answer_route(session, caller, conversation_id, utc_now())
