"""`edm worker`'s own /metrics (docs/operations.md#metrics): a minimal HTTP/1.1 server on the worker's event loop,
enabled by `EDM_WORKER_METRICS_PORT` or `edm worker --metrics-port`.

It answers `GET /metrics` (and HEAD) with the same text and the same access rules as `edm serve`, 404 to any other
path, and closes the connection after each answer. Request heads are bounded (16 KB, 10 s), so a stray client can
neither hold the worker's loop nor its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.metrics.exposition import PATH, Answer, Exposition
from edm.settings import Settings

log = logging.getLogger("edm.metrics")

HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 10.0
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Not Allowed"}


class MetricsPortUnavailable(Exception):
    """The metrics port cannot be bound (taken, or a privileged port)."""


class MetricsServer:
    def __init__(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], *, host: str, port: int
    ) -> None:
        self.exposition = Exposition(settings)
        self.sessionmaker = sessionmaker
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; the port actually bound (a port of 0 picks a free one)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=HEAD_LIMIT)
        except OSError as exc:
            message = f"cannot answer /metrics on {self.host}:{self.port}: {exc.strerror or exc}"
            raise MetricsPortUnavailable(message) from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics.listening", extra={"host": self.host, "port": self.port})
        return self.port

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            method, path, headers = _parse(head)
            answer = await self._answer(method, path, headers, writer.get_extra_info("peername"))
            status_line = f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Error')}\r\n"
            lines = [status_line, *(f"{k}: {v}\r\n" for k, v in answer.headers)]
            lines += [f"Content-Length: {len(answer.body)}\r\n", "Connection: close\r\n\r\n"]
            writer.write("".join(lines).encode("latin-1") + (b"" if method == "HEAD" else answer.body))
            await writer.drain()
        except Exception:  # one bad scrape must never take the worker down
            log.warning("metrics.answer_failed", exc_info=True)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str, headers: dict[str, str], peer: object) -> Answer:
        if not method:
            return Answer(400, b"bad request\n")
        if path.split("?", 1)[0] != PATH:
            return Answer(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Answer(405, b"only GET\n", (("Allow", "GET, HEAD"),))
        host = peer[0] if isinstance(peer, tuple) and peer else None
        return await self.exposition.answer(
            self.sessionmaker, client_host=str(host) if host else None, authorization=headers.get("authorization")
        )


def _parse(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, headers with lower-case names) of a request head; ("", "", {}) when it is not one."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", "", {}
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers
