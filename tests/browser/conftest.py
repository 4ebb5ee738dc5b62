"""Browser tests: Debian's Chromium (/usr/bin/chromium), driven by Playwright, against a real `edm serve`.

What each test gets:

- `server`: one `edm serve` process per test session (per xdist worker: fixtures live in the worker process) on a
  free loopback port, over a fresh, migrated SQLite database. SQLite only: a browser test checks pages, and the
  services behind them run on both databases in tests/integration. The database is shared by the session's tests,
  so each test makes its own accounts (`server.account(...)` gives unique names) and reads nothing global. Every
  login comes from 127.0.0.1: the throttle's limit of 50 failures per IP in 15 minutes covers the whole session,
  so a test makes no more failed logins than it needs.
- `browser`: one Chromium per session (starting it is the expensive part); `console`: a fresh context (cookies,
  storage) and page per test, at 1280×800, English unless a test says otherwise.
- `worker` and `smtp_sink`, for a test that needs mail sent: an `edm worker` process on the same database, and a
  local SMTP sink (`SmtpSink`) that an `smtp` service can point at.
- A test whose outcome depends on every sending service of the deployment (a backup service works only while no
  primary service of the whole deployment is available) starts one of its own: `running_server(folder)`,
  `start_worker(server, log)`, and `open_console(...)` for each person it shows (test_admin_scenario.py).

Every page a test looks at goes through `console.visit(path, name)` or, after a click that navigated,
`console.check(name)`. It asserts that nothing was requested from another host (such requests are aborted and
recorded), that no JavaScript error or console error happened, that none of the page's own requests failed or
answered 4xx/5xx, that the page answered the expected status, that no `⟦MISSING` catalogue marker shows, and
that axe-core finds no serious or critical accessibility violation (every rule at 1280×800 in light colours, then
at 390×844 in dark colours the rules that width and palette can break: contrast, scrolling regions, tap targets),
and, with EDM_TEST_SCREENSHOTS=1, saves a screenshot at each size to
`var/test-artifacts/screenshots/<test>-<name>-<width>.png` (off by default: nobody looks at them in `make test`, and
the two cost ~0.3 s a page over some 120 audited pages). The audit and the screenshots are made once per page name
and test run, by the first test process to check it (see AUDITED); every
other check, on every visit.

Chromium is launched from /usr/bin/chromium with `executable_path` (never `playwright install`). Without it
the tests are skipped, except in CI (`CI=true`), where `.ci/run` installs it and a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, Response, ViewportSize, sync_playwright
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.engine import make_engine, make_sessionmaker
from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.migrations.migrate import upgrade
from edm.models.users import Role
from edm.settings import Settings
from edm.system.service import Actor
from edm.users.service import get_user, reset_password, update_user
from tests.helpers import PASSWORD, Account, cli_env, make_account, settings_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "var" / "test-artifacts" / "screenshots"
SAVE_SCREENSHOTS = os.environ.get("EDM_TEST_SCREENSHOTS") == "1"
# The accessibility audit and the two screenshots (~1 s a page) are made the first time the test run checks a page
# under a given name, in whichever test process gets there first (the English and the Chinese flow visit the same
# pages, with the same markup, in two processes); later visits of the same page and state check everything else
# (status, missing strings, other hosts, script errors, failed requests) and skip the audit.
AUDITED: set[str] = set()  # names this process saw already (no need to ask the shared marks again)
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
MISSING = "⟦MISSING"
PHONE_RULES = ["color-contrast", "scrollable-region-focusable", "target-size", "meta-viewport", "link-in-text-block"]
T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


# ---- the server -------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _on_own_thread(work: Callable[[], T]) -> T:
    """`work()` on a thread of its own: Playwright's sync API keeps an event loop running on the test's thread, so
    anything that runs a loop of its own (asyncio.run) must run elsewhere."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    value: T = result["value"]
    return value


def run_async(work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a thread and loop of its own."""

    async def main() -> T:
        return await work()

    return _on_own_thread(lambda: asyncio.run(main()))


@dataclass
class Server:
    url: str
    db_url: str
    process: subprocess.Popen[bytes]
    log: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def settings(self) -> Settings:
        return settings_for(self.db_url, public_url=self.url)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDM_")}
        env.update(cli_env(self.db_url), EDM_PUBLIC_URL=self.url, PYTHONUNBUFFERED="1")
        return env

    def database(self, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
        """Run `work(sessionmaker)` against the server's database (test set-up through the real services)."""

        async def go() -> T:
            engine = make_engine(self.db_url)
            try:
                return await work(make_sessionmaker(engine))
            finally:
                await engine.dispose()

        return run_async(go)

    def account(
        self,
        prefix: str = "user",
        *,
        role: str = Role.USER,
        credit: int = 0,
        locale: str | None = None,
        timezone: str = "UTC",
        must_change_password: bool = False,
    ) -> Account:
        """A new account (made with tests.helpers.make_account) with a name no other test of the session uses; its
        password is `tests.helpers.PASSWORD`."""
        name = f"{prefix}{next(self._names)}-{uuid.uuid4().hex[:6]}"

        async def make(sessionmaker: async_sessionmaker[AsyncSession]) -> Account:
            account = await make_account(sessionmaker, name, role=role, credit=credit)
            async with unit_of_work(sessionmaker) as session:
                user = await get_user(session, account.id)
                actor = Actor(None, "cli", None)
                await update_user(session, user, {"locale": locale, "timezone": timezone}, actor=actor)
                if must_change_password:
                    await reset_password(session, user, PASSWORD, must_change=True, actor=actor)
            return account

        return self.database(make)


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"edm serve exited:\n{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"edm serve did not start within 30 s:\n{server.log.read_text()[-3000:]}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("browser")) as started:
        yield started


