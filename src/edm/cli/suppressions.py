"""`edm suppression`: manage a user's suppression list (`--user`) or the global list (`--global`).

Same rules as the API: removing an unsubscribe or complaint entry needs `--reason` and is audited (actor
`cli`); an import keeps good rows and reports bad ones by row number.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from edm.cli.common import emit, run, session_scope, settings
from edm.clock import utc_now
from edm.db.engine import create_engine, make_sessionmaker
from edm.db.session import end_transaction
from edm.errors import BadInput
from edm.models.suppressions import Suppression
from edm.paging import Page
from edm.suppressions import csvio
from edm.suppressions import service as suppressions
from edm.suppressions.csvio import ImportReport, parse_time
from edm.suppressions.service import GLOBAL, REASONS, EntryFilter, SuppressionList
from edm.system.service import CLI
from edm.users.service import find_user

suppression_app = typer.Typer(help="Suppression lists (a user's, or the global one).", no_args_is_help=True)

UserOpt = Annotated[str | None, typer.Option("--user", help="the list of this user: username, email or id")]
GlobalOpt = Annotated[bool, typer.Option("--global", help="the global list")]
JsonOpt = Annotated[bool, typer.Option("--json")]


async def _which(session: Any, user: str | None, global_: bool) -> SuppressionList:
    if (user is None) == (not global_):
        raise BadInput.field("list", "give either --user U or --global")
    if global_:
        return GLOBAL
    return SuppressionList.of_user((await find_user(session, user or "")).id)


def _row(entry: Suppression) -> str:
    expiry = f"  expires {entry.expires_at:%Y-%m-%d %H:%M}Z" if entry.expires_at else ""
    note = f"  ({entry.note})" if entry.note else ""
    return f"{entry.id:>8}  {entry.kind:<7}  {entry.value:<40}  {entry.reason}{expiry}{note}"


@suppression_app.command("list")
@run
async def suppression_list(
    user: UserOpt = None,
    global_: GlobalOpt = False,
    kind: Annotated[str | None, typer.Option(help="address or domain")] = None,
    reason: Annotated[list[str] | None, typer.Option(help=f"one of {', '.join(REASONS)} (repeatable)")] = None,
    q: Annotated[str | None, typer.Option(help="substring of the value or note")] = None,
    expired: Annotated[bool | None, typer.Option("--expired/--in-force", help="only expired / in force")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Entries by id (the first --limit)."""
    if kind is not None and kind not in ("address", "domain"):
        raise BadInput.field("kind", "address or domain")
    if any(r not in REASONS for r in reason or ()):
        raise BadInput.field("reason", f"one of {', '.join(REASONS)}")
    filters = EntryFilter(kind=kind, reasons=tuple(reason or ()), q=q, expired=expired)
    async with session_scope() as session:
        lst = await _which(session, user, global_)
        entries = await _entries(session, lst, filters, limit)
    data = [
        {c: getattr(e, c) for c in ("id", "kind", "value", "reason", "note", "expires_at", "created_at")}
        for e in entries
    ]
    emit(data, as_json=as_json, text="\n".join([_row(e) for e in entries] + [f"{len(entries)} entries"]))


async def _entries(session: Any, lst: SuppressionList, filters: EntryFilter, limit: int) -> list[Suppression]:
    found: list[Suppression] = []
    after = None
    while len(found) < limit:
        page = Page(min(200, limit - len(found)), after)
        rows = await suppressions.list_entries(session, lst, page=page, filters=filters, now=utc_now())
        found += rows[: page.limit]
        if len(rows) <= page.limit:
            break
        after = found[-1].id
    return found


