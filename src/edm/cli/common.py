"""What every CLI command shares: settings, one unit of work, and errors as one readable line."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from edm.db.engine import create_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.errors import BadInput, Conflict, EdmError, NotFound
from edm.settings import Settings

T = TypeVar("T")

USAGE_ERRORS = (BadInput, NotFound, Conflict)


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fail(f"configuration error: {exc.errors()[0].get('msg', exc)}", code=2)
        raise  # unreachable


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
