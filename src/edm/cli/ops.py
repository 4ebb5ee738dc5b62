"""Operations commands: db, serve, worker, stats verify, queue (view, pause-all, resume-all), dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from edm.cli.common import emit, fail, run, session_scope, settings
from edm.clock import utc_now
from edm.dashboards import dashboard as boards
from edm.dashboards.queue_view import queue_view, set_paused
from edm.db.engine import create_engine, make_sessionmaker
from edm.email_services.history import verify as verify_service_hours
from edm.migrations.migrate import current_revision, head_revision, schema_is_current, upgrade
from edm.observability import configure_logging
from edm.settings import Settings
from edm.system.service import CLI
from edm.tasks.verify import verify as verify_stats
from edm.users.service import find_user, first_admin

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
stats_app = typer.Typer(help="Statistics checks.", no_args_is_help=True)
queue_app = typer.Typer(help="The sending queue: view, pause all sending, resume.", invoke_without_command=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations (idempotent)."""
    cfg = settings()
    upgrade(cfg.database_url)
    typer.echo(f"schema at revision {head_revision()}")


@db_app.command("current")
@run
async def db_current() -> None:
    """Show the schema revision."""
    engine = create_engine(settings())
    try:
        typer.echo(f"current: {await current_revision(engine)}  head: {head_revision()}")
    finally:
        await engine.dispose()


async def require_current_schema() -> None:
    engine = create_engine(settings())
    try:
        current = await schema_is_current(engine)
    finally:
        await engine.dispose()
    if not current:
        fail("the database schema is not current: run `edm db upgrade`", code=1)


def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    workers: Annotated[int, typer.Option(help="server processes")] = 1,
) -> None:
    """Run the web app: the web console, the API and its docs, tracking, unsubscribe pages and webhooks."""
    import uvicorn

    cfg = settings()
    asyncio.run(require_current_schema())
    configure_logging(level=cfg.log_level, fmt=cfg.log_format)
    with shared_metrics(workers):
        uvicorn.run(
            "edm.cli.ops:app_factory", factory=True, **uvicorn_options(cfg, host=host, port=port, workers=workers)
        )


def uvicorn_options(cfg: Settings, *, host: str | None, port: int | None, workers: int = 1) -> dict[str, Any]:
    """How `edm serve` runs uvicorn. uvicorn's own logging set-up would write plain-text lines, and its access lines
    carry each request's path, tracking and unsubscribe tokens included: its loggers go through ours instead
    (`log_config=None`), and the app writes one `http.request` line per request with the route template
    (docs/operations.md#logs)."""
    return {
        "host": host or cfg.host,
        "port": port or cfg.port,
        "workers": workers,
        "log_level": cfg.log_level.lower(),
        "log_config": None,
        "access_log": False,
    }


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def shared_metrics(processes: int) -> Iterator[None]:
    """Several server processes share one port, and a scrape reaches any one of them: their metrics must add up
    (docs/operations.md#metrics). prometheus-client's multiprocess mode does it with files every process writes; a
    fresh directory per `edm serve`, removed when it stops, unless PROMETHEUS_MULTIPROC_DIR names one already."""
    if processes < 2 or os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    directory = tempfile.mkdtemp(prefix="edm-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory  # inherited by the server processes, which start after this
    try:
        yield
    finally:
        os.environ.pop(MULTIPROCESS_DIR, None)
        shutil.rmtree(directory, ignore_errors=True)


def app_factory():  # type: ignore[no-untyped-def]
    from edm.app import create_app  # loaded by `serve` only (start-up time of the other commands)

    cfg = settings()
    configure_logging(level=cfg.log_level, fmt=cfg.log_format)  # again: `--workers N` starts fresh processes
    app = create_app(cfg)
    settle_heap()
    share_the_gil()
    return app


def settle_heap() -> None:
    """Everything built so far (modules, metadata, routes) lives for the whole process: move it out of the
    collector's sight, and collect young objects less often. A 100-event webhook batch allocates tens of
    thousands of short-lived objects; with the defaults, full collections over the long-lived heap showed up in
    the p99 of webhook acknowledgements, and took a quarter of the `events` job's CPU (bench/RESULTS.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


SWITCH_INTERVAL = 0.001  # seconds


def share_the_gil() -> None:
    """Templates render, and spreadsheets are parsed, on worker threads (a preview may take up to its 2 s limit,
    a hostile workbook seconds). A thread that only computes gives the GIL up every switch interval; at the
    default 5 ms, an event loop that needs the GIL a dozen times for a request or a heartbeat waits 5 ms each
    time. 1 ms keeps the loop answering within a few ms meanwhile (the web app and the worker alike)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


GC_YOUNG_THRESHOLD = 20_000


def worker(
    concurrency: Annotated[int | None, typer.Option(help="dispatch loops")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="answer /metrics on this port (EDM_WORKER_METRICS_PORT; 0: any free port)"),
    ] = None,
) -> None:
    """Run dispatch loops and maintenance jobs until SIGTERM/SIGINT (graceful)."""
    from edm.metrics.server import MetricsPortUnavailable
    from edm.worker.dispatcher import Worker  # loaded by `worker` only (start-up time of the other commands)

    cfg = settings()
    configure_logging(level=cfg.log_level, fmt=cfg.log_format)
    share_the_gil()

    async def main() -> None:
        await require_current_schema()
        engine = create_engine(cfg, application_name="edm-worker")
        try:
            worker = Worker(cfg, make_sessionmaker(engine), concurrency=concurrency, metrics_port=metrics_port)
            settle_heap()
            await worker.run()
        finally:
            await engine.dispose()

    try:
        asyncio.run(main())
    except MetricsPortUnavailable as exc:
        fail(str(exc), code=2)


