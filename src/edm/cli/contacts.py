"""Contact commands: add addresses and import CSV files (with a progress line and an error summary)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select

from edm.cli.common import emit, run, session_scope, settings
from edm.contacts import service as contacts
from edm.contacts.importer import ImportReport, import_csv
from edm.contacts.models import Tag
from edm.db.engine import create_engine, make_sessionmaker
from edm.errors import BadInput
from edm.users.service import find_user

contact_app = typer.Typer(help="Contacts.", no_args_is_help=True)


async def tag_ids_by_name(session: Any, user_id: int, names: list[str]) -> list[int]:
    """Existing tags by name (or `Parent/Child`); unknown root names are created."""
    ids = []
    for name in names:
        parent_name, _, child_name = name.rpartition("/")
        parent_id = None
        if parent_name:
            parent_id = await session.scalar(select(Tag.id).where(Tag.user_id == user_id, Tag.name == parent_name,
                                                                  Tag.parent_id.is_(None)))
            if parent_id is None:
                parent_id = (await contacts.create_tag(session, user_id=user_id, name=parent_name)).id
        found = await session.scalar(select(Tag.id).where(Tag.user_id == user_id, Tag.name == child_name,
                                                          Tag.parent_id.is_(None) if parent_id is None
                                                          else Tag.parent_id == parent_id))
        if found is None:
            found = (await contacts.create_tag(session, user_id=user_id, name=child_name, parent_id=parent_id)).id
        ids.append(found)
    return ids


@contact_app.command("add")
@run
async def contact_add(
    user: Annotated[str, typer.Option(help="owner: username, email or id")],
    emails: Annotated[list[str], typer.Argument(help="addresses to add")],
    tag: Annotated[list[str] | None, typer.Option(help="tag name (repeatable; Parent/Child for a child)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    async with session_scope() as session:
        owner = await find_user(session, user)
        tags = await tag_ids_by_name(session, owner.id, tag or [])
        created = [(await contacts.create_contact(session, user_id=owner.id, values={"email": e, "source": "manual"},
                                                  tag_ids=tags)).id for e in emails]
    emit(created, as_json=as_json, text=f"added {len(created)} contacts")


@run
async def import_command(
    file: Annotated[Path, typer.Argument(help="CSV file (UTF-8 with or without BOM, or --encoding)")],
    user: Annotated[str, typer.Option(help="owner: username, email or id")],
    tag: Annotated[list[str] | None, typer.Option(help="add this tag to every row (repeatable)")] = None,
    mode: Annotated[str, typer.Option(help="skip_existing or update_existing")] = "skip_existing",
    encoding: Annotated[str | None, typer.Option(help="e.g. gb18030")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Import contacts from a CSV file; bad rows are reported with their row number, good rows are kept."""
    if not file.is_file():
        raise BadInput.field("file", f"{file} not found")
    cfg = settings()
    engine = create_engine(cfg)
    try:
        async with make_sessionmaker(engine)() as session:
            report = await _import(session, file, user, tag or [], mode, encoding)
    finally:
        await engine.dispose()
    emit(report.to_dict(), as_json=as_json, text=_summary(report))
    if report.error_count:
        raise typer.Exit(1 if report.created + report.updated == 0 else 0)


async def _import(session: Any, file: Path, user: str, tags: list[str], mode: str,
                  encoding: str | None) -> ImportReport:
    owner = await find_user(session, user)
    tag_ids = await tag_ids_by_name(session, owner.id, tags)
    await session.commit()

    async def progress(report: ImportReport) -> None:
        await session.commit()  # each batch is durable on its own: a crash keeps what was imported
        typer.echo(f"\r{report.total} rows: {report.created} created, {report.updated} updated, "
                   f"{report.skipped} skipped, {report.error_count} errors", nl=False, err=True)

    try:
        with file.open("rb") as stream:
            report = await import_csv(session, user_id=owner.id, stream=stream, mode=mode, encoding=encoding,
                                      tag_ids=tag_ids, on_batch=progress)
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    typer.echo("", err=True)
    return report


def _summary(report: ImportReport) -> str:
    lines = [f"imported {report.total} rows: {report.created} created, {report.updated} updated, "
             f"{report.skipped} skipped, {report.error_count} errors"]
    lines += [f"  row {e.row}, {e.column}: {e.message}" for e in report.errors[:20]]
    if report.error_count > 20:
        lines.append(f"  … and {report.error_count - 20} more")
    return "\n".join(lines)
