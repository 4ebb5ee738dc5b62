"""`edm template test-send`: queue a template test send (docs/templates.md#test-sends) and optionally wait for its
outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from edm.cli.common import emit, run, session_scope
from edm.tasks import proof_sends as test_sends
from edm.users.service import find_user

POLL_SECONDS = 1.0


async def _owner_of(session: Any, template_id: int, user: str | None) -> int:
    """The given user (who must own the template), else the template's owner."""
    if user is not None:
        return (await find_user(session, user)).id
    return await test_sends.template_owner(session, template_id)


async def _read(test_send_id: int, user_id: int) -> dict[str, Any]:
    async with session_scope() as session:
        task = await test_sends.get(session, user_id=user_id, test_send_id=test_send_id)
        return await test_sends.describe(session, task)


async def _queue(template_id: int, request: test_sends.TestSendRequest, user: str | None) -> tuple[int, int]:
    """Queue the test send as the API does: the checks in one transaction, the render outside any (it may
    take its whole time limit and must not hold the database meanwhile), the writes in another.
    Returns the owner's id and the test send's id."""
    async with session_scope() as session:
        user_id = await _owner_of(session, template_id, user)
        plan = await test_sends.plan(session, user_id=user_id, request=request)
    await test_sends.check_render(plan)
    async with session_scope() as session:
        task = await test_sends.queue(session, user_id=user_id, plan=plan, actor="cli")
        return user_id, task.id


def _outcome_line(r: dict[str, Any]) -> str:
    line = f"{r['email']}: {r['state']}"
    if r["service"]:
        line += f" via {r['service']}"
    if r["sent_at"]:
        line += f" at {r['sent_at']:%Y-%m-%d %H:%M:%S} UTC"
    if r["error"] and r["send_state"] != "sent":
        line += f" ({r['error_code'] or 'error'}: {r['error']})"
    return line


@run
async def test_send(
    template_id: Annotated[int, typer.Argument(help="template id")],
    to: Annotated[list[str], typer.Option("--to", help="address to send the test to (1–5, repeatable)")],
    contact: Annotated[
        int | None, typer.Option(help="contact id whose data fills the variables (default: sample data)")
    ] = None,
    sender: Annotated[int | None, typer.Option(help="sender id (default: the user's first sender)")] = None,
    user: Annotated[
        str | None, typer.Option(help="as this user: username, email or id (default: the template's owner)")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait until every recipient is settled")] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits at most")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send a template to 1–5 addresses as a test: `[TEST] ` subject, no tracking, 1 credit per address."""
    request = test_sends.TestSendRequest(template_id=template_id, emails=to, contact_id=contact, sender_id=sender)
    user_id, test_send_id = await _queue(template_id, request, user)
    if not wait:
        data = await _read(test_send_id, user_id)
        emit(data, as_json=as_json, text=f"test send {test_send_id} queued for {len(data['recipients'])} recipients")
        return
    if not as_json:
        typer.echo(f"test send {test_send_id} queued; waiting for the outcome…")
    deadline = time.monotonic() + timeout
    data = await _read(test_send_id, user_id)
    while not data["settled"] and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        data = await _read(test_send_id, user_id)
    emit(data, as_json=as_json, text="\n".join(_outcome_line(r) for r in data["recipients"]))
    if not data["settled"]:
        typer.echo(f"error: not every recipient was settled within {timeout:g} s (is a worker running?)", err=True)
        raise typer.Exit(1)
    if any(r["send_state"] != "sent" for r in data["recipients"]):
        raise typer.Exit(1)
