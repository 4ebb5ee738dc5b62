"""Media library commands (docs/media.md#cli): upload an image for a user, list a user's images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edm.cli.common import emit, run, session_scope, settings
from edm.content import media as media_service
from edm.errors import BadInput
from edm.users.service import find_user

media_app = typer.Typer(help="Media library (images for templates).", no_args_is_help=True)


@media_app.command("upload")
@run
async def media_upload(
    file: Annotated[Path, typer.Argument(help="a JPEG, PNG or GIF image, at most 5 MB")],
    user: Annotated[str, typer.Option(help="owner: username or id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Store an image as it is and print its public URL (the type is checked by content, not by name)."""
    if not file.is_file():
        raise BadInput.field("file", f"{file} is not a readable file")
    if file.stat().st_size > media_service.MAX_BYTES:
        raise media_service.TooLarge(f"file: {file.name} is larger than 5 MB")
    data = file.read_bytes()
    cfg = settings()
    async with session_scope(cfg) as session:
        owner = await find_user(session, user)
        created = await media_service.upload(session, user_id=owner.id, filename=file.name, data=data)
        view = media_service.view(created, cfg.effective_tracking_url)
    emit(
        view.model_dump(), as_json=as_json, text=f"media {view.id} ({view.content_type}, {view.size} bytes): {view.url}"
    )


@media_app.command("list")
@run
async def media_list(
    user: Annotated[str, typer.Option(help="owner: username or id")],
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    after: Annotated[int | None, typer.Option(help="show images after this id")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A user's images by id with their public URLs."""
    cfg = settings()
    async with session_scope(cfg) as session:
        owner = await find_user(session, user)
        rows = await media_service.list_media(session, user_id=owner.id, limit=limit, after_id=after)
        views = [media_service.view(m, cfg.effective_tracking_url) for m in rows[:limit]]
    emit(
        [v.model_dump() for v in views],
        as_json=as_json,
        text="\n".join(f"{v.id:>6} {v.content_type:<10} {v.size:>8} {v.filename}  {v.url}" for v in views)
        or "no media",
    )
