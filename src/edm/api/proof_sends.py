"""Template test send routes (SPEC §14.5, §16.3): queue one, poll it, list them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from edm.api.deps import CurrentCaller, Id, IdPath, Paging, Session, Writer
from edm.paging import encode_cursor
from edm.tasks import proof_sends as test_sends

router = APIRouter(prefix="/api/v1", tags=["test sends"])


class TemplateTestSendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[str] = Field(
        ...,
        min_length=1,
        max_length=test_sends.MAX_ADDRESSES,
        json_schema_extra={"items": {"type": "string", "format": "email"}},
        description="1–5 addresses (your own inboxes: not checked against suppression)",
    )
    contact_id: Id | None = Field(
        None, description="one of your contacts whose data fills the variables; else the preview's sample data"
    )
    sender_id: Id | None = Field(None, description="default: your first sender")


@router.post("/templates/{template_id}/test-send", status_code=202)
async def create_test_send(
    template_id: IdPath, body: TemplateTestSendBody, session: Session, caller: Writer
) -> dict[str, Any]:
    """Queue the template for 1–5 addresses, sent before bulk work with `[TEST] ` in the subject and no
    tracking; 1 credit per address. 429 `test_send_limit` past 50 test recipients per UTC day."""
    request = test_sends.TestSendRequest(
        template_id=template_id, emails=body.emails, contact_id=body.contact_id, sender_id=body.sender_id
    )
    task = await test_sends.create(session, user_id=caller.id, request=request, actor=str(caller.id))
    return test_sends.view(task, (await test_sends.recipients(session, [task.id]))[task.id])


@router.get("/test-sends/{test_send_id}")
async def get_test_send(test_send_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """The test send with each recipient's state, error, send time and the service that sent it."""
    task = await test_sends.get(session, user_id=caller.id, test_send_id=test_send_id)
    return test_sends.view(task, (await test_sends.recipients(session, [task.id]))[task.id])


@router.get("/test-sends")
async def list_test_sends(session: Session, caller: CurrentCaller, page: Paging) -> dict[str, Any]:
    """The caller's test sends, newest first."""
    tasks = await test_sends.list_ids(session, user_id=caller.id, before_id=page.after_id, limit=page.limit + 1)
    more = len(tasks) > page.limit
    tasks = tasks[: page.limit]
    found = await test_sends.recipients(session, [t.id for t in tasks])
    return {
        "items": [test_sends.view(t, found[t.id]) for t in tasks],
        "next_cursor": encode_cursor(tasks[-1].id) if more and tasks else None,
    }
