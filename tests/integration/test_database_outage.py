"""The database going away after start-up, and coming back.

PostgreSQL is reached through a TCP proxy the test controls: `close()` cuts every connection and refuses new
ones (a restart, a failover, the network gone), `reopen()` accepts again on the same port. While it is closed the
API answers 503 `unavailable` with `Retry-After` (never a 500), the pixel still answers its GIF, the click and
unsubscribe links a 503 page; once it is open again the very next requests succeed, with no restart, although
every connection the pool held died. The worker's dispatch loop survives a connection cut between its claim and
its send, gives the claimed recipients back and sends them once the database is back; its jobs log the outage
in one line per attempt and carry on.

On SQLite, a pooled connection keeps using its open file even when the file is moved or deleted, so the outage a
SQLite deployment sees is a connection that cannot open the file (its volume gone, the directory renamed): 503,
and 200 again once the file is back. A query the database refuses as wrong (a table missing) stays a 500 on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from edm.app import create_app
from edm.clock import utc_now
from edm.db.engine import make_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.models.system import Worker as WorkerRow
from edm.models.tasks import SendAttempt
from edm.security.tokens import sign_token
from edm.tasks import generation
from tests import factories
from tests.helpers import Account, expect_error, make_account, settings_for
from tests.integration.dispatch.conftest import DispatchKit

API = "/api/v1"
WEBHOOK_SECRET = "outage-webhook-secret"
GIF = b"GIF89a"


class TcpProxy:
    """A loopback TCP proxy to `target`. `close()` aborts every open connection (the peers see a reset) and
    stops listening, so new connections are refused; `reopen()` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    reopen = start

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for transport in self._transports:
            transport.abort()
        self._transports.clear()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._transports.update((client_writer.transport, server_writer.transport))
        for reader, writer in ((client_reader, server_writer), (server_reader, client_writer)):
            pipe = asyncio.create_task(_pipe(reader, writer))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@contextlib.asynccontextmanager
