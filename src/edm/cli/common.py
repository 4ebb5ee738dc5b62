"""What every CLI command shares: settings, one unit of work, and errors as one readable line."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.engine import create_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.errors import BadInput, Conflict, EdmError, NotFound
from edm.security import passwords
from edm.settings import Settings

T = TypeVar("T")

USAGE_ERRORS = (BadInput, NotFound, Conflict)


# A dotenv file of EDM_* settings the CLI reads beside the environment (whose variables always win).
ENV_FILE_VARIABLE = "EDM_ENV_FILE"
# What `edm demo` writes for the CLI in the directory where it ran (see settings_file()).
DEMO_ENV_FILE = Path("var/edm-demo.env")
# Settings that say which deployment this is. A deployment must set its keys (production refuses to start
# without them), so where the environment sets any of these, the demo's file is never read.
DEPLOYMENT_VARIABLES = ("EDM_ENV", "EDM_DATABASE_URL", "EDM_SECRET_KEY", "EDM_ENCRYPTION_KEYS")


def settings_file(environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> Path | None:
    """The dotenv file the CLI reads, if any.

    `EDM_ENV_FILE` names one explicitly (it must exist). Otherwise the file `edm demo` wrote in the current
    directory is read, so `edm user list` works beside a running demo, but only while the environment sets
    none of DEPLOYMENT_VARIABLES: a real deployment never picks up demo settings by running in that directory.
    """
    explicit = environ.get(ENV_FILE_VARIABLE, "")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            fail(f"{ENV_FILE_VARIABLE}={explicit}: no such file", code=2)
        return path
    demo_file = (cwd or Path.cwd()) / DEMO_ENV_FILE
    if demo_file.is_file() and not any(environ.get(name) for name in DEPLOYMENT_VARIABLES):
        return demo_file
    return None


def settings() -> Settings:
    """This command's settings; every command builds them here, so this is where the process takes its
    password-hashing cost from them."""
    try:
        cfg = Settings(_env_file=settings_file())  # type: ignore[call-arg]  # pydantic-settings init option
    except ValidationError as exc:
        # pydantic prefixes a validator's own message with "Value error, ": the message alone reads better.
        message = str(exc.errors()[0].get("msg", exc)).removeprefix("Value error, ")
        fail(f"configuration error: {message}", code=2)
        raise  # unreachable
    passwords.configure(cfg)
    return cfg


def fail(message: str, *, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def run(coro_fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async command; EDM's bad-input errors exit 2 with one line, other failures exit 1."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(coro_fn(*args, **kwargs))  # type: ignore[arg-type]
        except USAGE_ERRORS as exc:
            detail = exc.extra.get("allowed_actions")
            suffix = f" (allowed: {', '.join(detail)})" if detail else ""
            fail(exc.message + suffix, code=2)
        except EdmError as exc:
            fail(exc.message, code=1)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        raise AssertionError("unreachable")

    return wrapper


@asynccontextmanager
async def session_scope(cfg: Settings | None = None) -> AsyncIterator[AsyncSession]:
    cfg = cfg or settings()
    engine = create_engine(cfg)
    try:
        async with unit_of_work(make_sessionmaker(engine)) as session:
            yield session
    finally:
        await engine.dispose()


def emit(data: Any, *, as_json: bool, text: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, default=str, indent=2))
    else:
        typer.echo(text if text is not None else json.dumps(data, default=str, indent=2))


def read_password(password_stdin: bool, *, confirm: bool = True) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=confirm))
