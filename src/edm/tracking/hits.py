"""Group commit for the tracking endpoints (docs/tracking.md#capacity): the open pixel and the click redirect are the
highest-volume requests EDM serves, and one transaction per hit cost several times the request itself
(bench/RESULTS.md, tracking section). Requests that arrive while a database round trip is in flight wait for
the next one, which carries all of them: one INSERT for many opens, one statement for many clicks (their links
read and their hits stored together).

Nothing changes for a caller: each request still answers only after its own hit is committed (or its link
read), and under light load a batch is one hit. Each batch is a single statement, atomic by itself; on
PostgreSQL it runs in autocommit on a connection held while batches keep coming: one round trip per batch,
no BEGIN, no COMMIT, no pool check-out (and its ping) per batch; unless `EDM_TRACKING_SYNCHRONOUS_COMMIT` is set,
the statement does not wait for the WAL flush (the loss window is in docs/tracking.md#capacity). These objects
commit: they act for the endpoints, the entry points that own them (one per app, made on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from edm.db.engine import json_dumps
from edm.models.events import Event
from edm.models.tasks import SubTask
from edm.models.tracking import TrackedLink

Item = TypeVar("Item")
Result = TypeVar("Result")
Batch = list[tuple[Any, "asyncio.Future[Any]"]]


class Click(NamedTuple):
    row: dict[str, Any]  # `ingest.event_row` of the click, without the URL (not known until the link is read)
    subtask_id: uuid.UUID
    link_id: int


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
        self._in_flight = 0  # items of the batch being run
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Items submitted and not yet settled: waiting, and in the batch being run."""
        return len(self._waiting) + self._in_flight

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
                        self._in_flight = len(batch)
                        try:
                            results = await self._in_transaction(connection, [item for item, _ in batch])
                        finally:
                            self._in_flight = 0
                        _settle(batch, results)
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

    def __init__(self, engine: AsyncEngine, *, synchronous_commit: bool = False) -> None:
        store = functools.partial(_store_hits, synchronous_commit=synchronous_commit)
        self._hits: Coalescer[dict[str, Any], None] = Coalescer(engine, store)
        self._links: Coalescer[tuple[uuid.UUID, int], str | None] = Coalescer(engine, _find_links)
        clicks = functools.partial(_store_clicks, synchronous_commit=synchronous_commit)
        self._clicks: Coalescer[Click, str | None] = Coalescer(engine, clicks)

    @property
    def hits_backlog(self) -> int:
        """Hits submitted to `record` and not yet committed."""
        return self._hits.backlog

    async def record(self, row: dict[str, Any]) -> None:
        """Store one event row (`ingest.event_row`); returns once it is committed."""
        await self._hits.submit(row)

    async def record_click(self, row: dict[str, Any], subtask_id: uuid.UUID, link_id: int) -> str | None:
        """The URL of the link when it belongs to the task of the SubTask, with the click's event row (`ingest.
        event_row`, its `url` left out) stored with that URL in its details; None, and nothing stored, when
        it does not. Returns once the hit is committed: one round trip for the link and the hit together."""
        return await self._clicks.submit(Click(row, subtask_id, link_id))

    async def link_url(self, subtask_id: uuid.UUID, link_id: int) -> str | None:
        """The URL of the link, when it belongs to the task of the SubTask; else None."""
        return await self._links.submit((subtask_id, link_id))


async def _store_hits(
    connection: AsyncConnection, rows: list[dict[str, Any]], *, synchronous_commit: bool = False
) -> list[None]:
    """`ingest.store` without the ORM session (which cost as much as the INSERT itself, measured): the same
    INSERT … ON CONFLICT DO NOTHING of `ingest.event_row` rows, in key order like every other writer.

    On PostgreSQL the batch is one statement over arrays (`INSERT … SELECT FROM unnest(…)`): one execution
    whatever the batch size, where an executemany of the row INSERT runs one per row, each with its own bind
    and execute on both sides (bench/RESULTS.md, tracking: the profile before and after)."""
    rows.sort(key=lambda row: row["dedupe_key"])
    if connection.dialect.name == "postgresql":
        await connection.execute(_UNNEST_INSERT[not synchronous_commit], _columns(rows))
    else:
        await connection.execute(_insert_events(connection.dialect.name), rows)
    return [None] * len(rows)


# Every column `ingest.event_row` fills, with its array type; JSON goes as text and is cast in the statement.
_UNNEST_COLUMNS = (
    ("source", "text[]"),
    ("service_id", "bigint[]"),
    ("dedupe_key", "text[]"),
    ("event_type", "text[]"),
    ("provider_event", "text[]"),
    ("occurred_at", "timestamptz[]"),
    ("received_at", "timestamptz[]"),
    ("subtask_ref", "text[]"),
    ("match_status", "text[]"),
    ("provider_message_id", "text[]"),
    ("recipient", "text[]"),
    ("details", "text[]"),
    ("raw", "text[]"),
    ("raw_truncated", "boolean[]"),
)
_JSON_COLUMNS = frozenset({"details", "raw"})


