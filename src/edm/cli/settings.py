"""`edm settings`: read and change the admin settings (docs/operations.md#admin-settings). Changes are audited (actor
`cli`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from edm.cli.common import emit, run, session_scope
from edm.system.service import CLI, settings_view, update_settings

settings_app = typer.Typer(help="Admin settings (effective in workers within 30 s).", no_args_is_help=True)


@settings_app.command("list")
@run
async def settings_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every setting with its value; `*` marks the ones changed from their default."""
    async with session_scope() as session:
        items = await settings_view(session)
    emit(items, as_json=as_json, text="\n".join(_line(item) for item in items))


def _line(item: dict[str, Any]) -> str:
    changed = item["value"] != item["default"]
    suffix = f"  (default {json.dumps(item['default'])})" if changed else ""
    return f"{'*' if changed else ' '} {item['key']} = {json.dumps(item['value'])}{suffix}"


# ignore_unknown_options: a negative VALUE (`-1`) is the value, not an option (an invalid one is refused anyway).
@settings_app.command("set", context_settings={"ignore_unknown_options": True})
@run
async def settings_set(
    key: Annotated[str, typer.Argument(help="dotted key, e.g. bounce.soft_limit")],
    value: Annotated[str, typer.Argument(help='JSON when it parses (2, true, ["a"]), else taken as text')],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Change one setting. A bad key or value exits 2 and changes nothing."""
    async with session_scope() as session:
        changed = await update_settings(session, {key: parse_value(value)}, actor=CLI)
    text = f"{key} changed" if changed else f"{key} unchanged (already that value)"
    emit({"changed": changed}, as_json=as_json, text=text)


def parse_value(text: str) -> Any:
    """`3` → 3, `true` → True, `["a","b"]` → a list; anything that is not JSON stays the string it is."""
    try:
        return json.loads(text)
    except ValueError:
        return text
