"""`edm mailbox`: the messages the demo's SMTP sink captured, listed and opened (no database needed)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from edm.cli.common import fail
from edm.devtools.smtp_sink import StoredMessage, format_received, list_stored, read_stored

DEFAULT_DIRECTORY = "var/demo-mailbox"
DirectoryOption = Annotated[str, typer.Option("--directory", help="the SMTP sink's store directory")]

mailbox_app = typer.Typer(
    help="The demo SMTP sink's captured messages: list them, or `show N` to read one.", invoke_without_command=True
)

# Captured mail is untrusted: terminal control sequences in a subject or a body must not reach the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    return _CONTROL.sub("?", text.replace("\r\n", "\n"))


@mailbox_app.callback()
def mailbox_list(ctx: typer.Context, directory: DirectoryOption = DEFAULT_DIRECTORY) -> None:
    """List the captured messages, oldest first, numbered for `edm mailbox show N`."""
    if ctx.invoked_subcommand is not None:
        return
    messages = list_stored(Path(directory))
    for m in messages:
        typer.echo(
            _printable(
                f"{m['number']:>5}  {format_received(m['received_at'])}  {m['to']:<40} {m['subject'] or '(no subject)'}"
            )
        )
    typer.echo(f"{len(messages)} messages in {directory}")


@mailbox_app.command("show")
def mailbox_show(
    number: Annotated[int, typer.Argument(help="the message's number in `edm mailbox`")],
    directory: DirectoryOption = DEFAULT_DIRECTORY,
    html: Annotated[bool, typer.Option("--html", help="print the HTML part instead of the text part")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="print the message source as received")] = False,
) -> None:
    """Show one message: headers, attachments and its text part (or --html, or --raw)."""
    message = read_stored(Path(directory), number)
    if message is None:
        held = len(list_stored(Path(directory)))
        fail(
            f"no message {number} in {directory}: it holds {held} message{'s' * (held != 1)}"
            + (f" (1–{held})" if held else ""),
            code=2,
        )
        return
    if raw:
        sys.stdout.buffer.write(message.raw)
        return
    typer.echo(_printable(_describe(message, html=html)))


def _describe(m: StoredMessage, *, html: bool) -> str:
    lines = [f"message {m.number} of {m.count}, received {format_received(m.received_at)}", ""]
    lines += [f"{name}: {value}" for name, value in m.headers]
    lines += [
        "",
        "attachments: "
        + (
            ", ".join(f"{a.filename or '(no name)'} ({a.content_type}, {a.size} bytes)" for a in m.attachments)
            or "none"
        ),
    ]
    kind, body = ("HTML", m.html) if html else ("text", m.text)
    lines += ["", f"--- {kind} part ---", body if body is not None else f"(this message has no {kind} part)"]
    return "\n".join(lines)
