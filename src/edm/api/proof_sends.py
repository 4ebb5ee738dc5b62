"""Template test send routes (docs/templates.md#test-sends): queue one, poll it, list them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edm.api.deps import CurrentCaller, IdPath, Paging, Session, Writer
from edm.db.session import end_transaction
from edm.paging import PageOut
from edm.tasks import proof_sends as test_sends
from edm.tasks.schemas import TemplateTestSendBody, TestSendOut

router = APIRouter(prefix="/api/v1", tags=["test sends"])


@router.post("/templates/{template_id}/test-send", status_code=202, response_model=TestSendOut)
async def create_test_send(
    template_id: IdPath, body: TemplateTestSendBody, session: Session, caller: Writer
) -> dict[str, Any]:
    """Queue the template for 1–5 addresses, sent before bulk work with `[TEST] ` in the subject and no
    tracking; 1 credit per address. 429 `test_send_limit` past 50 test recipients per UTC day."""
    request = test_sends.TestSendRequest(
        template_id=template_id, emails=body.emails, contact_id=body.contact_id, sender_id=body.sender_id
    )
    plan = await test_sends.plan(session, user_id=caller.id, request=request)
    # The reads are done: end the transaction before the template renders, which may take its whole time
    # limit and must not hold a connection (nor, on SQLite, the database's write lock) meanwhile.
    await end_transaction(session)
    await test_sends.check_render(plan)
    task = await test_sends.queue(session, user_id=caller.id, plan=plan, actor=str(caller.id))
    return await test_sends.describe(session, task)


@router.get("/test-sends/{test_send_id}", response_model=TestSendOut)
async def get_test_send(test_send_id: IdPath, session: Session, caller: CurrentCaller) -> dict[str, Any]:
    """The test send with each recipient's state, error, send time and the service that sent it."""
    task = await test_sends.get(session, user_id=caller.id, test_send_id=test_send_id)
    return await test_sends.describe(session, task)


@router.get("/test-sends", response_model=PageOut[TestSendOut])
async def list_test_sends(session: Session, caller: CurrentCaller, page: Paging) -> dict[str, Any]:
    """The caller's test sends, newest first."""
    return await test_sends.newest_first(session, user_id=caller.id, page=page)