@contextmanager
def running_server(folder: Path) -> Iterator[Server]:
    """An `edm serve` over a fresh, migrated SQLite database in `folder`: the session's `server`, or a deployment of
    a test's own when what it checks depends on every service of the deployment (dispatch tiers are chosen
    deployment-wide, docs/sending.md#how-a-service-is-chosen)."""
    db_url = f"sqlite:///{folder / 'edm.db'}"
    _on_own_thread(lambda: upgrade(db_url))  # it runs an event loop: not on Playwright's thread
    port = _free_port()
    log = folder / "serve.log"
    server = Server(f"http://127.0.0.1:{port}", db_url, None, log)  # type: ignore[arg-type]
    with log.open("ab") as out:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "edm", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=server.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(server)
        yield server
    finally:
        stop_process(server.process)


@pytest.fixture
def worker(server: Server, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts an `edm worker` on the server's database when the test calls it (stopped with SIGTERM after the test);
    its jobs run 20 times as often as in production (EDM_TIME_SCALE=0.05)."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        process = start_worker(server, tmp_path / "worker.log")
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            stop_process(process)


def start_worker(server: Server, log: Path) -> subprocess.Popen[bytes]:
    """An `edm worker` on `server`'s database, logging to `log`; the caller stops it (`stop_process`): the `worker`
    fixture's, or one for a test's own deployment (`running_server`)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edm", "worker", "--concurrency", "2"],
            cwd=ROOT,
            env=server.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


# ---- the browser ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Console:
    """One test's browser context and page, and the checks every page visit goes through."""

    page: Page
    context: BrowserContext
    server: Server
    test_name: str
    audit_marks: Path  # one empty file per page name audited in this test run, shared by its test processes
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    document_status: int | None = None
    dialogs: list[str] = field(default_factory=list)
    # Called with the page's name after every check (a test saving pages for the docs: EDM_DOCS_SCREENSHOTS).
    after_check: Callable[[str], None] | None = None

    @property
    def origin(self) -> str:
        return self.server.url

    def url(self, path: str) -> str:
        return self.server.url + path

    def visit(self, path: str, name: str, *, status: int = 200) -> None:
        self.page.goto(self.url(path))
        self.check(name, status=status)

    def submit(self, selector: str, name: str, *, status: int = 200) -> None:
        """Click the button `selector`, wait for the page it leads to, and check that page."""
        with self.page.expect_navigation():
            self.page.click(selector)
        self.check(name, status=status)

    def check(self, name: str, *, status: int = 200) -> None:
        page = self.page
        page.wait_for_load_state("load")
        assert self.document_status == status, f"{page.url} answered {self.document_status}, expected {status}"
        html = page.content()
        assert MISSING not in html, f"{page.url} shows a string missing from the catalogue: {_missing(html)}"
        self._assert_clean(page.url)
        if self.after_check is not None:
            self.after_check(name)
        if name in AUDITED or not self._first_to_audit(name):  # this page (in this state) was audited already
            return
        for size, scheme in ((DESKTOP, "light"), (PHONE, "dark")):
            page.set_viewport_size(size)
            page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
            self._axe(name, size["width"])
            if SAVE_SCREENSHOTS:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / f"{self.test_name}-{name}-{size['width']}.png"))
        page.set_viewport_size(DESKTOP)
        page.emulate_media(color_scheme="light")
        self._assert_clean(page.url)

    def _first_to_audit(self, name: str) -> bool:
        """Claims the audit of `name` for this run: creating its mark file succeeds in one test process only."""
        AUDITED.add(name)
        self.audit_marks.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.audit_marks / re.sub(r"[^A-Za-z0-9_.-]+", "_", name), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def _assert_clean(self, where: str) -> None:
        foreign, errors, failed = list(self.foreign), list(self.errors), list(self.failed)
        self.foreign.clear()
        self.errors.clear()
        self.failed.clear()
        assert not foreign, f"{where} requested other hosts: {foreign}"
        assert not errors, f"{where} logged JavaScript or console errors: {errors}"
        assert not failed, f"{where}: its own requests failed: {failed}"

    def _axe(self, name: str, width: int) -> None:
        """Every axe rule on the desktop pass; on the phone pass (dark) the rules a narrow, dark page can break
        anew: contrast, scrolling regions, tap targets, zoom. A full run takes ~0.6 s, these ~0.15 s."""
        if not self.page.evaluate("() => typeof window.axe !== 'undefined'"):
            self.page.evaluate(AXE_SOURCE)
        only = "" if width == DESKTOP["width"] else f", runOnly: {{type: 'rule', values: {json.dumps(PHONE_RULES)}}}"
        result = self.page.evaluate(f"() => axe.run(document, {{resultTypes: ['violations']{only}}})")
        bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert not bad, f"{name} at {width} px: accessibility violations: " + json.dumps(
            [{"id": v["id"], "help": v["help"], "nodes": [n["html"][:200] for n in v["nodes"][:5]]} for v in bad],
            indent=1,
            ensure_ascii=False,
        )

    def login(self, account: Account, *, password: str = PASSWORD, name: str = "dashboard") -> None:
        """Log in through the form and check the page it leads to."""
        self.visit("/login", "login")
        self.page.fill("#f-username", account.username)
        self.page.fill("#f-password", password)
        self.submit("button[type=submit]", name)

    def sign_in(self, account: Account, *, password: str = PASSWORD) -> None:
        """Log in with the form's own requests, without showing the pages: for tests about something else."""
        self.context.request.post("/login", form=self.login_form(account.username, password), max_redirects=0)
        assert any(c["name"] == "edm_session" for c in self.context.cookies()), "the login worked"

    def login_form(self, username: str, password: str) -> dict[str, str | float | bool]:
        """The login form's fields, with a fresh double-submit token (its cookie set in this context)."""
        page = self.context.request.get("/login").text()
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token is not None
        return {"csrf_token": token.group(1), "username": username, "password": password}

    def csrf_token(self) -> str:
        """The session's CSRF token as the page carries it (hidden fields, and htmx's header on <body>)."""
        value = self.page.get_attribute("input[name=csrf_token]", "value")
        assert value
        return value


