"""`edm retention run`: what the worker's daily `retention` job does, now (docs/operations.md#retention)."""

from __future__ import annotations

from typing import Annotated

import typer

from edm.cli.common import emit, fail, run, settings
from edm.clock import utc_now
from edm.db.engine import create_engine, make_sessionmaker
from edm.operations import retention
from edm.system import runtime_settings

retention_app = typer.Typer(help="Retention: trim what grows without end.", no_args_is_help=True)


def outcome_table(outcomes: list[retention.Outcome], *, dry_run: bool) -> str:
    """One line per target: its name, period, rows deleted (or that a dry run would delete) and what it is."""
    rows_label = "would delete" if dry_run else "deleted"
    lines = [f"{'target':<24} {'kept':<14} {rows_label:>12}  what"]
    for o in outcomes:
        rows = "busy" if o.busy else str(o.rows)
        lines.append(f"{o.target:<24} {o.period:<14} {rows:>12}  {o.what}")
    total = sum(o.rows for o in outcomes)
    lines.append("")
    lines.append(f"dry run: nothing deleted; {total} rows would go" if dry_run else f"{total} rows deleted")
    if any(o.busy for o in outcomes):
        lines.append("busy: another process is trimming these now (a worker's retention job); run again later")
    return "\n".join(lines)


@retention_app.command("run")
@run
async def retention_run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be deleted; change nothing")] = False,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="only this target (repeatable); see the names printed")
    ] = None,
    batch: Annotated[int, typer.Option(help="rows per transaction", min=1, max=100_000)] = retention.BATCH,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Trim every table past its retention period now, in short batches; print the rows deleted per table."""
    unknown = sorted(set(only or ()) - set(retention.TARGET_NAMES))
    if unknown:
        fail(f"unknown target {', '.join(unknown)} (known: {', '.join(retention.TARGET_NAMES)})", code=2)
    cfg = settings()
    engine = create_engine(cfg)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as session:
            runtime = await runtime_settings.load(session)
        outcomes = await retention.run(
            sessionmaker, now=utc_now(), runtime=runtime, dry_run=dry_run, batch=batch, only=only or None
        )
    finally:
        await engine.dispose()
    emit(
        {"dry_run": dry_run, "targets": [o.as_dict() for o in outcomes]},
        as_json=as_json,
        text=outcome_table(outcomes, dry_run=dry_run),
    )
