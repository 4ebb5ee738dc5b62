"""`Idempotency-Key` on the API's POSTs (docs/api.md#idempotency): a repeat within 24 h returns the first answer.

One ASGI middleware serves every `POST /api/v1/...` that carries the header, so a new creating endpoint is
covered without any code of its own:

1. the key is checked (1–255 printable ASCII characters, else 422 `validation_error`);
2. the caller is recognised with the same function the routes use (`edm.api.deps._caller`); a request that
   does not authenticate passes through untouched and gets its 401/403 from the route;
3. the body is read (spooled to disk past 1 MiB) and hashed with the method, path and query;
4. a row `(user_id, key)` is claimed in its own short transaction (the unique constraint decides races):
   - new → the request runs; its answer is stored before it is sent (a 5xx or 429 answer is not stored:
     the row is deleted so a retry runs again);
   - same hash, answered → the stored status and body are replayed with `Idempotent-Replayed: true`;
   - same hash, still running → 409 `idempotency_in_progress`;
   - other hash → 422 `idempotency_key_reused`;
   - older than 24 h → forgotten and treated as new.

Keys are per user: two users may use the same key. The records themselves (claim, answer, replay, purge)
live in `edm.system.idempotency`; this module is the ASGI plumbing around them. The worker's `idempotency`
job deletes records past 24 h.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Awaitable, Callable
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edm.api.deps import _caller  # the routes' own authentication (bearer token or session)
from edm.errors import EdmError
from edm.security.crypto import Vault
from edm.system.idempotency import claim, finish

log = logging.getLogger("edm.idempotency")

HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
SPOOL_BYTES = 1024 * 1024
BODY_SLACK = 64 * 1024  # a multipart boundary, part headers and a few short fields around the largest upload
# Answers larger than this are not kept (a creating POST answers one object; exports are GETs).
MAX_STORED_BODY = 1024 * 1024
PREFIX = "/api/v1/"


def key_problem(key: str) -> str | None:
    """Why `key` is not acceptable, or None."""
    if not key:
        return "must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"must be at most {MAX_KEY_LENGTH} characters"
    if any(not (0x20 <= ord(c) <= 0x7E) for c in key):
        return "must be printable ASCII"
    return None


def _error(scope: Scope, status: int, code: str, message: str, field: str | None = None) -> tuple[int, bytes]:
    details = [{"field": field, "message": message}] if field else []
    request_id = scope.get("state", {}).get("request_id")
    body = {"error": {"code": code, "message": message, "details": details, "request_id": request_id}}
    return status, json.dumps(body).encode()


async def _send_json(
    send: Send,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _multipart_boundary(content_type: str) -> bytes | None:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return value.strip('"').encode("latin-1", "replace")
    return None


class _BodyHash:
    """SHA-256 of a body, with a multipart boundary replaced by a constant: clients draw a new boundary for
    every request, so a retry of the same upload would otherwise never match its first attempt."""

    def __init__(self, digest: Any, boundary: bytes | None) -> None:
        self.digest = digest
        self.boundary = boundary
        self.tail = b""

    def update(self, chunk: bytes) -> None:
        if self.boundary is None:
            self.digest.update(chunk)
            return
        data = (self.tail + chunk).replace(self.boundary, b"\0BOUNDARY\0")
        keep = len(self.boundary) - 1  # a boundary may straddle two chunks: hold back its possible start
        self.tail = data[-keep:] if keep else b""
        self.digest.update(data[: len(data) - len(self.tail)])

    def hexdigest(self) -> str:
        self.digest.update(self.tail)
        self.tail = b""
        return str(self.digest.hexdigest())


class _BodyTooLarge(Exception):
    """The body passed the largest one any route accepts: refused before more of it is stored."""


def body_limit(scope: Scope) -> int:
    """The largest POST body any API route takes: an import upload with its form around it."""
    return int(scope["app"].state.settings.import_max_bytes) + BODY_SLACK


async def _read_body(receive: Receive, spool: IO[bytes], digest: _BodyHash, *, limit: int) -> bool:
    """Copy the request body into `spool` and `digest`; False when the client went away. Raises _BodyTooLarge
    as soon as more than `limit` bytes arrived, so a replayable request never fills the disk."""
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        chunk = message.get("body", b"")
        if chunk:
            received += len(chunk)
            if received > limit:
                raise _BodyTooLarge()
            spool.write(chunk)
            digest.update(chunk)
        if not message.get("more_body", False):
            return True


def _declared_too_large(scope: Scope, limit: int) -> bool:
    declared = Headers(scope=scope).get("content-length", "")
    return declared.isdigit() and int(declared) > limit


def _replaying(spool: IO[bytes], receive: Receive) -> Receive:
    spool.seek(0)
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()  # after the body: wait for the disconnect like a real receive
        chunk = spool.read(64 * 1024)
        more = bool(chunk) and spool.tell() < _size(spool)
        done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replay


def _size(spool: IO[bytes]) -> int:
    here = spool.tell()
    spool.seek(0, 2)
    end = spool.tell()
    spool.seek(here)
    return end


CallerOf = Callable[[Request, AsyncSession], Awaitable[Any]]


class IdempotencyMiddleware:
    """See the module docstring. Sits inside the request-id and rate-limit middlewares."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.vault: Vault | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        key = Headers(scope=scope).get(HEADER)
        if key is None:
            await self.app(scope, receive, send)
            return
        problem = key_problem(key)
        if problem:
            status, body = _error(
                scope, 422, "validation_error", f"Idempotency-Key header: {problem}", field="Idempotency-Key"
            )
            await _send_json(send, status, body)
            return
        sessionmaker = scope["app"].state.sessionmaker
        if self.vault is None:
            self.vault = Vault.from_settings(scope["app"].state.settings)
        user_id = await self._user_id(scope, sessionmaker)
        if user_id is None:
            await self.app(scope, receive, send)  # the route answers 401/403 itself
            return
        limit = body_limit(scope)
        if _declared_too_large(scope, limit):
            await _send_json(send, *_error(scope, 413, "too_large", f"the request body exceeds {limit} bytes"))
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            query = scope.get("query_string", b"")
            raw = hashlib.sha256(b"POST " + scope["path"].encode() + b"?" + query + b"\n")
            digest = _BodyHash(raw, _multipart_boundary(Headers(scope=scope).get("content-type", "")))
            try:
                if not await _read_body(receive, spool, digest, limit=limit):
                    return
            except _BodyTooLarge:
                await _send_json(send, *_error(scope, 413, "too_large", f"the request body exceeds {limit} bytes"))
                return
            outcome = await claim(
                sessionmaker,
                user_id=user_id,
                key=key,
                method="POST",
                path=scope["path"],
                request_hash=digest.hexdigest(),
                vault=self.vault,
            )
            if outcome.error is not None:
                status, body = _error(scope, *outcome.error)
                await _send_json(send, status, body)
                return
            if outcome.replay is not None:
                stored = outcome.replay
                await _send_json(
                    send,
                    stored.status,
                    stored.body.encode(),
                    [(REPLAYED_HEADER.encode(), b"true")],
                    content_type=(stored.content_type or "application/json").encode(),
                )
                return
            assert outcome.record_id is not None
            await self._run(scope, _replaying(spool, receive), send, sessionmaker, outcome.record_id)

    async def _user_id(self, scope: Scope, sessionmaker: async_sessionmaker[AsyncSession]) -> int | None:

        try:
            async with sessionmaker() as session:
                caller = await _caller(Request(scope), session)
                return int(caller.id)
        except EdmError:
            return None

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, sessionmaker: async_sessionmaker[AsyncSession], record_id: int
    ) -> None:
        start: Message | None = None
        chunks: list[bytes] = []
        finished = False

        async def capture(message: Message) -> None:
            nonlocal start, finished
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            status = int(start["status"])
            content_type = Headers(raw=start.get("headers", [])).get("content-type")
            storable = status < 500 and status != 429 and len(body) <= MAX_STORED_BODY
            if storable:
                try:
                    body.decode()
                except UnicodeDecodeError:
                    storable = False
            await finish(
                sessionmaker,
                record_id,
                status=status,
                content_type=content_type,
                body=body if storable else None,
                vault=self.vault,
            )
            finished = True
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        try:
            await self.app(scope, receive, capture)
        finally:
            if not finished:  # an unhandled error (answered 500 further out) or a dropped client
                try:
                    await finish(sessionmaker, record_id, status=500, content_type=None, body=None)
                except Exception:
                    log.exception("idempotency.release_failed")