AXE_SOURCE = AXE.read_text(encoding="utf-8") if AXE.exists() else ""


def _missing(html: str) -> list[str]:
    return re.findall(r"⟦MISSING: [^⟧]*⟧", html)[:5]


@pytest.fixture(scope="session")
def audit_marks(tmp_path_factory: pytest.TempPathFactory, testrun_uid: str) -> Path:
    """A folder every test process of this run shares (xdist gives each worker a base folder under one parent)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"audited-{testrun_uid}"


@pytest.fixture
def console(browser: Browser, server: Server, audit_marks: Path, request: pytest.FixtureRequest) -> Iterator[Console]:
    with open_console(browser, server, audit_marks, request.node.name) as opened:
        yield opened


@contextmanager
def open_console(browser: Browser, server: Server, audit_marks: Path, test_name: str) -> Iterator[Console]:
    """A fresh browser context and page on `server`, with every check of `Console`: the `console` fixture's, or a
    second one for a test that shows two people at once (each context has its own cookies, so its own session)."""
    context = browser.new_context(base_url=server.url, viewport=DESKTOP, extra_http_headers={"Accept-Language": "en"})
    page = context.new_page()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    console = Console(page, context, server, name, audit_marks)
    origin = urlsplit(server.url).netloc

    def foreign(route: Any) -> None:
        console.foreign.append(route.request.url)
        route.abort()

    context.route(lambda url: urlsplit(url).netloc != origin and not url.startswith("data:"), foreign)

    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        # The document's own status (a 401 login page, a 403 page) is logged by Chromium; check() asserts it.
        if "Failed to load resource" in message.text and message.location.get("url") == page.url:
            return
        console.errors.append(f"{message.text} ({message.location.get('url')})")

    def on_response(response: Response) -> None:
        request_ = response.request
        if request_.is_navigation_request() and request_.frame == page.main_frame:
            console.document_status = response.status
        elif urlsplit(response.url).netloc == origin and response.status >= 400:
            console.failed.append(f"{response.status} {response.url}")

    def on_failed(request_: Request) -> None:
        if urlsplit(request_.url).netloc != origin:
            return  # aborted foreign requests are recorded by the route
        if request_.failure == "net::ERR_ABORTED" and (
            request_.resource_type in ("fetch", "xhr", "document")
            or urlsplit(request_.url).path == "/static/favicon.svg"
            or (request_.resource_type == "image" and request_.frame != page.main_frame)
        ):
            # a poll, a page load or the tab's icon cut short by the next navigation (a page reloading itself), or an
            # image of the template preview's frame whose document the editor replaced while it loaded
            return
        console.failed.append(f"{request_.failure} {request_.url}")

    def on_dialog(dialog: Any) -> None:
        console.dialogs.append(dialog.message)
        dialog.accept()

    page.on("console", on_console)
    page.on("pageerror", lambda error: console.errors.append(f"page error: {error}"))
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    page.on("dialog", on_dialog)
    try:
        yield console
    finally:
        context.close()
