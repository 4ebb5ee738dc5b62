"""Templates that try to stall or bloat the server: every one is a prompt 422 naming the limit it hit.

Any account may preview, a `read_only` one included, so each hostile shape goes through the real API
with a read-only token and must answer within 2.5 s. Two more checks keep the server's other work going:
`/healthz` answers within 100 ms while a hostile preview renders (in-process, on both databases), and a
real `edm serve` process answers every shape without its RSS growing by 50 MB and with `/healthz` polled
from another thread meanwhile (SQLite only: the claim is about the process, not the database).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from edm.db.engine import make_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.errors import BadInput
from edm.migrations.migrate import upgrade
from edm.models.users import Role
from tests import factories
from tests.helpers import Account, api_client, cli_env, expect_error, make_account

pytestmark = pytest.mark.any_database  # template limits are the sandbox's, whatever the database

ROOT = Path(__file__).resolve().parents[2]
A = "{% set a = 'x' * 2000000 %}"  # one 2 MB string: allowed on its own, the raw material of every blow-up

# name -> (template HTML, the limit it must hit)
SHAPES: dict[str, tuple[str, str]] = {
    "lipsum": ("{{ lipsum(60000)|length }}", "size"),
    "concat_doubling": (A + "{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{% set e = d ~ d %}"
                            "{% set f = e ~ e %}{% set g = f ~ f %}{% set h = g ~ g %}{{ h|length }}", "size"),
    "join_filter": (A + "{{ ([a] * 300)|join|length }}", "size"),
    "str_join": (A + "{{ ''.join([a] * 300)|length }}", "size"),
    "center": (A + "{{ ([a] * 300)|center(80)|length }}", "size"),
    "indent": ("{{ ('x\\n' * 1000000)|indent(1000)|length }}", "size"),
    "wordwrap": ("{{ ('x ' * 1000000)|wordwrap(1, wrapstring='y' * 1000)|length }}", "size"),
    "replace": (A + "{{ ([a] * 300)|replace('x', 'y')|length }}", "size"),
    "format": (A + "{{ ('%s' * 300)|format(*([a] * 300))|length }}", "size"),
    "truncate": (A + "{{ ([a] * 300)|truncate(1000) }}", "size"),
    "filesizeformat": (A + "{{ ([a] * 300)|filesizeformat }}", "size"),
    "list": (A + "{{ a|list|length }}", "size"),
    "batch": (A + "{{ a|batch(1)|list|length }}", "size"),
    "slice": (A + "{{ a|slice(1000000)|list|length }}", "size"),
    "split": ("{{ ('xy ' * 600000).split()|length }}", "size"),
    "splitlines": ("{{ ('xy\\n' * 600000).splitlines()|length }}", "size"),
    "sort": ("{{ range(100000)|list|sort|length }}", "size"),
    "unique": (A + "{{ a|unique|list|length }}", "size"),
    "map": (A + "{{ a|map('upper')|list|length }}", "size"),
    "tojson": (A + "{{ ([a] * 300)|tojson|length }}", "size"),
    "pprint": (A + "{{ ([a] * 300)|pprint|length }}", "size"),
    "urlize": ("{{ ('www.example.com ' * 120000)|urlize|length }}", "size"),
    "striptags": ("{{ ('<b>xy</b> ' * 200000)|striptags|length }}", "size"),
    "wordcount": ("{{ ('xy ' * 600000)|wordcount }}", "size"),
    "dictsort": (A + "{{ dict.fromkeys(range(100000), a)|dictsort(by='value')|length }}", "size"),
    "groupby": (A + "{{ dict.fromkeys(range(100000), a).items()|groupby('1')|list|length }}", "size"),
    "sum": ("{{ ([[0] * 100000] * 1000)|sum(start=[])|length }}", "size"),
    "str_format_repeated_field": (A + "{{ ('{0}' * 300).format(a)|length }}", "size"),
    "percent_format": (A + "{{ (('%(x)s' * 300) % {'x': a})|length }}", "size"),
    "range_product": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "time"),
    "namespace": (A + "{% set ns = namespace(l=[]) %}{% for i in range(300) %}{% set ns.l = ns.l + [a ~ i] %}"
                      "{% endfor %}{{ ns.l|length }}", "work"),
    "macro": (A + "{% macro m() %}{% for i in range(300) %}{{ a }}{% endfor %}{% endmacro %}{{ m()|length }}",
              "work"),
    "caller": (A + "{% macro m() %}{% for i in range(300) %}{{ caller() }}{% endfor %}{% endmacro %}"
                   "{% call m() %}{{ a }}{% endcall %}", "work"),
    "recursion": ("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", "depth"),
    "exponential_recursion": (A + "{% macro r(n) %}{% if n %}{{ r(n - 1) }}{{ r(n - 1) }}{% else %}{{ a }}"
                                  "{% endif %}{% endmacro %}{{ r(9)|length }}", "work"),
    "cycler": (A + "{{ cycler(*([a] * 300)).items|join|length }}", "size"),
    "joiner": (A + "{% set j = joiner(a) %}{% macro m() %}{% for i in range(300) %}{{ j() }}{% endfor %}"
                   "{% endmacro %}{{ m()|length }}", "work"),
    "many_sets": (A + "".join(f"{{% set v{i} = a ~ '{i}' %}}" for i in range(200)) + "{{ v0|length }}", "work"),
}  # fmt: skip

# Sources too large or too deep to compile at all: refused before compiling (Python's compile() of a huge
# generated module is one long C call that holds the GIL), as a 422 `template_syntax_error`.
TOO_COMPLEX: dict[str, str] = {
    "many_tags": "{{ x }}" * 280_000,
    "long_expression": "{{ " + " ~ ".join(["a"] * 6000) + " }}",
    "deep_nesting": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
}

# What the message says for each limit: it names the limit, so the author knows what to change.
NAMED = {
    "time": "took longer than 2 s",
    "size": "would exceed",
    "work": "exceeds the 16 MB budget",
    "depth": "nest deeper than 50 levels",
}
ANSWER_WITHIN = 2.5  # seconds, end to end through the API
HEALTHZ_WITHIN = 0.100  # seconds, for every poll while a hostile template renders
RSS_GROWTH_BELOW = 50 * 1024 * 1024


def preview_body(html: str) -> dict[str, Any]:
    return {"subject": "Hello", "html": html}


def check_refusal(response: httpx.Response, limit: str) -> None:
    error = expect_error(response, 422, "validation_error")
    assert NAMED[limit] in error["message"], error
    assert error["details"][0]["limit"] == limit, error


async def reader(sessionmaker: async_sessionmaker[AsyncSession]) -> Account:
    return await make_account(sessionmaker, "reader", role=Role.READ_ONLY, scope="read")


# --------------------------------------------------------------------------------------------------------
# Through the API, in process, on both databases
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_hostile_preview_is_refused_promptly_naming_the_limit(
    shape: str, db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    html, limit = SHAPES[shape]
    who = await reader(sessionmaker)
    async with api_client(db_url, engine) as client:
        started = time.monotonic()
        r = await client.post("/api/v1/templates/preview", json=preview_body(html), headers=who.headers)
        elapsed = time.monotonic() - started
    check_refusal(r, limit)
    assert elapsed < ANSWER_WITHIN, f"{shape}: answered after {elapsed:.2f} s"


@pytest.mark.parametrize("shape", list(TOO_COMPLEX))
async def test_a_template_too_complex_to_compile_is_refused_promptly(
    shape: str, db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    who = await reader(sessionmaker)
    async with api_client(db_url, engine) as client:
        started = time.monotonic()
        r = await client.post("/api/v1/templates/preview", json=preview_body(TOO_COMPLEX[shape]), headers=who.headers)
        elapsed = time.monotonic() - started
    error = expect_error(r, 422, "template_syntax_error")
    assert "html:: the template is too complex" in error["message"] and error["details"][0]["field"] == "html"
    assert elapsed < ANSWER_WITHIN, f"{shape}: answered after {elapsed:.2f} s"


@pytest.mark.serial  # a 100 ms bound: not beside another test process on a 2-core machine
async def test_healthz_answers_while_a_hostile_preview_renders(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The preview takes its whole time limit; the event loop keeps serving meanwhile."""
    html, limit = SHAPES["range_product"]
    who = await reader(sessionmaker)
    async with api_client(db_url, engine) as client:
        preview = asyncio.create_task(
            client.post("/api/v1/templates/preview", json=preview_body(html), headers=who.headers)
        )
        latencies = []
        while not preview.done():
            started = time.monotonic()
            r = await client.get("/healthz")
            latencies.append(time.monotonic() - started)
            assert r.status_code == 200
            await asyncio.sleep(0.02)
        answer = await preview
    assert len(latencies) > 20, f"only {len(latencies)} polls ran while the preview rendered"
    assert max(latencies) < HEALTHZ_WITHIN, f"slowest /healthz: {max(latencies) * 1000:.0f} ms"
    check_refusal(answer, limit)


