"""The deployment of docs/deploy.md on one machine: one migration run, two `edm serve` behind a round-robin client,
three `edm worker`, all real processes on one PostgreSQL database, and a task of 20,000 recipients sent to a real
SMTP sink, each exactly once.

Everything after the two accounts (an admin and a user, made as `edm user create` would) goes through the two
servers' API in turn: the admin creates two SMTP services and maps them to the user; the user creates a sender and
a template, imports 20,000 contacts from a CSV file (the workers run the import), creates the task and schedules
it. The workers generate, claim, send and record; each held SMTP connections to the sink, so each took a share.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from sqlalchemy.engine import make_url

from edm.db.engine import make_engine, make_sessionmaker
from edm.devtools.smtp_sink import SmtpSink
from edm.models.users import Role
from tests.acceptance.postgres_tools import free_port
from tests.acceptance.workers import start_server, start_worker, stop, until_serving
from tests.helpers import make_account, run_cli_async

RECIPIENTS = 20_000
SERVERS = 2
WORKERS = 3
# The processes' clock runs at a quarter of real time (periodic jobs every quarter of their period), not at the other
# tests' twentieth: at 0.05 the maintenance jobs of three idle workers polled the database ~300 times a second and took
# most of the machine's two cores from the send they wait for.
TIME_SCALE = "0.25"


class RoundRobin:
    """An API client that sends each request to the next server in turn, like a load balancer would."""

    def __init__(self, bases: list[str]) -> None:
        # A new connection per request: a kept-alive one may be closed by the server (after 5 s idle) just as it is
        # reused, which a load balancer would retry but a test client reports as an error.
        limits = httpx.Limits(max_keepalive_connections=0)
        self.clients = [httpx.AsyncClient(base_url=base, timeout=120, limits=limits) for base in bases]
        self.turn = 0
        self.answered: Counter[int] = Counter()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        index = self.turn % len(self.clients)
        self.turn += 1
        response = await self.clients[index].request(method, path, **kwargs)
        if response.status_code < 500:
            self.answered[index] += 1
        return response

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


@asynccontextmanager
async def fresh_database(base_url: str) -> AsyncIterator[str]:
    """An empty database beside the test's (dropped after): the migration below is a real one."""
    base = make_url(base_url)
    name = f"{base.database}_topology_{uuid.uuid4().hex[:6]}"
    admin = base.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
async def test_two_servers_three_workers_send_20000_recipients_once_each(db_url: str, tmp_path: Path) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several processes on one database: PostgreSQL")
    started = time.monotonic()
    async with fresh_database(db_url) as url:
        migrated = await run_cli_async(url, "db", "upgrade")  # the one-shot migration, before any process starts
        assert migrated.returncode == 0, migrated.stderr
        engine = make_engine(url, pool_size=1)
        try:
            sessionmaker = make_sessionmaker(engine)
            admin = await make_account(sessionmaker, "ops", role=Role.ADMIN)
            user = await make_account(sessionmaker, "ann", credit=RECIPIENTS)
        finally:
            await engine.dispose()

        ports = [free_port() for _ in range(SERVERS)]
        processes: list[subprocess.Popen[bytes]] = []
        with SmtpSink() as sink:
            try:
                for i, port in enumerate(ports):
                    processes.append(
                        start_server(url, port=port, log=tmp_path / f"serve-{i}.log", EDM_TIME_SCALE=TIME_SCALE)
                    )
                workers = [
                    start_worker(url, concurrency=2, log=tmp_path / f"worker-{i}.log", EDM_TIME_SCALE=TIME_SCALE)
                    for i in range(WORKERS)
                ]
                processes.extend(workers)
                bases = [f"http://127.0.0.1:{port}" for port in ports]
                for i, (base, server) in enumerate(zip(bases, processes, strict=False)):
                    await until_serving(base, server, tmp_path / f"serve-{i}.log", timeout=120)
                phases = {"serving": time.monotonic() - started}
                api = RoundRobin(bases)
                try:
                    task_id = await _set_up_and_schedule(api, admin.headers, user.headers, sink, phases, started)
                    await _until_completed(api, user.headers, task_id, processes, timeout=900)
                    phases["completed"] = time.monotonic() - started
                    stats = (await api.request("GET", f"/api/v1/tasks/{task_id}/stats", headers=user.headers)).json()
                    sending = _workers_connected_to(sink.port, workers)
                finally:
                    await api.aclose()
            finally:
                stop(processes)
            received = sink.count_by_subtask()

    assert len(received) == RECIPIENTS and set(received.values()) == {1}, "each recipient exactly once"
    assert stats["sent"] == RECIPIENTS and stats["uncertain"] == 0 and stats["failed"] == 0, stats
    assert api.answered[0] > 5 and api.answered[1] > 5, "both servers answered"
    assert sending == {w.pid for w in workers}, "every worker sent"
    at = ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items())
    print(f"\n{RECIPIENTS} recipients, {SERVERS} servers, {WORKERS} workers: {time.monotonic() - started:.1f} s ({at})")


