"""Test helpers that go through the real services (no mocks of our own code)."""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import os
import re
import subprocess
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import click
import httpx
import typer
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.conversations import inbound_queue
from edm.db.session import unit_of_work
from edm.models.users import Role
from edm.settings import Settings
from edm.users.service import create_token, create_user

PASSWORD = "correct horse battery"


async def drain_inbound(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings | None = None
) -> inbound_queue.DrainCounts:
    """What the worker's `inbound` job does next: every inbound mail the webhooks queued is handled (threaded to its
    conversation, a report to the event store, or kept unrouted)."""
    max_bytes = settings.inbound_message_max_bytes if settings is not None else inbound_queue.DEFAULT_MAX_BYTES
    return await inbound_queue.drain(sessionmaker, max_bytes=max_bytes)


def settings_for(db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": db_url,
        "secret_key": "t" * 40,
        "public_url": "http://edm.test",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Account:
    id: int
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_account(
    sessionmaker: async_sessionmaker[AsyncSession],
    username: str,
    *,
    role: str = Role.USER,
    credit: int = 0,
    scope: str = "write",
) -> Account:
    async with unit_of_work(sessionmaker) as session:
        user = await create_user(
            session, username=username, email=f"{username}@example.com", password=PASSWORD, role=role, credit=credit
        )
        token, _ = await create_token(session, user_id=user.id, name="tests", scope=scope)
        return Account(user.id, user.username, token)


@asynccontextmanager
async def api_client(db_url: str, engine: AsyncEngine, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the real ASGI app (with its lifespan) over the given engine."""
    app = create_app(settings_for(db_url, **overrides), engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
            yield client


def expect_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error body (docs/api.md#errors) of `r`, after checking its status and machine code."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert body["code"] == code, body
    return body


async def create_contact(client: httpx.AsyncClient, who: Account, email: str, **fields: Any) -> dict[str, Any]:
    """A contact created through the API (201 checked)."""
    r = await client.post("/api/v1/contacts", json={"email": email, **fields}, headers=who.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def create_tag(client: httpx.AsyncClient, who: Account, name: str, parent_id: int | None = None) -> int:
    """A tag created through the API (201 checked); its id."""
    r = await client.post("/api/v1/tags", json={"name": name, "parent_id": parent_id}, headers=who.headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


# --- The `edm` command, run inside the test process ---------------------------------------------------------------
# Spawning `python -m edm` spends over a second importing EDM for every call; invoking the Typer app here takes a few
# milliseconds. An invocation swaps process-wide state (the EDM_* environment variables the command builds its
# Settings from, sys.stdin/stdout/stderr), so one runs at a time, under a lock, and always on a thread of its own:
# commands call asyncio.run, which refuses to start on a thread whose event loop is running (every async test's).

_CLI_LOCK = threading.Lock()
CLI_TIMEOUT = 120.0  # seconds; a command that hangs fails its test instead of the whole run


def cli_env(db_url: str, **extra: str) -> dict[str, str]:
    """The EDM_* variables a CLI command or a worker process under test runs with."""
    env = {
        "EDM_DATABASE_URL": db_url,
        "EDM_ENV": "test",
        "EDM_SECRET_KEY": "t" * 40,
        "EDM_LOG_LEVEL": "WARNING",
        "EDM_TIME_SCALE": "0.05",
    }
    env.update(extra)
    return env


def run_cli(db_url: str, *args: str, stdin: str = "", **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`edm ARGS` over `db_url` with `stdin` as its input: exit code, stdout and stderr as a process would give them
    (an unexpected exception is a traceback on stderr and exit code 1). Blocks the caller, event loop included, as
    `subprocess.run` did; use `run_cli_async` when the command needs a server running on this test's loop."""
    return _on_own_thread(list(args), stdin, cli_env(db_url, **extra_env)).result(timeout=CLI_TIMEOUT)


async def run_cli_async(db_url: str, *args: str, stdin: str = "", **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`run_cli` that lets this test's event loop go on serving while the command runs."""
    future = _on_own_thread(list(args), stdin, cli_env(db_url, **extra_env))
    return await asyncio.wait_for(asyncio.wrap_future(future), CLI_TIMEOUT)


def _on_own_thread(args: list[str], stdin: str, env: dict[str, str]) -> Future[subprocess.CompletedProcess[str]]:
    # A daemon thread: one that hangs past CLI_TIMEOUT must not keep the test run from exiting.
    future: Future[subprocess.CompletedProcess[str]] = Future()

    def invoke() -> None:
        try:
            future.set_result(_invoke_cli(args, stdin, env))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=invoke, name="edm-cli", daemon=True).start()
    return future


@functools.cache
def _edm_command() -> click.Command:
    """The Click command tree of `edm`, built once: typer's CliRunner built it again on every invocation (~2.5 % of the
    CPU of the API and report tests, py-spy)."""
    from edm.cli.main import app

    return typer.main.get_command(app)


def _invoke_cli(args: list[str], stdin: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only the given EDM_* variables: none of the test process's own (EDM_TEST_DATABASE_URL, a developer's shell).
    overrides: dict[str, str | None] = {key: None for key in os.environ if key.startswith("EDM_")}
    overrides.update(env)
    if not _CLI_LOCK.acquire(timeout=CLI_TIMEOUT):
        raise TimeoutError("an earlier edm invocation in this process never finished")
    try:
        with _warnings_to_stderr():
            result = CliRunner().invoke(_edm_command(), args, input=stdin, env=overrides, prog_name="edm")
    finally:
        _CLI_LOCK.release()
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["edm", *args], result.exit_code, result.stdout, stderr)


class _StderrAtEmit(logging.Handler):
    """Writes a record's message to whatever sys.stderr is when it is logged (the invocation's captured stream)."""

    def __init__(self, thread_id: int) -> None:
        super().__init__(logging.WARNING)
        self.thread_id = thread_id

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            sys.stderr.write(self.format(record) + "\n")


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """A command process configures no logging, so Python prints its warnings to stderr; so does the invocation
    (records from the command's own thread only), keeping "one line on stderr" checks honest."""
    handler = _StderrAtEmit(threading.get_ident())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document, built once per test process (~1.5 s each time; several test modules read it
    while they are collected). Callers must not change it."""
    return create_app(settings_for("sqlite:///:memory:")).openapi()


def page_field(page: str, name: str) -> str:
    """The value of the console form field `name` in the HTML `page` (e.g. the CSRF token), unescaped."""
    found = re.search(rf'name="{re.escape(name)}"[^>]*? value="([^"]*)"', page)
    assert found is not None, f"no {name} in the page"
    return html.unescape(found.group(1))


def field_error(page: str, name: str) -> str:
    """The error the console shows beside the form field `name` in the HTML `page`, unescaped."""
    found = re.search(rf'<p class="field-error" id="f-{re.escape(name)}-error">([^<]*)</p>', page)
    assert found is not None, f"no error beside {name}"
    return html.unescape(found.group(1))


async def console_log_in(client: httpx.AsyncClient, who: Account, *, csrf_from: str = "/account") -> str:
    """Logs `who` in through the console's form (ending the client's earlier session); the new session's CSRF
    token, read from the page `csrf_from`."""
    if "edm_session" in client.cookies:
        client.cookies.delete("edm_session")
    form = (await client.get("/login")).text
    data = {"csrf_token": page_field(form, "csrf_token"), "username": who.username, "password": PASSWORD, "next": "/"}
    assert (await client.post("/login", data=data)).status_code == 303
    return page_field((await client.get(csrf_from)).text, "csrf_token")
