"""`edm conversations` (a user's replies and threads) and `edm inbound` (unrouted inbound mail, the admins' list):
thin callers of `edm.conversations.service` (docs/conversations.md#cli)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from edm import clock
from edm.cli.common import emit, run, session_scope
from edm.conversations import service
from edm.conversations.schemas import ConversationOut, UnroutedOut
from edm.paging import Page
from edm.system.service import CLI
from edm.users.service import find_user

conversations_app = typer.Typer(help="A user's conversations: replies to their mail.", no_args_is_help=True)
inbound_app = typer.Typer(help="Inbound mail no user owns: list, assign to a user, discard.", no_args_is_help=True)

UserOption = Annotated[str, typer.Option("--user", help="username, email or id of the owner")]
# Inbound mail is untrusted: terminal control sequences in a subject or a body must not reach the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: str | None) -> str:
    return _CONTROL.sub("?", (text or "").replace("\r\n", "\n"))


@conversations_app.command("list")
@run
async def conversations_list(
    user: UserOption,
    status: Annotated[str | None, typer.Option(help="active, closed or archived")] = None,
    unread: Annotated[bool, typer.Option("--unread", help="only conversations with unread messages")] = False,
    q: Annotated[str | None, typer.Option("--q", help="part of an address, a name or the subject")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The user's conversations, newest activity first."""
    filters = service.ConversationFilter(status=status, unread_only=unread, q=q)
    async with session_scope() as session:
        owner = await find_user(session, user)
        rows = await service.list_conversations(session, user_id=owner.id, filters=filters, page=Page(limit, None))
        data = [ConversationOut.model_validate(r).model_dump(mode="json") for r in rows[:limit]]
    emit(
        data,
        as_json=as_json,
        text="\n".join(
            _printable(
                f"{c['id']:>8} {c['status']:<8} {c['unread_count']:>3} unread {c['message_count']:>4} msgs  "
                f"{c['their_address']:<36} {c['subject']}"
            )
            for c in data
        )
        or "no conversations",
    )


@conversations_app.command("show")
@run
async def conversations_show(
    conversation_id: Annotated[int, typer.Argument(min=1)],
    user: UserOption,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One conversation with its messages (text bodies; HTML is shown sanitized by the API and the console)."""
    async with session_scope() as session:
        owner = await find_user(session, user)
        detail = await service.thread(session, user_id=owner.id, conversation_id=conversation_id)
    data = detail.model_dump(mode="json")
    lines = [
        f"conversation {data['id']} ({data['status']}): {data['our_address']} <-> {data['their_address']}",
        f"subject: {data['subject']}",
    ]
    for m in data["messages"]:
        flags = " [auto-reply]" if m["is_auto_reply"] else ""
        state = f" [{m['send_state']}]" if m["send_state"] else ""
        lines += ["", f"--- {m['direction']} {m['received_at'] or m['sent_at']} from {m['from_address']}{flags}{state}"]
        lines.append(m["text_body"] or ("(HTML only)" if m["has_html"] else "(empty)"))
        lines += [
            f"[attachment {a['index']}: {a['name'] or '(unnamed)'} {a['type']} {a['size']} B]" for a in m["attachments"]
        ]
    emit(data, as_json=as_json, text=_printable("\n".join(lines)))


@inbound_app.command("list")
@run
async def inbound_list(
    include_resolved: Annotated[bool, typer.Option("--all", help="also assigned and discarded mail")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Unrouted inbound mail, newest first."""
    async with session_scope() as session:
        rows = await service.list_unrouted(session, page=Page(limit, None), include_resolved=include_resolved)
        data = [UnroutedOut.model_validate(r).model_dump(mode="json") for r in rows[:limit]]
    emit(
        data,
        as_json=as_json,
        text="\n".join(
            _printable(
                f"{r['id']:>8} {r['received_at'][:19]} {r['source']:<10} {r['reason']:<15} "
                f"{r['resolution'] or 'open':<9} {r['from_address'] or '?':<30} -> {r['to_address'] or '?':<30} "
                f"{r['subject'] or ''}"
            )
            for r in data
        )
        or "no unrouted mail",
    )


@inbound_app.command("assign")
@run
async def inbound_assign(
    unrouted_id: Annotated[int, typer.Argument(min=1)],
    user: UserOption,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Give an unrouted mail to a user: stored in their conversation as if it had been routed there (audited)."""
    async with session_scope() as session:
        owner = await find_user(session, user)
        row, result = await service.assign_unrouted(
            session, unrouted_id=unrouted_id, user_id=owner.id, actor=CLI, now=clock.utc_now()
        )
        data: dict[str, Any] = {"id": row.id, "user_id": owner.id, **result.as_dict()}
    emit(
        data,
        as_json=as_json,
        text=f"assigned inbound mail {row.id} to {owner.username}: conversation {data['conversation_id']}",
    )


@inbound_app.command("discard")
@run
async def inbound_discard(unrouted_id: Annotated[int, typer.Argument(min=1)]) -> None:
    """Drop an unrouted mail (its raw message is deleted; audited)."""
    async with session_scope() as session:
        row = await service.discard_unrouted(session, unrouted_id=unrouted_id, actor=CLI, now=clock.utc_now())
    typer.echo(f"discarded inbound mail {row.id}")
