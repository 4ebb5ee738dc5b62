"""Engine construction: SQLite pragmas for a safe single-host setup, a bounded pool for PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from edm.settings import Settings, to_async_url


def create_engine(settings: Settings, *, pool_size: int | None = None, application_name: str = "edm") -> AsyncEngine:
    """The engine of an `edm` process, configured by its settings. `application_name` shows in PostgreSQL's
    `pg_stat_activity` (`edm-serve`, `edm-worker`), so connections can be counted per kind of process."""
    return make_engine(
        settings.database_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pgbouncer=settings.db_pgbouncer,
        lock_timeout=settings.db_lock_timeout,
        statement_timeout=settings.db_statement_timeout,
        application_name=application_name,
    )


def _json_dumps(value: Any) -> str:
    """JSON columns through orjson: several times faster than the stdlib on event payloads (bench/RESULTS.md)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


json_dumps = _json_dumps  # the same text, for statements that pass JSON as text and cast it (tracking.hits)


def _json_loads(value: Any) -> Any:
    # SQLite gives a column declared JSON numeric affinity, so a stored scalar (an admin setting such as 0.2)
    # comes back as a number, not JSON text.
    return value if isinstance(value, (int, float)) else orjson.loads(value)


def make_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    max_overflow: int | None = None,
    pool_timeout: float = 30.0,
    pgbouncer: bool = False,
    lock_timeout: float = 0.0,
    statement_timeout: float = 0.0,
    application_name: str | None = None,
) -> AsyncEngine:
    """At most `pool_size + max_overflow` connections (overflow defaults to the pool size); each is pinged before
    it is lent, so one the server dropped (a restart, a failover) is replaced instead of failing a request."""
    url = make_url(to_async_url(database_url))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        connect_args=postgres_connect_args(
            pgbouncer=pgbouncer,
            lock_timeout=lock_timeout,
            statement_timeout=statement_timeout,
            application_name=application_name,
        ),
        json_serializer=_json_dumps,
        json_deserializer=_json_loads,
        # An error's text never carries the statement's values (addresses, bodies, hashes): it is logged.
        hide_parameters=True,
    )


def postgres_connect_args(
    *, pgbouncer: bool, lock_timeout: float, statement_timeout: float, application_name: str | None
) -> dict[str, Any]:
    """asyncpg's connection arguments.

    Behind PgBouncer in transaction mode, consecutive transactions of one client connection may run on different
    server connections, so nothing may outlive a transaction on the server. asyncpg and SQLAlchemy each cache
    named prepared statements per connection; with both caches off, asyncpg prepares every statement as the
    unnamed statement, which lives until the next one is prepared in the same transaction (no name can collide
    and nothing piles up on the server). The timeouts are start-up parameters, which PgBouncer refuses unless
    told to ignore them: behind it they are set on the database role instead (docs/deploy.md#pgbouncer)."""
    args: dict[str, Any] = {}
    server_settings: dict[str, str] = {}
    if application_name:
        server_settings["application_name"] = application_name
    if pgbouncer:
        args.update(statement_cache_size=0, prepared_statement_cache_size=0)
    else:
        if lock_timeout:
            server_settings["lock_timeout"] = f"{max(1, round(lock_timeout * 1000))}ms"
        if statement_timeout:
            server_settings["statement_timeout"] = f"{max(1, round(statement_timeout * 1000))}ms"
    if server_settings:
        args["server_settings"] = server_settings
    return args


def _sqlite_engine(url: Any) -> AsyncEngine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        connect_args={"timeout": 30},
        json_serializer=_json_dumps,
        json_deserializer=_json_loads,
        hide_parameters=True,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control so BEGIN IMMEDIATE is possible: SQLite's deferred BEGIN lets two
        # writers both read, then one fails with "database is locked" at its first write.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