async def _set_up_and_schedule(
    api: RoundRobin,
    admin: dict[str, str],
    user: dict[str, str],
    sink: SmtpSink,
    phases: dict[str, float],
    started: float,
) -> int:
    async def call(method: str, path: str, who: dict[str, str], expect: int, **kwargs: Any) -> Any:
        r = await api.request(method, f"/api/v1{path}", headers=who, **kwargs)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    services = []
    for name in ("relay-a", "relay-b"):
        body = {
            "name": name,
            "provider": "smtp",
            "domain": f"{name}.example.com",
            "options": {"host": sink.host, "port": sink.port, "security": "none"},
            "sending_interval_seconds": 0,
            # 100 rows a claim: a claim's fixed cost (≈ 35 statements) spread over more mail (bench/RESULTS.md).
            "max_concurrency": 100,
            "daily_quota": 1_000_000,
        }
        services.append((await call("POST", "/admin/services", admin, 201, json=body))["id"])
    me = await call("GET", "/me", user, 200)
    await call(
        "POST", "/admin/mappings", admin, 201, json={"user_ids": [me["id"]], "service_ids": services, "is_active": True}
    )
    sender = await call("POST", "/senders", user, 201, json={"local_part": "news", "display_name": "News"})
    html = "<p>Hello {{ contact.first_name | default('there', true) }}</p>{{ unsubscribe_url }}"
    template = await call("POST", "/templates", user, 201, json={"name": "hello", "subject": "Hello", "html": html})

    csv = io.StringIO()
    csv.write("email,first_name\n")
    for i in range(RECIPIENTS):
        csv.write(f"r{i}@example.net,N{i}\n")
    files = {"file": ("contacts.csv", csv.getvalue().encode(), "text/csv")}
    imported = await call("POST", "/contacts/imports", user, 202, files=files)
    while imported["status"] in ("queued", "running"):
        await asyncio.sleep(0.5)
        imported = await call("GET", f"/contacts/imports/{imported['id']}", user, 200)
    assert imported["status"] == "completed" and imported["created"] == RECIPIENTS, imported
    phases["imported"] = time.monotonic() - started

    body = {
        "name": "twenty thousand",
        "sender_id": sender["id"],
        "templates": [{"template_id": template["id"]}],
        "recipient_rule": {"type": "all_contacts"},
        "track_opens": False,
        "track_clicks": False,
    }
    task = await call("POST", "/tasks", user, 201, json=body)
    await call("POST", f"/tasks/{task['id']}/schedule", user, 200, json={"now": True})
    phases["scheduled"] = time.monotonic() - started
    return int(task["id"])


async def _until_completed(
    api: RoundRobin, headers: dict[str, str], task_id: int, processes: list[subprocess.Popen[bytes]], timeout: float
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await api.request("GET", f"/api/v1/tasks/{task_id}", headers=headers)
        assert r.status_code == 200, r.text
        task = r.json()
        if task["status"] == "completed":
            return
        assert task["status"] != "paused", f"the task paused: {task.get('pause_reason')} {task.get('pause_detail')}"
        assert all(p.poll() is None for p in processes), "an edm process exited"
        assert asyncio.get_running_loop().time() < deadline, f"task still {r.json()['status']}"
        await asyncio.sleep(0.5)


def _workers_connected_to(port: int, workers: list[subprocess.Popen[bytes]]) -> set[int]:
    """The worker processes holding an SMTP connection to the sink (their pools keep them open while they run)."""
    return {
        w.pid
        for w in workers
        if any(c.raddr and c.raddr.port == port for c in psutil.Process(w.pid).net_connections(kind="tcp"))
    }
