"""Group commit for the tracking endpoints (docs/tracking.md#capacity): the open pixel and the click redirect are the
highest-volume requests EDM serves, and one transaction per hit cost several times the request itself
(bench/RESULTS.md, tracking section). Requests that arrive while a database round trip is in flight wait for
the next one, which carries all of them: one INSERT for many hits, one SELECT for many clicks' links.

Nothing changes for a caller: each request still answers only after its own hit is stored (or its link
read), and under light load a batch is one hit. Each batch is a single statement, atomic by itself; on
PostgreSQL it runs in autocommit on a connection held while batches keep coming: one round trip per batch,
no BEGIN, no COMMIT, no pool check-out (and its ping) per batch. These objects commit: they act for the
endpoints, the entry points that own them (one per app, made on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from edm.models.events import Event
from edm.models.tasks import SubTask
from edm.models.tracking import TrackedLink

Item = TypeVar("Item")
Result = TypeVar("Result")
Batch = list[tuple[Any, "asyncio.Future[Any]"]]

MAX_BATCH = 500  # rows per round trip; more waiting requests go in the next one
# After a batch of several requests (clients are keeping us busy), the connection is kept this long for the
# next ones: their answers are on the wire and they come back within a round trip. A lone request (light load,
# tests) gives its connection back at once.
LINGER_SECONDS = 0.01


class Coalescer(Generic[Item, Result]):
    """Runs `work(connection, items)` over whatever was submitted while the previous run was busy; each
    submitter awaits its own result. `work` answers one result per item, in order; if it raises, every item of
    that batch gets the exception, and the connection is given back (a broken one is not reused)."""

    def __init__(
        self, engine: AsyncEngine, work: Callable[[AsyncConnection, list[Item]], Awaitable[list[Result]]]
    ) -> None:
        self._engine = engine
        self._work = work
        # PostgreSQL runs each batch's one statement in autocommit: no BEGIN and no COMMIT round trip. SQLite
        # keeps a transaction per batch: its engine opens every transaction with BEGIN IMMEDIATE (db.engine),
        # which an autocommit connection would never commit.
        self._autocommit = engine.dialect.name == "postgresql"
        self._waiting: Batch = []
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._arrived.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # requests parsed in the same loop iteration join the first batch
        while self._waiting:
            batch: Batch = []
            connected = False
            try:
                async with self._connection() as connection:
                    connected = True
                    while self._waiting:
                        batch = self._take()
                        _settle(batch, await self._in_transaction(connection, [item for item, _ in batch]))
                        if len(batch) > 1 and not self._waiting:
                            await self._more_within(LINGER_SECONDS)
                        batch = []
            except Exception as exc:  # handed to the waiters: each endpoint decides what a failure means
                _fail(batch or ([] if connected else self._take()), exc)

    async def _more_within(self, seconds: float) -> None:
        """Wait until something is submitted, or `seconds` pass."""
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), seconds)

    def _take(self) -> Batch:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        return batch

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT") if self._autocommit else connection

    async def _in_transaction(self, connection: AsyncConnection, items: list[Item]) -> list[Result]:
        if self._autocommit:
            return await self._work(connection, items)
        async with connection.begin():
            return await self._work(connection, items)


def _settle(batch: Batch, results: list[Any]) -> None:
    for (_, future), result in zip(batch, results, strict=True):
        if not future.done():  # a waiter whose client went away was cancelled
            future.set_result(result)


def _fail(batch: Batch, exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class TrackingStore:
    """The database side of the tracking endpoints for one app: hits written, click links read, in batches."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._hits: Coalescer[dict[str, Any], None] = Coalescer(engine, _store_hits)
        self._links: Coalescer[tuple[uuid.UUID, int], str | None] = Coalescer(engine, _find_links)

    async def record(self, row: dict[str, Any]) -> None:
        """Store one event row (`ingest.event_row`); returns once it is committed."""
        await self._hits.submit(row)

    async def link_url(self, subtask_id: uuid.UUID, link_id: int) -> str | None:
        """The URL of the link, when it belongs to the task of the SubTask; else None."""
        return await self._links.submit((subtask_id, link_id))


async def _store_hits(connection: AsyncConnection, rows: list[dict[str, Any]]) -> list[None]:
    """`ingest.store` without the ORM session (which cost as much as the INSERT itself, measured): the same
    INSERT … ON CONFLICT DO NOTHING of `ingest.event_row` rows, in key order like every other writer."""
    rows.sort(key=lambda row: row["dedupe_key"])
    await connection.execute(_insert_events(connection.dialect.name), rows)
    return [None] * len(rows)


@functools.cache
def _insert_events(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(Event).on_conflict_do_nothing(index_elements=["source", "dedupe_key"])


async def _find_links(connection: AsyncConnection, pairs: list[tuple[uuid.UUID, int]]) -> list[str | None]:
    """One SELECT for every pair: the links of the SubTasks' tasks among the asked link ids."""
    rows = await connection.execute(
        select(SubTask.public_id, TrackedLink.id, TrackedLink.url)
        .join(TrackedLink, TrackedLink.task_id == SubTask.task_id)
        .where(
            SubTask.public_id.in_(list({subtask for subtask, _ in pairs})),
            TrackedLink.id.in_(list({link for _, link in pairs})),
        )
    )
    found = {(public_id, link): url for public_id, link, url in rows}
    return [found.get(pair) for pair in pairs]


def tracking_store(state: Any) -> TrackingStore:
    """The app's TrackingStore (`request.app.state`), made on first use inside the running event loop."""
    store: TrackingStore | None = getattr(state, "tracking_store", None)
    if store is None:
        store = state.tracking_store = TrackingStore(state.engine)
    return store
