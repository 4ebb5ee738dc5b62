"""`edm demo` (docs/operations.md#the-demo): a fresh SQLite database, a local SMTP sink, demo data, a scheduled task,
then the web server and a worker in one process. Mail visibly flows into the demo mailbox. The demo leaves its
settings in `var/edm-demo.env`, where the `edm` CLI run in the same directory finds them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select

from edm import clock
from edm.cli.common import DEMO_ENV_FILE, DEPLOYMENT_VARIABLES, ENV_FILE_VARIABLE, run
from edm.cli.tasks import status_line
from edm.contacts import fields, tags, upsert
from edm.content import service as content
from edm.db.engine import create_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.email_services import service as services
from edm.migrations.migrate import upgrade_async
from edm.models.users import Role
from edm.observability import configure_logging
from edm.security.crypto import Vault
from edm.settings import Settings
from edm.tasks import reports
from edm.tasks import service as tasks
from edm.users.service import create_token, create_user

DEMO_DB = Path("var/edm-demo.db")
MAILBOX = Path("var/demo-mailbox")
FIRST_NAMES = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Guido", "Radia"]

WELCOME_HTML = """<html><body style="font-family:sans-serif">
<h1>Hello {{ contact.first_name | default('there') }}!</h1>
<p>This is the EDM demo. You are receiving it because you are contact #{{ contact.attributes.n }}.</p>
<p><a href="https://example.com/winter-sale">See the winter sale</a></p>
<p style="font-size:12px"><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>"""
NEWS_HTML = """<html><body><h2>News for {{ name | default('you') }}</h2>
<ul><li>Per-recipient ledger</li><li>Send-time service choice</li><li>Durable rate limits</li></ul>
</body></html>"""


def demo_settings(port: int) -> tuple[Settings, dict[str, str]]:
    """The demo's settings, and the values the demo chose itself (the environment's own always win)."""
    defaults = {
        "EDM_ENV": "demo",
        "EDM_DATABASE_URL": f"sqlite:///{DEMO_DB.resolve()}",  # absolute: the CLI may run from elsewhere
        # This demo's own key (signing its links, encrypting its services' credentials), new on every run.
        "EDM_SECRET_KEY": secrets.token_urlsafe(32),
        "EDM_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    chosen = {name: value for name, value in defaults.items() if name not in os.environ}
    os.environ.update(chosen)
    os.environ.setdefault("EDM_LOG_LEVEL", "WARNING")
    return Settings(), chosen


def write_cli_settings(chosen: dict[str, str]) -> None:
    """Write the settings the demo chose for the CLI: `edm` reads the file in this directory (see
    `edm.cli.common.settings_file`). Only what the demo chose goes in, never a value from the environment,
    which may hold a real deployment's secrets; owner-only, as it holds this demo's key."""
    lines = [
        "# Written by `edm demo` for the `edm` CLI in this directory. Demo settings: never use them in a",
        f"# deployment. Elsewhere: {ENV_FILE_VARIABLE}=<this file> edm ...",
        *(f"{name}={shlex.quote(value)}" for name, value in chosen.items()),
    ]
    DEMO_ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    temp = DEMO_ENV_FILE.with_name(f".{DEMO_ENV_FILE.name}.tmp")
    temp.unlink(missing_ok=True)
    with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(temp, DEMO_ENV_FILE)


async def seed(settings: Settings, sessionmaker: Any, *, smtp_port: int, recipients: int = 200) -> dict[str, Any]:
    admin_password = settings.demo_admin_password or secrets.token_urlsafe(12)
    vault = Vault.from_settings(settings)
    async with unit_of_work(sessionmaker) as session:
        admin = await create_user(
            session, username="admin", email="admin@demo.example", password=admin_password, role=Role.ADMIN
        )
        admin_token, _ = await create_token(session, user_id=admin.id, name="demo")
        user_password = secrets.token_urlsafe(12)
        user = await create_user(
            session,
            username="demo",
            email="demo@demo.example",
            password=user_password,
            credit=10_000,
            credit_reason="demo credit",
        )
        user_token, _ = await create_token(session, user_id=user.id, name="demo")
        smtp = {"host": "127.0.0.1", "port": smtp_port, "security": "none"}
        specs = [
            {
                "name": "smtp-a",
                "provider": "smtp",
                "domain": "mail-a.demo.example",
                "options": smtp,
                "sending_interval_seconds": 0.1,
                "max_concurrency": 2,
                "daily_quota": 120,
            },
            {
                "name": "smtp-b",
                "provider": "smtp",
                "domain": "mail-b.demo.example",
                "options": smtp,
                "sending_interval_seconds": 0.25,
                "max_concurrency": 2,
                "daily_quota": 1000,
            },
            # The simulated ESP posts signed delivery, bounce and complaint events back to this demo's own
            # webhook endpoint, so the task statistics show deliveries and bounces arriving.
            {
                "name": "fake-esp",
                "provider": "fake",
                "domain": "esp.demo.example",
                "options": {
                    "transient_pct": 5,
                    "throttle_pct": 2,
                    "latency_ms": 30,
                    "retry_after": 2,
                    "seed": 7,
                    "events": {
                        "url": settings.public_url,
                        "delay_ms": 500,
                        "delivered_pct": 88,
                        "soft_bounce_pct": 4,
                        "hard_bounce_pct": 4,
                        "complaint_pct": 1,
                        "seed": 7,
                    },
                },
                "sending_interval_seconds": 0.5,
                "max_concurrency": 2,
                "daily_quota": 1000,
            },
        ]
        webhook_secret = secrets.token_urlsafe(24)
        for spec in specs:
            credentials = {"webhook_secrets": [webhook_secret]} if spec["provider"] == "fake" else {}
            svc = await services.create_service(session, vault, values=spec, credentials=credentials, fake_allowed=True)
            await services.map_user(session, user_id=user.id, service_id=svc.id, actor_user_id=admin.id)
        customers = await tags.create_tag(session, user_id=user.id, name="customers")
        vip = await tags.create_tag(session, user_id=user.id, name="vip", parent_id=customers.id)
        await upsert.bulk_insert_contacts(
            session,
            user_id=user.id,
            rows=[_contact(i) for i in range(recipients)],
            row_tag_ids=[[vip.id if i % 10 == 0 else customers.id] for i in range(recipients)],
        )
        sender = await content.create_sender(
            session, user_id=user.id, values={"local_part": "news", "display_name": "EDM Demo"}
        )
        welcome = await content.create_template(
            session,
            user_id=user.id,
            values={
                "name": "welcome",
                "subject": "Welcome, {{ contact.first_name }}",
                "html": WELCOME_HTML,
                "preheader": "A demo of EDM",
            },
        )
        news = await content.create_template(
            session, user_id=user.id, values={"name": "news", "subject": "EDM news", "html": NEWS_HTML}
        )
        task = await tasks.create_task(
            session,
            user_id=user.id,
            actor="demo",
            values={
                "name": "Demo campaign",
                "sender_id": sender.id,
                "recipient_rule": {"type": "tag_based", "include_tag_ids": [customers.id], "exclude_tag_ids": []},
                "templates": [{"template_id": welcome.id, "weight": 3}, {"template_id": news.id, "weight": 1}],
            },
        )
        plan = await tasks.plan_schedule(session, task, at=None)
    await tasks.check_renders(plan.renders)  # as every entry point does: outside the transaction
    async with unit_of_work(sessionmaker) as session:
        task = await tasks.get_task(session, task.id, user_id=None)
        await tasks.apply_schedule(session, task, plan=plan, actor="demo")
    return {
        "admin_password": admin_password,
        "admin_token": admin_token,
        "user_password": user_password,
        "user_token": user_token,
        "task_id": task.id,
    }


def _contact(i: int) -> dict[str, Any]:
    first_name = FIRST_NAMES[i % len(FIRST_NAMES)]
    return fields.clean_contact_values(
        {
            "email": f"person{i}@recipients.demo.example",
            "first_name": first_name,
            "name": f"{first_name} {i}",
            "status": "active",
            "custom_attributes": {"n": i},
            "source": "demo",
        }
    )


async def demo_main(port: int, smtp_port: int, exit_when_done: bool, recipients: int) -> None:
    # The web app and the worker are loaded by the commands that run them only: importing them costs every
    # other `edm` command ~0.4 s of start-up. They sit above the CLI's other imports, so this dodges no cycle.
    import uvicorn

    from edm.app import create_app
    from edm.worker.dispatcher import Worker

    for path in (DEMO_DB, Path(f"{DEMO_DB}-wal"), Path(f"{DEMO_DB}-shm")):
        path.unlink(missing_ok=True)
    shutil.rmtree(MAILBOX, ignore_errors=True)
    settings, chosen = demo_settings(port)
    write_cli_settings(chosen)
    configure_logging(level=settings.log_level, fmt="text")
    await upgrade_async(settings.database_url)
    sink = SmtpSink(port=smtp_port, store_dir=MAILBOX).start()
    engine = create_engine(settings)
    sessionmaker = make_sessionmaker(engine)
    info = await seed(settings, sessionmaker, smtp_port=sink.port, recipients=recipients)
    app = create_app(settings, engine=engine)
    app.state.mailbox_dir = MAILBOX
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    worker = Worker(settings, sessionmaker, concurrency=4)
    _banner(settings, info, sink.port, chosen)
    tasks_ = [asyncio.create_task(server.serve()), asyncio.create_task(worker.run(install_signals=False))]
    try:
        await _follow(sessionmaker, info["task_id"], status_line, exit_when_done)
    finally:
        # The worker first: its simulated ESP posts its last events to the server while it closes.
        worker.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.gather(tasks_[1], return_exceptions=True)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks_, return_exceptions=True)
        sink.stop()
        await engine.dispose()
    typer.echo(
        f"mailbox: {len(list(MAILBOX.glob('*.eml')))} messages captured in {MAILBOX}/ "
        f"(`{_cli_command()} mailbox` lists them, `{_cli_command()} mailbox show N` opens one)"
    )


EVENTS_GRACE_SECONDS = 20.0


async def _awaiting_events(session: Any, task_id: int) -> int:
    """SubTasks sent through the simulated ESP whose delivery report has not been applied yet."""
    return await reports.awaiting_delivery_reports(session, task_id, provider="fake")


def _banner(settings: Settings, info: dict[str, Any], smtp_port: int, chosen: dict[str, str]) -> None:
    base = settings.public_url
    typer.echo(f"""
