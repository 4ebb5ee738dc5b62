"""Task commands: create, transitions, live status, reports and the per-recipient CSV export; and senders and
templates they need."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from edm.addresses import normalize_email
from edm.cli.common import emit, run, session_scope, settings
from edm.content import service as content
from edm.content.render import compile_template
from edm.db.engine import create_engine, make_sessionmaker
from edm.errors import BadInput
from edm.models.tasks import Task
from edm.tasks import actions, lookups, reports
from edm.tasks import service as tasks
from edm.tasks.reports import Bucket, DisplayStatus, Engagement, SubtaskFilters
from edm.tasks.stats import task_stats
from edm.users.service import find_user
from edm.vocabulary.tasks import DeliveryState, SendState, TaskStatus

task_app = typer.Typer(help="Tasks (bulk sends).", no_args_is_help=True)
sender_app = typer.Typer(help="Senders (From identities).", no_args_is_help=True)
template_app = typer.Typer(help="Templates.", no_args_is_help=True)


def parse_time(value: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadInput.field("at", f"{value!r} is not an ISO 8601 time such as 2026-12-01T09:00:00+08:00") from None
    if when.tzinfo is None:
        raise BadInput.field("at", "must include a UTC offset, e.g. +00:00")
    return when


async def _contacts_from_file(session: Any, user_id: int, path: Path) -> list[int]:
    if not path.exists():
        raise BadInput.field("contacts", f"file {path} not found")
    emails = [
        normalize_email(line.split(",")[0], field="contacts").normalized
        for line in path.read_text().splitlines()
        if line.strip() and "@" in line
    ]
    ids = await lookups.contact_ids(session, user_id=user_id, emails=emails)
    if len(ids) != len(set(emails)):
        raise BadInput.field("contacts", f"{len(set(emails)) - len(ids)} addresses are not contacts of the user")
    return ids


async def schedule_task(task_id: int, at: dt.datetime | None) -> Task:
    """Schedule a draft (as the API does): the checks in one transaction, then `_render_and_apply`."""
    async with session_scope() as session:
        plan = await tasks.plan_schedule(session, await tasks.get_task(session, task_id, user_id=None), at=at)
    return await _render_and_apply(task_id, plan)


async def _render_and_apply(task_id: int, plan: tasks.SchedulePlan) -> Task:
    """The templates' test render outside any transaction (it may take its whole time limit and must not hold
    the database meanwhile), then the transition in a transaction of its own."""
    await tasks.check_renders(plan.renders)
    async with session_scope() as session:
        task = await tasks.get_task(session, task_id, user_id=None)
        return await tasks.apply_schedule(session, task, plan=plan, actor="cli")


async def _discard_draft(task_id: int) -> None:
    """Delete the draft `task create` made but could not schedule: the command leaves nothing behind."""
    async with session_scope() as session:
        task = await tasks.get_task(session, task_id, user_id=None)
        if task.status == TaskStatus.DRAFT:
            await tasks.delete_task(session, task)


def _created(task: Task) -> dict[str, Any]:
    return {"id": task.id, "status": task.status, "schedule_at": task.schedule_at, "estimate": task.schedule_estimate}


@task_app.command("create")
@run
async def task_create(
    user: Annotated[str, typer.Option(help="owner: username, email or id")],
    name: Annotated[str, typer.Option()],
    sender: Annotated[str, typer.Option(help="sender local part or id")],
    template: Annotated[list[str], typer.Option(help="template name or id (repeatable; name:weight)")],
    tag: Annotated[list[str] | None, typer.Option(help="include contacts with this tag")] = None,
    exclude_tag: Annotated[list[str] | None, typer.Option(help="exclude contacts with this tag")] = None,
    all_contacts: Annotated[bool, typer.Option("--all", help="all the user's contacts")] = False,
    contacts: Annotated[Path | None, typer.Option(help="file of addresses, one per line")] = None,
    at: Annotated[str | None, typer.Option(help="schedule at (ISO 8601 with offset)")] = None,
    now: Annotated[bool, typer.Option("--now", help="schedule now")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a task: a draft, or scheduled with --at / --now."""
    if sum(bool(x) for x in (tag, all_contacts, contacts)) != 1:
        raise BadInput.field("recipients", "give exactly one of --tag, --all or --contacts")
    async with session_scope() as session:
        owner = await find_user(session, user)
        sender_id = await lookups.sender_id(session, user_id=owner.id, ref=sender)
        chosen = []
        for entry in template:
            ref, _, weight = entry.partition(":")
            chosen.append(
                {
                    "template_id": await lookups.template_id(session, user_id=owner.id, ref=ref),
                    "weight": int(weight) if weight.isdigit() else 1,
                }
            )
        excluded = [await lookups.tag_id(session, user_id=owner.id, ref=t) for t in exclude_tag or []]
        if tag:
            included = [await lookups.tag_id(session, user_id=owner.id, ref=t) for t in tag]
            rule: dict[str, Any] = {"type": "tag_based", "exclude_tag_ids": excluded, "include_tag_ids": included}
        elif all_contacts:
            rule = {"type": "all_contacts", "exclude_tag_ids": excluded}
        else:
            rule = {"type": "specific", "contact_ids": await _contacts_from_file(session, owner.id, contacts)}  # type: ignore[arg-type]
        task = await tasks.create_task(
            session,
            user_id=owner.id,
            actor="cli",
            values={"name": name, "sender_id": sender_id, "recipient_rule": rule, "templates": chosen},
        )
        # Checked with the task's creation, so a task that cannot be scheduled is never created.
        plan = await tasks.plan_schedule(session, task, at=parse_time(at) if at else None) if at or now else None
        data = _created(task)
    if plan is not None:
        try:
            data = _created(await _render_and_apply(task.id, plan))
        except BaseException:
            await _discard_draft(task.id)
            raise
    emit(
        data,
        as_json=as_json,
        text=f"task {data['id']} {data['status']}"
        + (f", {data['estimate']['sendable']} sendable recipients" if data["estimate"] else ""),
    )


