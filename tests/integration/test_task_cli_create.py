"""`edm task create` and `edm task start` schedule as the API does (checks, then the templates' test render
outside any transaction, then the transition), and a `task create --now` that cannot be scheduled leaves no
task behind. Recipients given as a file of addresses must all be the owner's contacts."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from tests import factories
from tests.helpers import run_cli as edm


async def _owner(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with unit_of_work(sessionmaker) as session:
        user_id = await factories.user(session, "ann", credit=100)
        await factories.contacts(session, user_id, 3)  # r0@example.net … r2@example.net
        await factories.sender(session, user_id, "news")
        await factories.template(session, user_id, "hello", html="<p>Hi {{ contact.first_name }}</p>")
        await factories.template(session, user_id, "broken", html="<p>{{ 1 / 0 }}</p>")


def _create(*args: str) -> list[str]:
    return ["task", "create", "--user", "ann", "--name", "launch", "--sender", "news", *args]


async def test_recipients_from_a_file_of_addresses(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await _owner(sessionmaker)
    addresses = tmp_path / "to.txt"
    addresses.write_text("R0@example.net\nr2@example.net,ignored column\n\nnot an address line\n")
    created = edm(db_url, *_create("--template", "hello", "--contacts", str(addresses), "--now"))
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "task 1 scheduled, 2 sendable recipients"

    addresses.write_text("r0@example.net\nstranger@example.org\n")
    refused = edm(db_url, *_create("--template", "hello", "--contacts", str(addresses)))
    assert refused.returncode == 2 and "1 addresses are not contacts of the user" in refused.stderr


async def test_a_task_that_does_not_render_is_not_created(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _owner(sessionmaker)
    refused = edm(db_url, *_create("--template", "hello", "--template", "broken", "--all", "--now"))
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "template 'broken' does not render" in refused.stderr
    assert edm(db_url, "task", "list").stdout.strip() == "no tasks"

    draft = edm(db_url, *_create("--template", "broken", "--all"))
    assert draft.returncode == 0 and draft.stdout.endswith(" draft\n"), draft.stdout
    task_id = draft.stdout.split()[1]
    start = edm(db_url, "task", "start", task_id)
    assert start.returncode == 2 and "template 'broken' does not render" in start.stderr
    assert edm(db_url, "task", "list").stdout.split() == [task_id, "draft", "launch"]


async def test_task_start_schedules_a_draft(db_url: str, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    await _owner(sessionmaker)
    assert edm(db_url, *_create("--template", "hello:3", "--all")).stdout.strip() == "task 1 draft"
    started = edm(db_url, "task", "start", "1")
    assert started.returncode == 0 and started.stdout.strip() == "task 1 scheduled", started.stderr
    status = edm(db_url, "task", "status", "1", "--json")
    assert status.returncode == 0 and '"status": "scheduled"' in status.stdout