EDM demo is running (SQLite at {DEMO_DB}, SMTP sink on 127.0.0.1:{smtp_port}).
  web console:                 {base}/
    log in as the demo user:   username demo, password {info["user_password"]}
    or as the admin:           username admin, password below
  admin password (shown once): {info["admin_password"]}
  admin API token:             {info["admin_token"]}
  demo user API token:         {info["user_token"]}
  demo mailbox:                {base}/demo/mailbox
  task statistics:             curl -H 'Authorization: Bearer {info["user_token"]}' \\
                                  {base}/api/v1/tasks/{info["task_id"]}/stats
  API docs:                    {base}/api/docs
{_cli_hint(chosen)}
Press Ctrl-C to stop.
""")


def _cli_hint(chosen: dict[str, str]) -> str:
    """How to use the CLI on this demo's database while it runs (or after)."""
    cli = _cli_command()
    if any(name in os.environ and name not in chosen for name in DEPLOYMENT_VARIABLES):
        return f"  CLI:                         {cli} task list  (with the same EDM_* environment as this demo)"
    return (
        f"  CLI in this directory:       {cli} user list, {cli} task list  (settings: {DEMO_ENV_FILE})\n"
        f"  CLI elsewhere:               {ENV_FILE_VARIABLE}={DEMO_ENV_FILE.resolve()} edm task list"
    )


