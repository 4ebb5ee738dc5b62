"""Contact commands: add addresses and import CSV/XLSX files (with a progress bar and an error summary)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edm.cli.common import emit, run, session_scope, settings
from edm.clock import utc_now
from edm.contacts import imports, tags
from edm.contacts import service as contacts
from edm.contacts.export import export_csv
from edm.contacts.fields import check_status
from edm.contacts.filters import ContactFilter
from edm.contacts.importer import ImportOptions
from edm.db.engine import create_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.errors import BadInput
from edm.models.contacts import Import
from edm.users.service import find_user

contact_app = typer.Typer(help="Contacts.", no_args_is_help=True)


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
        tag_ids = await tags.ensure_tags(session, user_id=owner.id, names=tag or [])
        created = [
            (
                await contacts.create_contact(
                    session, user_id=owner.id, values={"email": e, "source": "manual"}, tag_ids=tag_ids
                )
            ).id
            for e in emails
        ]
    emit(created, as_json=as_json, text=f"added {len(created)} contacts")


@contact_app.command("export")
@run
async def contact_export(
    user: Annotated[str, typer.Option(help="owner: username, email or id")],
    out: Annotated[Path | None, typer.Option(help="write to this file (default: standard output)")] = None,
    q: Annotated[str | None, typer.Option(help="free-text search")] = None,
    status: Annotated[list[str] | None, typer.Option(help="status (repeatable)")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="existing tag name or Parent/Child (repeatable, any of)")
    ] = None,
    untagged: Annotated[bool, typer.Option(help="contacts without any tag")] = False,
    source: Annotated[str | None, typer.Option(help="source, e.g. import")] = None,
    bom: Annotated[bool, typer.Option(help="start with a UTF-8 BOM (for spreadsheets)")] = False,
) -> None:
    """Export contacts as CSV, streamed in batches: memory stays flat for any size."""
    for value in status or []:
        check_status(value)
    engine = create_engine(settings())
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as session:
            owner = (await find_user(session, user)).id
            tag_ids = await _existing_tags(session, owner, tag or [])
        filters = ContactFilter(
            q=q, statuses=tuple(status or ()), tag_ids=tuple(tag_ids), untagged=untagged, source=source
        )
        stream = out.open("w", encoding="utf-8", newline="") if out is not None else sys.stdout
        try:
            async for piece in export_csv(sessionmaker, user_id=owner, filters=filters, bom=bom):
                stream.write(piece)
        finally:
            if out is not None:
                stream.close()
    finally:
        await engine.dispose()


async def _existing_tags(session: Any, user_id: int, names: list[str]) -> list[int]:
    known = await tags.tag_ids_by_name(session, user_id=user_id)
    ids = []
    for name in names:
        parent, _, child = name.rpartition("/")
        found = known.get((parent or None, child))
        if found is None:
            raise BadInput.field("tag", f"no tag named {name!r}")
        ids.append(found)
    return ids


@run
async def import_command(
    file: Annotated[Path, typer.Argument(help="CSV (UTF-8 with or without BOM, or --encoding) or XLSX file")],
    user: Annotated[str, typer.Option(help="owner: username, email or id")],
    tag: Annotated[list[str] | None, typer.Option(help="add this tag to every row (repeatable)")] = None,
    mode: Annotated[str, typer.Option(help="skip_existing or update_existing")] = "skip_existing",
    encoding: Annotated[str | None, typer.Option(help="CSV: e.g. gb18030")] = None,
    delimiter: Annotated[str | None, typer.Option(help="CSV: ',', ';' or 'tab' (default: detected)")] = None,
    sheet: Annotated[str | None, typer.Option(help="XLSX: sheet name (default: the first)")] = None,
    mapping: Annotated[str | None, typer.Option(help='JSON {"column": "field"}')] = None,
    ignore_unknown_columns: Annotated[bool, typer.Option(help="drop columns that are no contact field")] = False,
    wait: Annotated[bool, typer.Option(help="queue it for the workers and wait, instead of running it here")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Import contacts from a CSV or XLSX file; bad rows are reported with their row number, good rows are kept."""
    if not file.is_file():
        raise BadInput.field("file", f"{file} not found")
    cfg = settings()
    engine = create_engine(cfg)
    try:
        sessionmaker = make_sessionmaker(engine)
        options = ImportOptions(
            mode=mode,
            encoding=encoding,
            delimiter=_delimiter(delimiter),
            sheet=sheet,
            mapping=_mapping(mapping),
            ignore_unknown_columns=ignore_unknown_columns,
        )
        owner_id, import_id = await _queue(sessionmaker, file, user, tag or [], options, cfg.import_max_bytes)
        with _progress_bar() as bar:
            if wait:
                await _wait(sessionmaker, owner_id, import_id, bar)
            else:
                await _run_here(sessionmaker, import_id, bar)
        result, errors = await _result(sessionmaker, owner_id, import_id)
    finally:
        await engine.dispose()
    emit({**result, "first_errors": errors}, as_json=as_json, text=_summary(result, errors))
    if result["status"] != "completed" or (result["errors"] and result["created"] + result["updated"] == 0):
        raise typer.Exit(1)