@suppression_app.command("add")
@run
async def suppression_add(
    values: Annotated[list[str], typer.Argument(help="addresses (with @) or domains")],
    user: UserOpt = None,
    global_: GlobalOpt = False,
    note: Annotated[str | None, typer.Option(help="why (kept with the entry)")] = None,
    expires_at: Annotated[str | None, typer.Option(help="ISO 8601 time; UTC when no zone is given")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add entries (reason `manual`). Exit 2 when one is invalid or already listed: nothing is added then."""
    now = utc_now()
    expiry = parse_time(expires_at, field="expires_at") if expires_at else None
    entries = [suppressions.guess_entry(v, note=note, expires_at=expiry, now=now) for v in values]
    async with session_scope() as session:
        lst = await _which(session, user, global_)
        added = [(await suppressions.add_entry(session, lst, e, actor=CLI, now=now)).id for e in entries]
    emit(added, as_json=as_json, text=f"added {len(added)} entries")


@suppression_app.command("remove")
@run
async def suppression_remove(
    entry: Annotated[str, typer.Argument(help="entry id, address or domain")],
    user: UserOpt = None,
    global_: GlobalOpt = False,
    reason: Annotated[str | None, typer.Option(help="required for unsubscribed and complaint entries")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove one entry; an unsubscribe or complaint entry also clears that flag on the matching contacts."""
    async with session_scope() as session:
        lst = await _which(session, user, global_)
        if entry.isdigit():
            entry_id = int(entry)
        else:
            entry_id = (await suppressions.find_entry(session, lst, suppressions.guess_entry(entry, now=utc_now()))).id
        cleared = await suppressions.remove_entry(session, lst, entry_id, reason=reason, actor=CLI)
    emit(
        {"removed": entry_id, "contacts_cleared": cleared},
        as_json=as_json,
        text=f"removed entry {entry_id}" + (f"; cleared {cleared} contact flags" if cleared else ""),
    )


@suppression_app.command("check")
@run
async def suppression_check(
    email: Annotated[str, typer.Argument(help="the address to check")],
    user: UserOpt = None,
    global_: GlobalOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Is the address blocked (for the user: their list, the global list and their contact's flags)?"""
    async with session_scope() as session:
        lst = await _which(session, user, global_)
        result = await suppressions.check(session, email, user_id=lst.user_id, now=utc_now())
    data = {
        "email": result.email,
        "blocked": result.blocked,
        "contact_reasons": result.contact_reasons,
        "entries": [
            {"id": e.id, "scope": e.scope, "kind": e.kind, "value": e.value, "reason": e.reason} for e in result.entries
        ],
    }
    lines = [f"{result.email}: {'blocked' if result.blocked else 'not blocked'}"]
    lines += [f"  {e.scope} list, {e.kind} {e.value}: {e.reason}" for e in result.entries]
    lines += [f"  contact: {reason}" for reason in result.contact_reasons]
    emit(data, as_json=as_json, text="\n".join(lines))


@suppression_app.command("import")
@run
async def suppression_import(
    file: Annotated[Path, typer.Argument(help="CSV with an email or domain column; optional note, expires_at")],
    user: UserOpt = None,
    global_: GlobalOpt = False,
    encoding: Annotated[str | None, typer.Option(help="e.g. gb18030")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import entries (reason `import`): good rows are kept, bad rows listed with their row number."""
    if not file.is_file():
        raise BadInput.field("file", f"{file} not found")
    engine = create_engine(settings())
    try:
        async with make_sessionmaker(engine)() as session:
            report = await _import(session, file, user, global_, encoding)
    finally:
        await engine.dispose()
    emit(report.to_dict(), as_json=as_json, text=_summary(report))
    if report.error_count and report.added == 0:
        raise typer.Exit(1)


async def _import(session: Any, file: Path, user: str | None, global_: bool, encoding: str | None) -> ImportReport:
    async def commit(_: ImportReport) -> None:
        await end_transaction(session)  # each batch is durable on its own

    try:
        lst = await _which(session, user, global_)
        with file.open("rb") as stream:
            report = await csvio.import_csv(
                session, lst, stream, encoding=encoding, actor=CLI, now=utc_now(), on_batch=commit
            )
        await end_transaction(session)
    except BaseException:
        await session.rollback()
        raise
    return report


def _summary(report: ImportReport) -> str:
    lines = [
        f"imported {report.total} rows: {report.added} added, {report.existing} existing, {report.error_count} errors"
    ]
    lines += [f"  row {e.row}, {e.column or 'record'}: {e.message}" for e in report.errors[:20]]
    if report.error_count > 20:
        lines.append(f"  … and {report.error_count - 20} more")
    return "\n".join(lines)


@suppression_app.command("export")
@run
async def suppression_export(
    user: UserOpt = None,
    global_: GlobalOpt = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")] = None,
    bom: Annotated[bool, typer.Option(help="start with a UTF-8 BOM (for spreadsheets)")] = False,
) -> None:
    """Write the list as CSV: email, domain, reason, note, expires_at, created_at."""
    engine = create_engine(settings())
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as session:
            lst = await _which(session, user, global_)
        lines = csvio.export_lines(sessionmaker, lst, filters=EntryFilter(), now=utc_now(), bom=bom)
        with output.open("w", encoding="utf-8", newline="") if output else nullcontext(sys.stdout) as out:
            async for line in lines:
                out.write(line)
    finally:
        await engine.dispose()
