"""`edm conversations reply|start|retry|route`: answering from EDM (docs/conversations-answers.md#command-line).

The commands are registered by `register(app)` onto a Typer group: `answers_app` here, mounted as `conversations`
by `edm.cli.main`. The inbound side's `edm conversations list|show` lives in `edm.cli.conversations`; once both
exist, one group carries all of them: `register(conversations.conversations_app)` instead of mounting `answers_app`.

The operator acts as the owner of the conversation (or contact) unless `--user` names another user, who must own it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edm.cli.common import emit, run, session_scope
from edm.clock import utc_now
from edm.conversations import answers
from edm.users.service import find_user

answers_app = typer.Typer(no_args_is_help=True, help="Conversations: answer, start one, send a failed answer again.")

UserOption = Annotated[
    str | None, typer.Option(help="as this user: username, email or id (default: the owner of the conversation)")
]
HtmlFile = Annotated[Path | None, typer.Option("--html-file", help="an HTML version of the answer", exists=True)]


async def _as(session: Any, user: str | None, owner: answers.Acting) -> answers.Acting:
    if user is None:
        return owner
    return answers.Acting((await find_user(session, user)).id)


def _read(path: Path | None) -> str | None:
    return path.read_text(encoding="utf-8") if path is not None else None


def _line(data: dict[str, Any]) -> str:
    line = f"message {data['id']} in conversation {data['conversation_id']}: {data['state']}"
    route = data.get("route") or {}
    if route.get("service"):
        line += f", via {route['service']} from {route['from_address']}"
    if route.get("warning"):
        line += f"\nwarning: {route['warning']}"
    return line


@run
async def reply(
    conversation_id: Annotated[int, typer.Argument(help="conversation id")],
    text: Annotated[str, typer.Option("--text", help="the answer as plain text")],
    html_file: HtmlFile = None,
    message: Annotated[
        int | None, typer.Option("--message", help="the message answered (default: the newest inbound one)")
    ] = None,
    user: UserOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Queue an answer in a conversation: `Re: ` + its subject, threaded, 1 credit, no tracking."""
    async with session_scope() as session:
        acting = await _as(session, user, await answers.conversation_owner(session, conversation_id))
        data = await answers.reply(
            session, acting, conversation_id, text, _read(html_file), now=utc_now(), message_id=message, actor="cli"
        )
    emit(data, as_json=as_json, text=_line(data))


@run
async def start(
    contact: Annotated[int, typer.Option("--contact", help="contact id")],
    sender: Annotated[int, typer.Option("--sender", help="sender id (the From local part and display name)")],
    subject: Annotated[str, typer.Option("--subject")],
    text: Annotated[str, typer.Option("--text", help="the message as plain text")],
    html_file: HtmlFile = None,
    user: Annotated[
        str | None, typer.Option(help="as this user: username, email or id (default: the contact's owner)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start a conversation with a contact and queue its first message (a real send, 1 credit)."""
    async with session_scope() as session:
        acting = await _as(session, user, await answers.contact_owner(session, contact))
        data = await answers.start(
            session, acting, contact, sender, subject, text, _read(html_file), now=utc_now(), actor="cli"
        )
    emit(data, as_json=as_json, text=_line(data))


@run
async def retry(
    message_id: Annotated[int, typer.Argument(help="the failed answer's message id")],
    user: UserOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send a failed answer again (a new attempt, 1 credit), through another service when one is usable."""
    async with session_scope() as session:
        acting = await _as(session, user, await answers.message_owner(session, message_id))
        data = await answers.retry(session, acting, message_id, now=utc_now(), actor="cli")
    emit(data, as_json=as_json, text=_line(data))


@run
async def route(
    conversation_id: Annotated[int, typer.Argument(help="conversation id")],
    user: UserOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The service an answer would go through now, its From address and any warning."""
    async with session_scope() as session:
        acting = await _as(session, user, await answers.conversation_owner(session, conversation_id))
        data = await answers.answer_route(session, acting, conversation_id, utc_now())
    text = f"{data['from_address']} via {data['service'] or 'no usable service'} ({data['tier']})"
    if data["warning"]:
        text += f"\nwarning: {data['warning']}"
    emit(data, as_json=as_json, text=text)


def register(app: typer.Typer) -> None:
    """Add the answering commands to a `conversations` group."""
    app.command("reply")(reply)
    app.command("start")(start)
    app.command("retry")(retry)
    app.command("route")(route)


register(answers_app)