async def test_parallel_hostile_previews_queue_for_the_render_threads(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Four previews that each take the whole time limit: at most two render at once (the others wait),
    and each still gets its own full time limit rather than a share of one."""
    html, limit = SHAPES["range_product"]
    who = await reader(sessionmaker)
    async with api_client(db_url, engine) as client:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(client.post("/api/v1/templates/preview", json=preview_body(html), headers=who.headers) for _ in range(4))
        )
        elapsed = time.monotonic() - started
    for r in answers:
        check_refusal(r, limit)
    assert elapsed >= 3.9, f"four 2 s renders on two threads take two rounds, not {elapsed:.2f} s"


async def test_scheduling_refuses_a_template_that_hits_a_limit(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Scheduling test-renders every template for the first contact: a limit is a 422 naming the template."""
    html, limit = SHAPES["many_sets"]
    async with unit_of_work(sessionmaker) as session:
        user = await factories.user(session, "alice", credit=100)
        await factories.contacts(session, user, 1)
        template = await factories.template(session, user, "hostile", html=html)
        sender = await factories.sender(session, user)
    with pytest.raises(BadInput) as err:
        async with unit_of_work(sessionmaker) as session:
            await factories.task(
                session, user, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
            )
    assert "template 'hostile' does not render: html: template work exceeds the 16 MB budget" in err.value.message
    assert err.value.details[0]["limit"] == limit and err.value.details[0]["template_id"] == template


# --------------------------------------------------------------------------------------------------------
# A real server process: RSS and concurrency
# --------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    token: str

    @property
    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def preview(self, html: str) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/api/v1/templates/preview",
            json=preview_body(html),
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _read_only_token(db_url: str) -> str:
    engine = make_engine(db_url)
    try:
        return (await reader(make_sessionmaker(engine))).token
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db_url = f"sqlite:///{tmp_path_factory.mktemp('render-limits') / 'edm.db'}"
    upgrade(db_url)
    token = asyncio.run(_read_only_token(db_url))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
    env.update(cli_env(db_url), PYTHONPATH=str(ROOT / "src"))
    process = subprocess.Popen(
        [sys.executable, "-m", "edm", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    running = Server(f"http://127.0.0.1:{port}", process, token)
    try:
        _wait_until_serving(running)
        # Warm up: the first preview imports and caches what every later one reuses.
        assert running.preview("Hello {{ contact.first_name | default('there') }}").status_code == 200
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.process.poll() is None, "edm serve exited"
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("edm serve did not start within 30 s")


class HealthzPoller(threading.Thread):
    """Polls /healthz from its own thread until stopped; the worst latency includes a poll still waiting."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.latencies: list[float] = []
        self.polling_since: float | None = None
        self.stopped = threading.Event()
        self.answered = threading.Event()  # set after the first poll: the connection is open and warm

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stopped.is_set():
                self.polling_since = time.monotonic()
                assert client.get("/healthz").status_code == 200
                self.latencies.append(time.monotonic() - self.polling_since)
                self.polling_since = None
                self.answered.set()
                time.sleep(0.02)

    def worst(self) -> float:
        waiting = time.monotonic() - self.polling_since if self.polling_since is not None else 0.0
        return max([*self.latencies, waiting])


@pytest.mark.serial  # a 100 ms bound: not beside another test process on a 2-core machine
@pytest.mark.parametrize("shape", [*SHAPES, *TOO_COMPLEX])
def test_hostile_preview_in_a_real_server_keeps_memory_and_healthz(server: Server, shape: str) -> None:
    html, limit = SHAPES[shape] if shape in SHAPES else (TOO_COMPLEX[shape], "")
    before = server.rss
    poller = HealthzPoller(server.base_url)
    poller.start()
    try:
        assert poller.answered.wait(10), "/healthz answered"
        poller.latencies.clear()  # the first poll opened the connection: measure from here
        started = time.monotonic()
        r = server.preview(html)
        elapsed = time.monotonic() - started
        worst_healthz = poller.worst()
    finally:
        poller.stopped.set()
        poller.join(timeout=30)
    growth = server.rss - before
    if limit:
        check_refusal(r, limit)
    else:
        assert "the template is too complex" in expect_error(r, 422, "template_syntax_error")["message"]
    assert elapsed < ANSWER_WITHIN, f"{shape}: answered after {elapsed:.2f} s"
    assert growth < RSS_GROWTH_BELOW, f"{shape}: RSS grew by {growth / 2**20:.1f} MB"
    assert worst_healthz < HEALTHZ_WITHIN, f"{shape}: slowest /healthz {worst_healthz * 1000:.0f} ms"