def _delimiter(value: str | None) -> str | None:
    return "\t" if value is not None and value.lower() in ("tab", "\\t") else value


def _mapping(value: str | None) -> dict[str, str | None]:
    try:
        parsed = json.loads(value) if value else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise BadInput.field("mapping", 'must be a JSON object {"column": "field"}')
    return parsed


async def _queue(
    sessionmaker: Any, file: Path, user: str, tag_names: list[str], options: ImportOptions, max_bytes: int
) -> tuple[int, int]:
    """(the owner's id, the queued import's id)."""
    async with unit_of_work(sessionmaker) as session:
        owner = await find_user(session, user)
        tag_ids = tuple(await tags.ensure_tags(session, user_id=owner.id, names=tag_names))
        with file.open("rb") as stream:
            row = await imports.create_import(
                session,
                user_id=owner.id,
                filename=file.name,
                stream=stream,
                options=replace(options, tag_ids=tag_ids),
                max_bytes=max_bytes,
            )
        return owner.id, row.id


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _show(bar: Progress, row: Import) -> None:
    if not bar.task_ids:
        bar.add_task("", total=None)
    bar.update(
        bar.task_ids[0],
        completed=row.processed,
        total=row.total_rows,
        description=f"{row.created} created, {row.updated} updated, {row.skipped} skipped, {row.errors} errors",
    )


async def _run_here(sessionmaker: Any, import_id: int, bar: Progress) -> None:
    async with unit_of_work(sessionmaker) as session:
        await imports.claim(session, import_id, worker_id=f"cli:{os.getpid()}", now=utc_now())

    async def progress(row: Import) -> None:
        _show(bar, row)

    await imports.run_import(sessionmaker, import_id, on_progress=progress)


async def _wait(sessionmaker: Any, owner_id: int, import_id: int, bar: Progress) -> None:
    while True:
        async with sessionmaker() as session:
            row = await imports.get_import(session, user_id=owner_id, import_id=import_id)
            _show(bar, row)
            if row.status in imports.FINISHED:
                return
        await asyncio.sleep(1.0)


async def _result(sessionmaker: Any, owner_id: int, import_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async with sessionmaker() as session:
        row = await imports.get_import(session, user_id=owner_id, import_id=import_id)
        result = {
            name: getattr(row, name)
            for name in (
                "id",
                "status",
                "filename",
                "format",
                "total_rows",
                "processed",
                "created",
                "updated",
                "skipped",
                "errors",
                "message",
            )
        }
        errors = []
        async for error in imports.error_rows(session, import_id=import_id, batch=10):
            errors.append(
                {
                    "row": error.row_number,
                    "column": error.column or "",
                    "value": error.value or "",
                    "message": error.message,
                }
            )
            if len(errors) == 10:
                break
        return {**result, "status": str(row.status)}, errors


def _summary(result: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    lines = [
        f"import {result['id']} {result['status']}: {result['processed']} rows, {result['created']} created, "
        f"{result['updated']} updated, {result['skipped']} skipped, {result['errors']} errors"
    ]
    if result["message"] and result["status"] != "completed":
        lines.append(f"  {result['message']}")
    lines += [f"  row {e['row']}, {e['column'] or '-'}: {e['message']}" for e in errors]
    if result["errors"] > len(errors):
        lines.append(
            f"  … and {result['errors'] - len(errors)} more (GET /api/v1/contacts/imports/{result['id']}/errors)"
        )
    return "\n".join(lines)


contact_app.command("import")(import_command)