ACTIONS: dict[str, Callable[..., Awaitable[Any]]] = {
    "pause": tasks.pause,
    "resume": tasks.resume,
    "cancel": tasks.cancel,
    "close": tasks.close,
    "unschedule": tasks.unschedule,
}


def _transition_command(action: str) -> None:
    @task_app.command(action)
    @run
    async def command(task_id: Annotated[int, typer.Argument()]) -> None:
        async with session_scope() as session:
            task = await tasks.get_task(session, task_id, user_id=None)
            await ACTIONS[action](session, task, actor="cli")
            status = task.status
        typer.echo(f"task {task_id} {status}")

    command.__doc__ = f"{action.capitalize()} a task."


for _action in ACTIONS:
    _transition_command(_action)


@task_app.command("copy")
@run
async def task_copy(
    task_id: Annotated[int, typer.Argument()], as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Copy a task (any status) into a new draft of the same owner: content and options, no schedule."""
    async with session_scope() as session:
        source = await tasks.get_task(session, task_id, user_id=None)
        task, omitted = await actions.copy_task(session, source, user_id=source.user_id, actor="cli")
        data = {"id": task.id, "name": task.name, "status": task.status, "omitted": omitted}
    emit(
        data,
        as_json=as_json,
        text=f"task {data['id']} {data['status']}: {data['name']}"
        + "".join(f"\n  not copied: {o['field']}: {o['message']}" for o in omitted),
    )


@task_app.command("batch")
@run
async def task_batch(
    action: Annotated[str, typer.Argument(help="pause|resume")],
    task_ids: Annotated[list[int], typer.Argument(help=f"up to {actions.BATCH_MAX} task ids")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pause or resume several tasks, each on its own; exits 1 when any of them was refused."""
    if action not in ("pause", "resume"):
        raise BadInput.field("action", f"{action!r} is not one of pause, resume")
    async with session_scope() as session:
        results = await actions.batch_transition(
            session,
            action=action,  # type: ignore[arg-type]
            task_ids=task_ids,
            user_id=None,
            is_admin=True,
            actor="cli",
        )
    emit(
        results,
        as_json=as_json,
        text="\n".join(
            f"task {r['task_id']} {r['status']}" if r["ok"] else f"task {r['task_id']} refused: {r['error']['message']}"
            for r in results
        ),
    )
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


@task_app.command("cancel-recipients")
@run
async def task_cancel_recipients(
    task_id: Annotated[int, typer.Argument()],
    email: Annotated[list[str] | None, typer.Option(help="recipient address (repeatable)")] = None,
    subtask: Annotated[list[int] | None, typer.Option(help="SubTask id (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cancel selected recipients that are still pending (charged ones are refunded)."""
    if bool(email) == bool(subtask):
        raise BadInput.field("recipients", "give --email or --subtask (not both)")
    async with session_scope() as session:
        task = await tasks.get_task(session, task_id, user_id=None)
        counts = await actions.cancel_subtasks(session, task, subtask_ids=subtask or None, emails=email or None)
    emit(
        counts,
        as_json=as_json,
        text=f"task {task_id}: {counts['cancelled']} cancelled, "
        f"{counts['not_pending']} no longer pending, {counts['not_found']} not found",
    )


@task_app.command("start")
@run
async def task_start(task_id: Annotated[int, typer.Argument()]) -> None:
    """Schedule a draft task now."""
    await schedule_task(task_id, at=None)
    typer.echo(f"task {task_id} scheduled")


@task_app.command("list")
@run
async def task_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    async with session_scope() as session:
        rows = [
            {
                "id": t.id,
                "user_id": t.user_id,
                "name": t.name,
                "status": t.status,
                "waiting_reason": t.waiting_reason,
                "pause_reason": t.pause_reason,
            }
            for t in await tasks.list_tasks(session, user_id=None)
        ]
    emit(
        rows,
        as_json=as_json,
        text="\n".join(
            f"{r['id']:>5} {r['status']:<10} {r['name']}"
            + (f"  ({r['pause_reason'] or r['waiting_reason']})" if r["pause_reason"] or r["waiting_reason"] else "")
            for r in rows
        )
        or "no tasks",
    )


async def status_line(session: Any, task_id: int) -> tuple[dict[str, Any], str]:
    task = await tasks.get_task(session, task_id, user_id=None)
    stats = await task_stats(session, task_id)
    why = task.pause_reason or task.waiting_reason
    line = (
        f"task {task.id} {task.status}{f' ({why})' if why else ''}: {stats['sent']} sent, "
        f"{stats['failed']} failed, {stats['queued'] + stats['retrying']} pending, {stats['in_flight']} in flight,"
        f" {stats['uncertain']} uncertain, {stats['excluded'] + stats['suppressed_later']} suppressed"
        f" of {stats['recipients']}; delivered {stats['delivered']}, bounced"
        f" {stats['hard_bounced'] + stats['soft_bounced'] + stats['rejected']}, complaints {stats['complained']}"
    )
    return {
        "id": task.id,
        "status": task.status,
        "pause_reason": task.pause_reason,
        "waiting_reason": task.waiting_reason,
        "waiting_until": task.waiting_until,
        "stats": stats,
    }, line


@task_app.command("status")
@run
async def task_status(
    task_id: Annotated[int, typer.Argument()],
    watch: Annotated[bool, typer.Option("--watch", help="refresh every 2 s until the task is final")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Live statistics of a task (computed from its SubTask rows)."""
    while True:
        async with session_scope() as session:
            data, line = await status_line(session, task_id)
        emit(data, as_json=as_json, text=line)
        if not watch or data["status"] in ("completed", "cancelled", "closed", "paused"):
            return
        await asyncio.sleep(2)


REPORT_SECTIONS = ("services", "templates", "links", "domains", "timeline", "heatmap")
CLI_LINKS = 100  # links listed by `task report`; the API pages through all of them


E = TypeVar("E", bound=enum.Enum)


def _choice(kind: type[E], value: str | None, field: str) -> E | None:
    """An option value of a closed vocabulary, or exit 2 naming the accepted values."""
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise BadInput.field(field, f"{value!r} is not one of {', '.join(str(k.value) for k in kind)}") from None


async def _section(session: Any, task: Task, name: str, bucket: Bucket) -> Any:
    if name == "services":
        return await reports.by_service(session, task.id, admin=True)
    if name == "templates":
        return await reports.by_template(session, task.id)
    if name == "links":
        return await reports.by_link(session, task.id, after_id=None, limit=CLI_LINKS + 1)
    if name == "domains":
        return await reports.by_domain(session, task.id)
    if name == "timeline":
        return await reports.timeline(session, task, bucket)
    return await reports.heatmap(session, task)


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def _report_table(name: str, data: Any) -> Table:
    """One section of `task report` as a Rich table."""
    if name == "services":
        return _table(
            "Services (of the last attempt)",
            ["label", "name", "attempts", "sent", "failed", "bounced", "delivered", "avg ms"],
            [
                [
                    r["label"],
                    r.get("name"),
                    ", ".join(f"{k} {v}" for k, v in sorted(r["attempts"].items())),
                    r["sent"],
                    r["failed"],
                    r["bounced"],
                    r["delivered"],
                    r["avg_latency_ms"],
                ]
                for r in data
            ],
        )
    if name == "templates":
        return _table(
            "Templates (A/B)",
            [
                "template",
                "weight",
                "recipients",
                "sent",
                "reached",
                "delivery",
                "open",
                "click",
                "bounce",
                "unsubscribe",
                "complaint",
            ],
            [
                [
                    r["name"],
                    r["weight"],
                    r["recipients"],
                    r["sent"],
                    r["reached"],
                    *(
                        _pct(r["rates"][k])
                        for k in ("delivery", "open_human", "click", "bounce", "unsubscribe", "complaint")
                    ),
                ]
                for r in data
            ],
        )
    if name == "links":
        more = [["… more links: see GET /api/v1/tasks/{id}/report/links", "", "", ""]] if len(data) > CLI_LINKS else []
        return _table(
            "Links",
            ["url", "human clicks", "machine clicks", "unique human clickers"],
            [[r["url"], r["clicks_human"], r["clicks_machine"], r["unique_human_clickers"]] for r in data[:CLI_LINKS]]
            + more,
        )
    if name == "domains":
        other = data["other"]
        return _table(
            "Recipient domains (top 20 by sent)",
            ["domain", "recipients", "sent", "bounced", "opened"],
            [[r["domain"], r["recipients"], r["sent"], r["bounced"], r["opened"]] for r in data["items"]]
            + (
                [
                    [
                        f"other ({other['domains']} domains)",
                        other["recipients"],
                        other["sent"],
                        other["bounced"],
                        other["opened"],
                    ]
                ]
                if other
                else []
            ),
        )
    if name == "timeline":
        return _table(
            f"Timeline by {data['bucket']} ({data['timezone']})",
            ["start", *reports.TIMELINE_METRICS],
            [[r["start"], *(r[m] for m in reports.TIMELINE_METRICS)] for r in data["items"]]
            + [["total", *(data["totals"][m] for m in reports.TIMELINE_METRICS)]],
        )
    return _table(
        f"Human opens, weekday × hour ({data['timezone']})",
        ["", *map(str, range(24))],
        [[day[:3], *cells] for day, cells in zip(data["weekdays"], data["cells"], strict=True)],
    )


@task_app.command("report")
@run
async def task_report(
    task_id: Annotated[int, typer.Argument()],
    section: Annotated[str | None, typer.Option(help="|".join(REPORT_SECTIONS) + " (default: all)")] = None,
    bucket: Annotated[str, typer.Option(help="timeline buckets: hour|day")] = "day",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Task reports: services, templates, links, domains, timeline and the opens heat map."""
    if section is not None and section not in REPORT_SECTIONS:
        raise BadInput.field("section", f"{section!r} is not one of {', '.join(REPORT_SECTIONS)}")
    sections = [section] if section else list(REPORT_SECTIONS)
    buckets = _choice(Bucket, bucket, "bucket") or Bucket.DAY
    async with session_scope() as session:
        task = await tasks.get_task(session, task_id, user_id=None)
        data = {name: await _section(session, task, name, buckets) for name in sections}
    if as_json:
        emit(data, as_json=True)
        return
    console = Console(width=None if sys.stdout.isatty() else 160)
    for name in sections:
        console.print(_report_table(name, data[name]))


@task_app.command("export")
@run
async def task_export(
    task_id: Annotated[int, typer.Argument()],
    out: Annotated[Path, typer.Option(help="CSV file to write; - for standard output")],
    send_state: Annotated[str | None, typer.Option()] = None,
    delivery_state: Annotated[str | None, typer.Option()] = None,
    display_status: Annotated[str | None, typer.Option()] = None,
    engagement: Annotated[str | None, typer.Option(help="opened|clicked|unsubscribed|none")] = None,
    email: Annotated[str | None, typer.Option(help="part of the address")] = None,
    service_id: Annotated[int | None, typer.Option(help="service of the last attempt")] = None,
    bom: Annotated[bool, typer.Option("--bom", help="start with a UTF-8 BOM (for spreadsheets)")] = False,
) -> None:
    """Write the task's per-recipient results as CSV (the same file as GET /tasks/{id}/subtasks.csv)."""
    filters = SubtaskFilters(
        send_state=_choice(SendState, send_state, "send_state"),
        delivery_state=_choice(DeliveryState, delivery_state, "delivery_state"),
        display_status=_choice(DisplayStatus, display_status, "display_status"),
        engagement=_choice(Engagement, engagement, "engagement"),
        email=email,
        service_id=service_id,
    )
    engine = create_engine(settings())
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as session:
            await tasks.get_task(session, task_id, user_id=None)
        to_stdout = str(out) == "-"
        opened: contextlib.AbstractContextManager[IO[str]] = (
            contextlib.nullcontext(sys.stdout) if to_stdout else out.open("w", encoding="utf-8", newline="")
        )
        with opened as target:
            target.write(("\ufeff" if bom else "") + reports.csv_header())
            written = 0
            async for rows in reports.export_rows(sessionmaker, task_id, filters):
                target.write(reports.to_csv(rows))
                written += len(rows)
    finally:
        await engine.dispose()
    if not to_stdout:
        typer.echo(f"wrote {written} recipients to {out}")


@sender_app.command("create")
@run
async def sender_create(
    user: Annotated[str, typer.Option()],
    local_part: Annotated[str, typer.Option(help="the part before @; the domain comes from the service")],
    display_name: Annotated[str, typer.Option()] = "",
    reply_to: Annotated[str | None, typer.Option()] = None,
) -> None:

    async with session_scope() as session:
        owner = await find_user(session, user)
        sender = await content.create_sender(
            session,
            user_id=owner.id,
            values={"local_part": local_part, "display_name": display_name, "reply_to": reply_to},
        )
    typer.echo(f"created sender {sender.local_part} (id {sender.id})")


@template_app.command("create")
@run
async def template_create(
    user: Annotated[str, typer.Option()],
    name: Annotated[str, typer.Option()],
    subject: Annotated[str, typer.Option()],
    html_file: Annotated[Path, typer.Option(help="file with the HTML (Jinja2)")],
    text_file: Annotated[Path | None, typer.Option(help="optional text part")] = None,
) -> None:

    for path in (html_file, text_file):
        if path is not None and not path.exists():
            raise BadInput.field("file", f"{path} not found")
    html = html_file.read_text()
    text = text_file.read_text() if text_file else None
    compile_template(subject=subject, html=html, text=text)  # syntax errors as one line, with the line number
    async with session_scope() as session:
        owner = await find_user(session, user)
        row = await content.create_template(
            session, user_id=owner.id, values={"name": name, "subject": subject, "html": html, "text": text}
        )
    typer.echo(f"created template {row.name} (id {row.id})")