def _cli_command() -> str:
    """The `edm` this demo was started with, as typed from here (`.venv/bin/edm` under `make run`)."""
    program = Path(sys.argv[0])
    on_path = shutil.which("edm")
    if program.name != "edm" or (on_path is not None and Path(on_path).resolve() == program.resolve()):
        return "edm"
    with contextlib.suppress(ValueError):
        return str(program.resolve().relative_to(Path.cwd().resolve()))
    return str(program)


# Two recipients answer the demo campaign (one of them a person, one an out-of-office), so that the console's
# Conversations have something to show: mail received as every inbound source hands it over (docs/conversations.md).
REPLIES = (
    ("Re: {subject}", "Hello! Do you ship to Hangzhou as well?\r\n\r\n> {subject}\r\n", ""),
    ("Automatic reply: {subject}", "I am out of the office until Monday.\r\n", "Auto-Submitted: auto-replied\r\n"),
)


async def _customers_answer(sessionmaker: Any, task_id: int) -> str:
    from edm.conversations import ingest  # the CLI's other commands need none of it at start-up
    from edm.models.tasks import SubTask
    from edm.providers.inbound import InboundMail

    async with unit_of_work(sessionmaker) as session:
        sent = (
            (
                await session.execute(
                    select(SubTask)
                    .where(SubTask.task_id == task_id, SubTask.sent_at.is_not(None), SubTask.message_id.is_not(None))
                    .order_by(SubTask.id)
                    .limit(len(REPLIES))
                )
            )
            .scalars()
            .all()
        )
        for n, (subtask, (subject, body, extra)) in enumerate(zip(sent, REPLIES, strict=False)):
            ours = str(subtask.message_id)
            ours = ours if ours.startswith("<") else f"<{ours}>"
            raw = (
                f"From: {subtask.recipient_email}\r\nTo: {subtask.from_address}\r\n"
                f"Subject: {subject.format(subject=subtask.subject_sent or '')}\r\n"
                f"Message-ID: <demo-reply-{n}.{subtask.public_id}@customer.demo.example>\r\n"
                f"In-Reply-To: {ours}\r\nReferences: {ours}\r\n{extra}"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                + body.format(subject=subtask.subject_sent or "")
            )
            mail = InboundMail(raw=raw.encode(), source="smtp", service_id=subtask.service_id)
            await ingest.receive(session, mail, now=clock.utc_now())
    return f"{len(sent)} recipients answered: see Conversations in the console (as the demo user)"


