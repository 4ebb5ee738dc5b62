"""Tell a database outage from a bug.

When the database goes away after start-up (restarted, failed over, the network cut, the SQLite file's volume
gone), the drivers raise a zoo of exceptions: SQLAlchemy's `OperationalError`, `InterfaceError` or a
`DBAPIError` marked `connection_invalidated`, a pool timeout, asyncpg's connection errors, or a bare
`ConnectionRefusedError` from the socket when a new connection cannot even be opened. All of those mean
"retry later" (HTTP 503 with `Retry-After`; the worker logs and tries again) and heal by themselves once
the database is back: the pool pings a connection before lending it and replaces a dead one.

Anything else stays a bug (HTTP 500): a syntax error, a missing table, a constraint violation. SQLite reports
both kinds as `OperationalError`, so its result code decides, as the SQLSTATE class does for PostgreSQL.
"""

from __future__ import annotations

import errno
import logging
import socket
import sqlite3

from sqlalchemy import exc as sa_exc

RETRY_AFTER_SECONDS = 5  # what a 503 tells the client to wait; the pool reconnects on the next request

# SQLSTATE classes and codes of a server that cannot serve us now: 08 connection exception, 53 insufficient
# resources (disk full, out of memory, too many connections), 58 system error (I/O); from class 57
# (operator intervention) the shutdowns, "the database system is starting up", a dropped database and a
# statement cancelled (57014: `statement_timeout`, or an operator's pg_cancel_backend); and 55P03, a lock not
# obtained within `lock_timeout` (EDM_DB_LOCK_TIMEOUT): someone holds a lock on a table EDM needs.
_PG_UNAVAILABLE_CLASSES = ("08", "53", "58")
_PG_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "57014", "55P03"})

# SQLite primary result codes of a file that cannot be used now (a programming error is SQLITE_ERROR, 1):
# busy or locked past the busy timeout, read-only (also when the file was moved or deleted under an open
# connection), I/O error, disk full, cannot open (the file or its directory is gone), locking protocol.
_SQLITE_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)

# Socket errors of a server that cannot be reached (file-system errors such as ENOENT are not among them).
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
    }
)


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` (or the driver error it wraps) says the database cannot be reached or used right now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_outage(current):
            return True
        # SQLAlchemy keeps the driver's exception in `orig`; the async adapters chain the driver's own error
        # as the cause. The implicit context is not followed: an unrelated earlier error may sit there.
        current = getattr(current, "orig", None) or current.__cause__
    return False


def log_failure(logger: logging.Logger, event: str, exc: BaseException, **extra: object) -> None:
    """For loops that retry (the worker's dispatch loops and jobs): an outage is one warning line per failed
    attempt, as it repeats until the database is back and its traceback says nothing new; anything else is
    an error with its traceback."""
    if database_unavailable(exc):
        fields = {**extra, "error": type(exc).__name__, "database_unavailable": True}
        state = sqlstate(exc)
        if state:  # 55P03 a lock wait timed out, 53100 the disk is full, 57P01 the server shut down, …
            fields["sqlstate"] = state
        logger.warning(event, extra=fields)
    else:
        logger.error(event, exc_info=exc, extra=extra)


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of `exc` or of the driver error it wraps, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(state, str) and state:
            return state
        current = getattr(current, "orig", None) or current.__cause__
    return None


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # A pool with every connection busy past its timeout, the pool told to drop a connection, or the
    # driver's interface failing (asyncpg: "connection is closed") rather than the server refusing SQL.
    if isinstance(exc, (sa_exc.TimeoutError, sa_exc.DisconnectionError, sa_exc.InterfaceError)):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_UNAVAILABLE
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(state, str) and state:
        return state[:2] in _PG_UNAVAILABLE_CLASSES or state in _PG_UNAVAILABLE_CODES
    if isinstance(exc, OSError):
        return _network_error(exc)
    # A DB-API OperationalError with neither a SQLSTATE nor a SQLite code: the driver could not talk to the
    # server at all (psycopg reports a refused connection this way).
    return isinstance(exc, sa_exc.OperationalError) and not _has_error_code(exc.orig)


def _network_error(exc: OSError) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    if exc.errno in _NETWORK_ERRNOS:
        return True
    # asyncio's create_connection folds the failures of every address of a host name into one plain OSError.
    return type(exc) is OSError and exc.errno is None and str(exc).startswith("Multiple exceptions")


def _has_error_code(driver_error: BaseException | None) -> bool:
    return isinstance(driver_error, sqlite3.Error) or bool(
        getattr(driver_error, "sqlstate", None) or getattr(driver_error, "pgcode", None)
    )
