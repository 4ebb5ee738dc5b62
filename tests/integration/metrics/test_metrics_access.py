"""Who may read /metrics (docs/operations.md#metrics): loopback only by default; with `EDM_METRICS_TOKEN` a bearer
token (401 without it); with `EDM_METRICS_ALLOW` listed networks only (403 elsewhere); both together. The same rules
on `edm serve` and on a worker's own port, which also answers nothing but GET /metrics."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from edm.app import create_app
from edm.metrics.server import MetricsServer
from tests.helpers import run_cli, settings_for

pytestmark = pytest.mark.any_database

TOKEN = "a-long-random-metrics-token-0123456789"


@asynccontextmanager
async def _app(db_url: str, engine: Any, **settings: object) -> AsyncIterator[Any]:
    app = create_app(settings_for(db_url, **settings), engine=engine)
    async with app.router.lifespan_context(app):
        yield app


async def _get(app: Any, client: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(client, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as http:
        return await http.get("/metrics", headers=headers)


async def test_without_settings_only_loopback_may_scrape(db_url: str, engine: Any) -> None:
    async with _app(db_url, engine) as app:
        assert (await _get(app, "127.0.0.1")).status_code == 200
        assert (await _get(app, "::1")).status_code == 200
        refused = await _get(app, "203.0.113.5")
        assert refused.status_code == 403 and "edm_" not in refused.text
        assert (await _get(app, "10.0.0.1")).status_code == 403


async def test_a_token_is_required_from_any_address_once_set(db_url: str, engine: Any) -> None:
    async with _app(db_url, engine, metrics_token=TOKEN) as app:
        missing = await _get(app, "127.0.0.1")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert "edm_" not in missing.text
        assert (await _get(app, "127.0.0.1", Authorization="Bearer wrong-token")).status_code == 401
        assert (await _get(app, "127.0.0.1", Authorization=f"Basic {TOKEN}")).status_code == 401
        assert (await _get(app, "127.0.0.1", Authorization=f"Bearer {TOKEN}x")).status_code == 401
        allowed = await _get(app, "203.0.113.5", Authorization=f"Bearer {TOKEN}")
        assert allowed.status_code == 200 and "edm_workers_alive" in allowed.text


async def test_allowed_networks_replace_loopback(db_url: str, engine: Any) -> None:
    async with _app(db_url, engine, metrics_allow="10.0.0.0/8, 192.0.2.7") as app:
        assert (await _get(app, "10.20.30.40")).status_code == 200
        assert (await _get(app, "192.0.2.7")).status_code == 200
        assert (await _get(app, "::ffff:10.1.1.1")).status_code == 200  # an IPv4 peer on a dual-stack socket
        assert (await _get(app, "192.0.2.8")).status_code == 403
        assert (await _get(app, "127.0.0.1")).status_code == 403


async def test_networks_and_token_together_both_must_hold(db_url: str, engine: Any) -> None:
    async with _app(db_url, engine, metrics_allow="10.0.0.0/8", metrics_token=TOKEN) as app:
        assert (await _get(app, "10.1.2.3")).status_code == 401
        assert (await _get(app, "10.1.2.3", Authorization=f"Bearer {TOKEN}")).status_code == 200
        assert (await _get(app, "203.0.113.5", Authorization=f"Bearer {TOKEN}")).status_code == 403


async def test_a_bad_network_is_a_configuration_error(db_url: str) -> None:
    with pytest.raises(ValidationError, match="EDM_METRICS_ALLOW: 'nonsense' is not an IP address or CIDR network"):
        settings_for(db_url, metrics_allow="10.0.0.0/8,nonsense")
    result = run_cli(db_url, "serve", EDM_METRICS_ALLOW="300.1.2.3/8")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: configuration error: EDM_METRICS_ALLOW: '300.1.2.3/8' is not an IP address or CIDR network"
    )


async def test_a_worker_answers_on_its_own_port_with_the_same_rules(db_url: str, sessionmaker: Any) -> None:
    server = MetricsServer(settings_for(db_url, metrics_token=TOKEN), sessionmaker, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/metrics")).status_code == 401
            answer = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "edm_workers_alive 0.0" in answer.text and "edm_metrics_database_up 1.0" in answer.text
            head = await http.head("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert head.status_code == 200 and head.content == b""
            assert (await http.get("/other", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 404
            assert (await http.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 405
        assert await _raw(port, b"nonsense\r\n\r\n") == b"HTTP/1.1 400"
        assert await _raw(port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 20_000) == b""  # no end of head
    finally:
        await server.stop()
    allowed_elsewhere = settings_for(db_url, metrics_allow="10.0.0.0/8")
    server = MetricsServer(allowed_elsewhere, sessionmaker, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/metrics")).status_code == 403
    finally:
        await server.stop()


async def test_a_taken_metrics_port_stops_the_worker_with_one_line(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(run_cli, db_url, "worker", "--metrics-port", str(port))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot answer /metrics on 127.0.0.1:{port}: ")


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read(12)
    writer.close()
    return answer