async def _follow(sessionmaker: Any, task_id: int, status_line: Any, exit_when_done: bool) -> None:
    last = ""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    completed_at: float | None = None
    while not stop.is_set():
        async with sessionmaker() as session:
            data, line = await status_line(session, task_id)
            awaiting_events = await _awaiting_events(session, task_id)
        if line != last:
            typer.echo(line)
            last = line
        if data["status"] == "completed" and completed_at is None:
            completed_at = loop.time()
            typer.echo(await _customers_answer(sessionmaker, task_id))
        if data["status"] == "completed" and exit_when_done:
            assert completed_at is not None
            # The simulated ESP reports deliveries and bounces a moment after accepting: wait for them.
            if not awaiting_events or loop.time() - completed_at > EVENTS_GRACE_SECONDS:
                return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=2)


@run
async def demo(
    port: Annotated[int, typer.Option(help="web port")] = 8000,
    smtp_port: Annotated[int, typer.Option(help="SMTP sink port")] = 1025,
    recipients: Annotated[int, typer.Option(help="demo contacts")] = 200,
    exit_when_done: Annotated[bool, typer.Option("--exit-when-done", help="stop when the task completes")] = False,
) -> None:
    """Run the demo: SQLite, an SMTP sink, demo data, the web console and API server, and a worker in one process."""
    await demo_main(port, smtp_port, exit_when_done, recipients)
