"""`edm`: one command for operators. Exit codes: 0 success, 1 runtime failure, 2 bad input (one line)."""

from __future__ import annotations

import typer

from edm.cli import contacts, credit, demo, doctor, events, keys, ops, services, suppressions, tasks, test_sends, users
from edm.cli import settings as settings_cli
from edm.cli.conversation_answers import register as register_answers
from edm.cli.conversations import conversations_app, inbound_app
from edm.cli.mailbox import mailbox_app
from edm.cli.media import media_app
from edm.cli.retention import retention_app

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="EDM: self-hosted email direct marketing.",
)
app.add_typer(ops.db_app, name="db")
app.add_typer(ops.stats_app, name="stats")
app.add_typer(ops.queue_app, name="queue")
app.add_typer(users.user_app, name="user")
app.add_typer(users.token_app, name="token")
app.add_typer(credit.credit_app, name="credit")
app.add_typer(services.service_app, name="service")
app.add_typer(tasks.task_app, name="task")
app.add_typer(tasks.sender_app, name="sender")
tasks.template_app.command("test-send")(test_sends.test_send)
app.add_typer(tasks.template_app, name="template")
app.add_typer(media_app, name="media")
app.add_typer(contacts.contact_app, name="contact")
app.add_typer(events.events_app, name="events")
register_answers(conversations_app)
app.add_typer(conversations_app, name="conversations")
app.add_typer(inbound_app, name="inbound")
app.add_typer(suppressions.suppression_app, name="suppression")
app.add_typer(settings_cli.settings_app, name="settings")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(retention_app, name="retention")
app.command("import")(contacts.import_command)
app.command("serve")(ops.serve)
app.command("dashboard")(ops.dashboard)
app.command("worker")(ops.worker)
app.command("doctor")(doctor.doctor_command)
app.command("demo")(demo.demo)
app.add_typer(mailbox_app, name="mailbox")


def run() -> None:
    app()
