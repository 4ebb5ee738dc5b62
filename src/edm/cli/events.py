"""Event store commands: what arrived from providers and reports, and applying stored events by hand."""

from __future__ import annotations

from typing import Annotated

import typer

from edm.cli.common import emit, run, session_scope, settings
from edm.db.engine import create_engine, make_sessionmaker
from edm.events import apply as event_apply
from edm.events.queries import EventFilter, newest_events
from edm.events.schemas import EventOut
from edm.models.events import MatchStatus

events_app = typer.Typer(help="Provider events, bounce reports and their matching.", no_args_is_help=True)


@events_app.command("list")
@run
async def events_list(
    unmatched: Annotated[bool, typer.Option("--unmatched", help="only events that matched no SubTask")] = False,
    task: Annotated[int | None, typer.Option(help="only this task's events")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest events, with how each was matched."""
    filters = EventFilter(match_status=MatchStatus.UNMATCHED if unmatched else None, task_id=task)
    async with session_scope() as session:
        rows = [EventOut.model_validate(e).model_dump() for e in await newest_events(session, filters, limit=limit)]
    emit(
        rows,
        as_json=as_json,
        text="\n".join(
            f"{r['id']:>8} {r['received_at']:%Y-%m-%d %H:%M:%S} {r['source']:<10} {r['event_type']:<13} "
            f"{r['match_status']:<9} {r['match_reason'] or '':<22} {r['recipient'] or ''}"
            for r in rows
        )
        or "no events",
    )


@events_app.command("apply")
@run
async def events_apply() -> None:
    """Apply every stored event now (workers do this continuously; useful without a running worker)."""

    cfg = settings()
    engine = create_engine(cfg)
    try:
        total = await event_apply.drain(make_sessionmaker(engine), simulated_matches_any=cfg.fake_provider_allowed)
    finally:
        await engine.dispose()
    typer.echo(
        f"applied {total.processed} events: {total.matched} matched, {total.unmatched} unmatched, "
        f"{total.ignored} ignored, {total.reconciled} uncertain sends confirmed"
    )
