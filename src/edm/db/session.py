"""Units of work: the one place that commits.

An entry point owns each transaction: an HTTP request (the `Session` dependency is a unit of work), a CLI
command, one step of the worker (a claim, an outcome batch, one job run or one batch of a long job). It
opens a `unit_of_work`, calls services with the session, and the block commits when it ends normally or
rolls back on any exception. Services take a session and may flush; they never commit or roll back.

`end_transaction` is for an entry point that must not hold its transaction open across what comes next (a
network call, a long render, a 401 that must keep the login attempt it records) or that streams a long job
through one session batch by batch. See "Transactions: who commits" in docs/architecture.md.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger("edm.db")

_AFTER_COMMIT = "edm.after_commit"


@asynccontextmanager
async def unit_of_work(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Commit when the block ends normally, roll back on any exception."""
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


@asynccontextmanager
async def single_statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for ONE statement that is atomic by itself (an INSERT of one or several rows), for a hot entry
    point. On PostgreSQL it runs in autocommit, so the statement is its own transaction: one round trip instead of
    three (BEGIN, the statement, COMMIT), which cut the CPU an inbound webhook costs the server by about a third
    (bench/RESULTS.md, section l). Elsewhere (SQLite takes its write lock at BEGIN) a transaction committed at the
    end of the block. Two statements in the block would not be one transaction on PostgreSQL: use `unit_of_work`."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")
    else:
        async with engine.begin() as connection:
            yield connection


async def end_transaction(session: AsyncSession) -> None:
    """Commit what the unit of work did so far and end its transaction. The session begins a new one at its
    next statement, which the unit of work commits (or rolls back) at its end as usual.

    Only entry points call it, never services: before a network call or a long render (no transaction, and
    on SQLite no write lock, is held across it), to keep a record that the error answer after it must not
    roll back, and at each batch boundary of a long job that streams through one session."""
    await session.commit()


def after_commit(session: AsyncSession | Session, action: Callable[[], None]) -> None:
    """Run `action` once the session's current transaction commits; never if it rolls back or is closed
    uncommitted. For what must describe committed rows only (the process's metrics, `edm.telemetry`): a service
    says what it wrote without knowing when, or whether, its caller commits. An action that raises is logged."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info.setdefault(_AFTER_COMMIT, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for action in session.info.pop(_AFTER_COMMIT, ()):
        try:
            action()
        except Exception:  # the transaction is committed whatever happens here
            log.exception("db.after_commit_failed")


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, transaction: SessionTransaction, *_: Any) -> None:
    if transaction.parent is None:  # the outermost transaction ended without a commit (or after one, empty)
        session.info.pop(_AFTER_COMMIT, None)