async def proxied(db_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A proxy in front of the PostgreSQL of `db_url`, and the URL of the same database through it."""
    url = make_url(db_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        await proxy.close()


def _postgres_only(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: a TCP proxy in front of the server")


async def _lock_waiters(engine: AsyncEngine, table: str) -> int:
    """Statements of this database waiting for a lock, that mention `table`."""
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE :pattern"
                ),
                {"pattern": f"%{table}%"},
            )
            or 0
        )


async def _until(predicate: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def table_locked(engine: AsyncEngine, table: str) -> AsyncIterator[AsyncConnection]:
    """`table` locked against every reader and writer until the block ends (or the yielded connection rolls
    back)."""
    async with engine.connect() as conn:
        await conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        try:
            yield conn
        finally:
            await conn.rollback()


def _signed_webhook(n: int) -> tuple[bytes, dict[str, str]]:
    """A fake-provider event, signed as the provider signs: HMAC-SHA256 over "<ts>." + body."""
    body = orjson.dumps(
        {"events": [{"event_id": f"outage-{n}", "event": "delivered", "subtask_id": "4242", "timestamp": time.time()}]}
    )
    ts = str(int(time.time()))
    signature = hmac.new(WEBHOOK_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Fake-Signature": f"t={ts},v1={signature}"}


class Probe:
    """Every kind of request the outage must not turn into a 500, against one app."""

    def __init__(self, client: httpx.AsyncClient, who: Account, service_id: int, signing_key: bytes) -> None:
        self.client, self.who, self.service_id = client, who, service_id
        someone = uuid.uuid4()  # a well-signed token whose SubTask does not exist: a lookup, then "not valid"
        self.pixel = f"/t/o/{sign_token('open', someone, key=signing_key)}.gif"
        self.click = f"/t/c/{sign_token('click', someone, key=signing_key, link_id=1)}"
        self.unsubscribe = f"/u/{sign_token('unsubscribe', someone, key=signing_key)}"
        self.n = 0

    async def answers(self) -> dict[str, httpx.Response]:
        self.n += 1
        c, headers = self.client, self.who.headers
        body, signed = _signed_webhook(self.n)
        return {
            "contacts": await c.get(f"{API}/contacts", headers=headers),
            "tags": await c.get(f"{API}/tags", headers=headers),
            "write": await c.post(f"{API}/tags", json={"name": f"tag-{self.n}"}, headers=headers),
            "idempotent write": await c.post(
                f"{API}/tags", json={"name": f"again-{self.n}"}, headers={**headers, "Idempotency-Key": f"key-{self.n}"}
            ),
            "readyz": await c.get("/readyz"),
            "webhook": await c.post(f"/webhooks/fake/{self.service_id}", content=body, headers=signed),
            "pixel": await c.get(self.pixel),
            "click": await c.get(self.click),
            "unsubscribe": await c.get(self.unsubscribe),
        }


def _assert_up(answers: dict[str, httpx.Response]) -> None:
    for name in ("contacts", "tags", "readyz", "webhook"):
        assert answers[name].status_code == 200, (name, answers[name].text)
    for name in ("write", "idempotent write"):
        assert answers[name].status_code == 201, (name, answers[name].text)
    assert answers["pixel"].status_code == 200 and answers["pixel"].content.startswith(GIF)
    assert answers["click"].status_code == 404 and answers["unsubscribe"].status_code == 404


def _assert_unavailable(answers: dict[str, httpx.Response]) -> None:
    for name in ("contacts", "tags", "write", "idempotent write", "webhook"):
        expect_error(answers[name], 503, "unavailable")
        assert answers[name].headers["Retry-After"] == "5", name
    assert answers["readyz"].status_code == 503 and answers["readyz"].headers["Retry-After"] == "5"
    assert answers["readyz"].json() == {"ready": False, "reason": "database unreachable"}
    # The pixel never fails (the hit is lost); a person following a link reads a page, not an API error.
    assert answers["pixel"].status_code == 200 and answers["pixel"].content.startswith(GIF)
    for name in ("click", "unsubscribe"):
        assert answers[name].status_code == 503 and answers[name].headers["Retry-After"] == "5", name
        assert "text/html" in answers[name].headers["content-type"] and "Try again" in answers[name].text


@contextlib.asynccontextmanager
async def app_client(db_url: str, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app over `engine`. App exceptions are not re-raised into the test: a 500 must show as a 500."""
    app = create_app(settings_for(db_url), engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
            yield client


async def _webhook_service(sessionmaker: async_sessionmaker[AsyncSession], db_url: str) -> int:
    async with unit_of_work(sessionmaker) as session:
        return await factories.service(
            session, settings_for(db_url), "hooks", credentials={"webhook_secrets": [WEBHOOK_SECRET]}
        )


async def test_api_answers_503_while_postgres_is_away_and_heals_by_itself(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _postgres_only(db_url)
    alice = await make_account(sessionmaker, "alice")
    service_id = await _webhook_service(sessionmaker, db_url)
    async with proxied(db_url) as (proxy, url):
        engine = make_engine(url, pool_size=5)
        try:
            async with app_client(url, engine) as client:
                probe = Probe(client, alice, service_id, settings_for(url).signing_key)
                _assert_up(await probe.answers())

                await proxy.close()  # every pooled connection dies; new ones are refused
                _assert_unavailable(await probe.answers())
                _assert_unavailable(await probe.answers())

                await proxy.reopen()
                _assert_up(await probe.answers())  # at once: the pool replaced its dead connections
        finally:
            await engine.dispose()


async def test_a_connection_cut_in_the_middle_of_a_request_answers_503(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _postgres_only(db_url)
    alice = await make_account(sessionmaker, "alice")
    async with proxied(db_url) as (proxy, url):
        app_engine = make_engine(url, pool_size=5)
        try:
            async with app_client(url, app_engine) as client:
                async with table_locked(engine, "tags"):
                    pending = asyncio.create_task(client.get(f"{API}/tags", headers=alice.headers))
                    await _until(lambda: _lock_waiters(engine, "tags"), timeout=10, what="request waiting")
                    await proxy.close()  # the request's connection dies under its query
                    cut = await asyncio.wait_for(pending, timeout=10)
                    await proxy.reopen()
                expect_error(cut, 503, "unavailable")
                assert cut.headers["Retry-After"] == "5"
                r = await client.get(f"{API}/tags", headers=alice.headers)
                assert r.status_code == 200, r.text
        finally:
            await app_engine.dispose()


async def test_the_worker_survives_a_cut_between_claim_and_send_and_sends_after_it(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    """The cut is placed deterministically: the table of tracked links, which only composing writes (claiming
    never touches it), is locked, so the worker's composition waits there with a claim in hand; then the
    proxy is closed under it."""
    _postgres_only(db_url)
    recipients = 6
    settings = settings_for(db_url)
    async with unit_of_work(sessionmaker) as session:
        user_id = await factories.user(session, "alice", credit=1000)
        sender = await factories.sender(session, user_id)
        template = await factories.template(
            session, user_id, html='<p>Hi <a href="https://example.com/offer">our offer</a></p>{{ unsubscribe_url }}'
        )
        await factories.contacts(session, user_id, recipients)
        await factories.service(session, settings, "esp", map_to=[user_id])
        task_id = await factories.task(
            session, user_id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
        )
    async with unit_of_work(sessionmaker) as session:
        assert await generation.generate(session, task_id) is not None

    caplog.set_level(logging.WARNING, logger="edm.worker")
    async with proxied(db_url) as (proxy, url):
        worker_engine = make_engine(url, pool_size=5)
        kit = DispatchKit(url, make_sessionmaker(worker_engine))
        direct = DispatchKit(db_url, sessionmaker)
        try:
            async with table_locked(engine, "tracked_links") as lock:
                async with kit.worker(concurrency=1, run_jobs=False):
                    await _until(
                        lambda: _lock_waiters(engine, "tracked_links"),
                        timeout=20,
                        what="composition waiting with a claim",
                    )
                    assert await direct.count(task_id, "allocated") > 0
                    await proxy.close()
                    await _until(_logged(caplog, "dispatch.compose_failed"), timeout=10, what="the cut noticed")
                    await kit.hold(0.5)  # the outage lasts: the loop retries and stays alive
                    await proxy.reopen()
                    await lock.rollback()  # the lock goes: composing can write its links again
                    assert _dispatch_loop_alive()
                    await direct.wait_for(
                        lambda: _all_sent(direct, task_id, recipients),
                        timeout=30,
                        what="every recipient sent after the outage",
                    )
        finally:
            await worker_engine.dispose()

    failure = next(r for r in caplog.records if r.getMessage() == "dispatch.compose_failed")
    assert failure.levelno == logging.WARNING and failure.exc_info is None  # an outage, not a traceback
    assert getattr(failure, "database_unavailable", False) is True
    # The claimed recipients were given back, not left to expire into `uncertain`: one counted attempt each.
    subtasks = await direct.subtasks(task_id)
    assert {s.send_state for s in subtasks} == {"sent"} and {s.attempts for s in subtasks} == {1}
    released = await direct.scalar(
        select(func.count())
        .select_from(SendAttempt)
        .where(SendAttempt.outcome == "released", SendAttempt.message.like("not sent: the database was unreachable%"))
    )
    assert released > 0


async def test_the_worker_jobs_log_the_outage_in_one_line_and_carry_on(
    db_url: str, sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    _postgres_only(db_url)
    caplog.set_level(logging.WARNING, logger="edm.jobs")
    direct = DispatchKit(db_url, sessionmaker)
    async with proxied(db_url) as (proxy, url):
        worker_engine = make_engine(url, pool_size=5)
        kit = DispatchKit(url, make_sessionmaker(worker_engine))
        try:
            started = utc_now()
            async with kit.worker(concurrency=1, run_jobs=True) as worker:
                await _until(lambda: _heartbeat_after(direct, worker.id, started), timeout=10, what="registered")
                await proxy.close()
                await _until(_logged(caplog, "job.failed"), timeout=10, what="a job failing")
                await kit.hold(0.5)
                await proxy.reopen()
                back = utc_now()
                # the heartbeat job (every second at this time scale) writes again: the jobs carried on
                await _until(lambda: _heartbeat_after(direct, worker.id, back), timeout=10, what="a heartbeat")
        finally:
            await worker_engine.dispose()
    failures = [r for r in caplog.records if r.getMessage() == "job.failed"]
    assert failures and all(r.levelno == logging.WARNING and r.exc_info is None for r in failures)
    assert all(getattr(r, "database_unavailable", False) is True for r in failures)


async def _heartbeat_after(kit: DispatchKit, worker_id: str, moment: dt.datetime) -> bool:
    beat = await kit.scalar(select(WorkerRow.last_heartbeat_at).where(WorkerRow.id == worker_id))
    return beat is not None and beat > moment


def _logged(caplog: pytest.LogCaptureFixture, message: str) -> Any:
    async def check() -> bool:
        return any(r.getMessage() == message for r in caplog.records)

    return check


def _dispatch_loop_alive() -> bool:
    loops = [t for t in asyncio.all_tasks() if t.get_name() == "dispatch-0"]
    return len(loops) == 1 and not loops[0].done()


async def _all_sent(kit: DispatchKit, task_id: int, recipients: int) -> bool:
    assert _dispatch_loop_alive(), "the dispatch loop died"
    return await kit.count(task_id, "sent") == recipients


async def test_sqlite_file_out_of_reach_answers_503_and_heals(tmp_path: Path) -> None:
    """The volume holding the database file goes away (here: its directory is renamed) and a connection has to
    be opened (a restarted process; the pool's connections are dropped to stand for it)."""
    from edm.migrations.migrate import upgrade

    home = tmp_path / "volume"
    home.mkdir()
    url = f"sqlite:///{home / 'edm.db'}"
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    try:
        alice = await make_account(make_sessionmaker(engine), "alice")
        async with app_client(url, engine) as client:
            pixel = f"/t/o/{sign_token('open', uuid.uuid4(), key=settings_for(url).signing_key)}.gif"
            assert (await client.get(f"{API}/tags", headers=alice.headers)).status_code == 200

            home.rename(tmp_path / "elsewhere")
            await engine.dispose()
            down = await client.get(f"{API}/tags", headers=alice.headers)
            expect_error(down, 503, "unavailable")
            assert down.headers["Retry-After"] == "5"
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
            written = await client.post(f"{API}/tags", json={"name": "while away"}, headers=alice.headers)
            expect_error(written, 503, "unavailable")
            gif = await client.get(pixel)
            assert gif.status_code == 200 and gif.content.startswith(GIF)

            (tmp_path / "elsewhere").rename(home)
            assert (await client.get(f"{API}/tags", headers=alice.headers)).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await engine.dispose()


async def test_sql_the_database_refuses_as_wrong_stays_a_500(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A missing table is a bug or a broken schema, not an outage: retrying would not help."""
    alice = await make_account(sessionmaker, "alice")
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE tags RENAME TO tags_elsewhere"))
    try:
        async with app_client(db_url, engine) as client:
            expect_error(await client.get(f"{API}/tags", headers=alice.headers), 500, "internal_error")
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE tags_elsewhere RENAME TO tags"))