def _unnest_insert(asynchronous_commit: bool) -> Any:
    """The batch INSERT over arrays. With `asynchronous_commit` it also sets `synchronous_commit` off for its own
    implicit transaction (`set_config(…, true)`, evaluated once): the commit returns without waiting for the WAL
    flush. Transaction-local, so nothing outlives the statement (PgBouncer in transaction mode included)."""
    names = ", ".join(name for name, _ in _UNNEST_COLUMNS)
    values = ", ".join(f"{name}::jsonb" if name in _JSON_COLUMNS else name for name, _ in _UNNEST_COLUMNS)
    arrays = ", ".join(f"CAST(:{name} AS {kind})" for name, kind in _UNNEST_COLUMNS)
    return text(
        f"INSERT INTO events ({names}) SELECT {values} FROM unnest({arrays}) AS hit({names})"
        + (_COMMIT_MODE if asynchronous_commit else "")
        + " ON CONFLICT (source, dedupe_key) DO NOTHING"
    )


_COMMIT_MODE = " CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS commit_mode"
_UNNEST_INSERT = {mode: _unnest_insert(mode) for mode in (False, True)}


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The rows as one list per column, JSON columns serialised as the engine does (`db.engine`)."""
    columns: dict[str, list[Any]] = {}
    for name, _ in _UNNEST_COLUMNS:
        if name in _JSON_COLUMNS:
            columns[name] = [None if row[name] is None else json_dumps(row[name]) for row in rows]
        else:
            columns[name] = [_plain(row[name]) for row in rows]
    return columns


def _plain(value: Any) -> Any:
    """A StrEnum (match status) as its text: asyncpg encodes a `text[]` element only from a str."""
    return str(value) if isinstance(value, str) and type(value) is not str else value


async def _store_clicks(
    connection: AsyncConnection, clicks: list[Click], *, synchronous_commit: bool = False
) -> list[str | None]:
    """Each click's link URL (None when the link is not of the SubTask's task), and the event rows of the clicks
    whose link was found, stored with that URL: on PostgreSQL one statement does both (`_CLICK_INSERT`), on
    SQLite the SELECT of `_find_links` and then the INSERT, in the batch's transaction."""
    pairs = [(click.subtask_id, click.link_id) for click in clicks]
    if connection.dialect.name != "postgresql":
        urls = await _find_links(connection, pairs)
        rows = [{**c.row, "details": {**c.row["details"], "url": u}} for c, u in zip(clicks, urls, strict=True) if u]
        if rows:
            await _store_hits(connection, rows)
        return urls
    ordered = sorted(clicks, key=lambda click: click.row["dedupe_key"])
    params = {**_columns([click.row for click in ordered]), "link_id": [click.link_id for click in ordered]}
    found = {
        (uuid.UUID(subtask_ref), link_id): url
        for subtask_ref, link_id, url in await connection.execute(_CLICK_INSERT[not synchronous_commit], params)
    }
    return [found.get(pair) for pair in pairs]


def _click_insert(asynchronous_commit: bool) -> Any:
    """The clicks' links and the INSERT of the clicks whose link was found, their URL added to their details
    (as `ingest.event_row` would have put it), in one statement; it answers the links found."""
    names = ", ".join(name for name, _ in _UNNEST_COLUMNS)
    arrays = ", ".join(f"CAST(:{name} AS {kind})" for name, kind in _UNNEST_COLUMNS)
    values = ", ".join(
        "CAST(hit.details AS jsonb) || jsonb_build_object('url', link.url)"
        if name == "details"
        else f"CAST(hit.{name} AS jsonb)"
        if name in _JSON_COLUMNS
        else f"hit.{name}"
        for name, _ in _UNNEST_COLUMNS
    )
    return text(
        f"WITH hit AS (SELECT * FROM unnest({arrays}, CAST(:link_id AS bigint[])) AS hit({names}, link_id)), "
        "link AS (SELECT DISTINCT hit.subtask_ref, hit.link_id, l.url FROM hit "
        "JOIN subtasks s ON s.public_id = CAST(hit.subtask_ref AS uuid) "
        "JOIN tracked_links l ON l.id = hit.link_id AND l.task_id = s.task_id), "
        f"stored AS (INSERT INTO events ({names}) SELECT {values} FROM hit "
        "JOIN link ON link.subtask_ref = hit.subtask_ref AND link.link_id = hit.link_id"
        + (_COMMIT_MODE if asynchronous_commit else "")
        + " ORDER BY hit.dedupe_key ON CONFLICT (source, dedupe_key) DO NOTHING) "
        "SELECT subtask_ref, link_id, url FROM link"
    )


_CLICK_INSERT = {mode: _click_insert(mode) for mode in (False, True)}


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
        synchronous = state.settings.tracking_synchronous_commit
        store = state.tracking_store = TrackingStore(state.engine, synchronous_commit=synchronous)
    return store