@stats_app.command("verify")
@run
async def stats_verify(
    task_id: Annotated[int | None, typer.Argument(help="task id; all tasks when omitted")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recount SubTasks row by row and compare with the statistics; without a task id, also each service's health
    history (its attempts per hour) with its attempts."""
    async with session_scope() as session:
        report = await verify_stats(session, task_id)
        if task_id is None:
            report += await verify_service_hours(session)
    emit(
        report,
        as_json=as_json,
        text="\n".join(
            ("task " + str(r["task_id"]) if "task_id" in r else "service " + str(r["service_id"]))
            + f": {'ok' if r['ok'] else 'MISMATCH ' + str(r['differences'])}"
            for r in report
        )
        or "no tasks",
    )
    if any(not r["ok"] for r in report):
        raise typer.Exit(1)


def _when(at: object) -> str:
    return "-" if at is None else f"{at:%Y-%m-%d %H:%M:%S}Z"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def queue_table(view: dict[str, Any]) -> str:
    """The queue view as plain-text tables (what `edm queue` prints)."""
    lines = [
        f"sending: {'PAUSED (edm queue resume-all)' if view['sending_paused'] else 'running'}",
        f"pending {view['pending']} (retrying {view['retrying']}), in flight {view['in_flight']}, "
        f"oldest pending {_age(view['oldest_pending_age_seconds'])}",
        "",
        f"{'user':<24} {'pending':>10} {'retrying':>9} {'paused':>9} {'tasks':>6}  oldest",
    ]
    lines += [
        f"{(u['username'] or u['user_id'])!s:<24} {u['pending']:>10} {u['retrying']:>9} "
        f"{u['in_paused_tasks']:>9} {u['tasks']:>6}  {_age(u['oldest_pending_age_seconds'])}"
        for u in view["users"]
    ] or ["(no pending SubTasks)"]
    if view["users_total"] > len(view["users"]):
        lines.append(f"... {view['users_total'] - len(view['users'])} more users")
    lines += ["", f"{'service':<24} {'provider':<10} {'enabled':<8} {'in flight':>9} {'expired':>8}  oldest"]
    lines += [
        f"{s['name'][:24]:<24} {s['provider']:<10} {'yes' if s['enabled'] else 'no':<8} {s['in_flight']:>9} "
        f"{s['expired_leases']:>8}  {_when(s['oldest_allocated_at'])}"
        for s in view["services"]
    ] or ["(no services)"]
    lines += ["", f"{'worker':<40} {'host':<20} {'pid':>7}  last heartbeat"]
    lines += [
        f"{w['id'][:40]:<40} {w['hostname'][:20]:<20} {w['pid']:>7}  {_when(w['last_heartbeat_at'])} "
        f"({_age(w['heartbeat_age_seconds'])} ago{'' if w['alive'] else ', NOT ALIVE'})"
        for w in view["workers"]
    ] or ["(no workers)"]
    return "\n".join(lines)


@queue_app.callback()
@run
async def queue_show(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Pending per user, in flight per service, workers, and whether sending is paused."""
    if ctx.invoked_subcommand is not None:
        return
    async with session_scope() as session:
        view = await queue_view(session, now=utc_now())
    emit(view, as_json=as_json, text=queue_table(view))


async def _pause(paused: bool) -> None:
    async with session_scope() as session:
        result = await set_paused(session, paused, actor=CLI)
    state = "paused" if paused else "running"
    typer.echo(f"sending {state}" + ("" if result["changed"] else " (unchanged)"))


@queue_app.command("pause-all")
@run
async def queue_pause_all() -> None:
    """Pause all sending (no claim binds a SubTask; tasks show global_pause). Audited."""
    await _pause(True)


@queue_app.command("resume-all")
@run
async def queue_resume_all() -> None:
    """Resume sending after pause-all. Audited."""
    await _pause(False)


def dashboard_text(board: dict[str, Any]) -> str:
    """The dashboard as plain text (what `edm dashboard` prints)."""
    c = board["credit"]
    lines = [
        f"credit {c['balance']}" + (f" (LOW: under {c['low_credit_threshold']})" if c["low"] else ""),
        "campaigns: "
        + (", ".join(f"{status} {n}" for status, n in sorted(board["tasks_by_status"].items())) or "none"),
        "",
        f"{'window':<7} {'sent':>10} {'opened':>10} {'clicked':>10} {'replied':>10}",
    ]
    lines += [
        f"{window:<7} {a['sent']:>10} {a['opened']:>10} {a['clicked']:>10} {a['replied']:>10}"
        for window, a in board["activity"].items()
    ]
    if board["attention"]:
        lines += ["", "needs attention:"]
        lines += [
            f"  task {t['task_id']} {t['name']!r}: {t['status']}, {t['pause_reason'] or t['waiting_reason']}"
            + (f" ({t['pause_detail']})" if t["pause_detail"] else "")
            for t in board["attention"]
        ]
    if "alerts" in board:
        lines += ["", "alerts:"] + ([f"  [{a['severity']}] {a['message']}" for a in board["alerts"]] or ["  none"])
        lines += ["", f"{'service':<24} {'state':<12} {'used today':>11} {'quota':>9}  next reset"]
        lines += [
            f"{s['name'][:24]:<24} {s['state']:<12} {s['used_today']:>11} {s['daily_quota']:>9}  "
            f"{_when(s['next_reset'])}"
            for s in board["services"]
        ] or ["(no services)"]
    return "\n".join(lines)


@run
async def dashboard(
    user: Annotated[str | None, typer.Option(help="whose dashboard (username or id); default: the first admin")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="the admin dashboard (services, queue, alerts)")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A user's dashboard (credit, campaigns, activity), or with --admin the operator's view on top of it."""
    async with session_scope() as session:
        who = await find_user(session, user) if user is not None else await first_admin(session)
        if who is None:
            fail("no admin user exists: give --user", code=2)
            return
        build = boards.admin_dashboard if admin else boards.user_dashboard
        board = await build(session, who, now=utc_now())
    emit(board, as_json=as_json, text=dashboard_text(board))
