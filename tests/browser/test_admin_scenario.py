"""The admin's acceptance test: an admin and a user, each in a browser context of their own, against a running `edm
serve` and `edm worker` with two SMTP sinks.

The admin creates the user and gives credit → creates SMTP service A (one send every 3 s, a daily quota) against sink
A and test-sends through it (the classified answer shows) → creates service B, a backup, against sink B → maps both
to the user. The user schedules a campaign of 12 in the wizard. The admin watches the queue page list the user's
work and A's usage move, freezes A mid-campaign, sees the campaign finish through B, the freeze in A's status log and
in the overview's alerts, unfreezes A, and finds every step in the audit log. With EDM_DOCS_SCREENSHOTS=1 it also saves
each admin page into docs/console/ (DOCS_PAGES), for docs/console.md.

Why a deployment of its own (`running_server`, not the session's `server`): backup services are chosen across the
deployment (docs/sending.md#how-a-service-is-chosen: a backup takes work only while *no* primary service is
available). On the session's shared database, the primary services other tests left behind stay available, so B
never took a turn after the freeze, and the campaign stopped at what A had sent before it (a first version of this
test, on the shared database, stopped at 2 of 12 in the full browser run and passed alone). Every wait below waits
for a state (a count, a status, a log row), never for time; A's pace (a send every 3 s) only keeps the campaign
running while the admin opens A's page and freezes it, which takes well under the 33 s A would need for all 12."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from edm.models.users import Role
from tests import factories
from tests.browser.conftest import (
    DESKTOP,
    ROOT,
    Console,
    Server,
    open_console,
    running_server,
    start_worker,
    stop_process,
)
from tests.helpers import PASSWORD, Account

DOCS = ROOT / "docs" / "console"
# With EDM_DOCS_SCREENSHOTS=1 the admin's pages are saved into docs/console/ at 1280×800, for docs/console.md: the
# name of the check → the file's name (a page checked twice keeps its last state).
DOCS_PAGES = {
    "admin-overview": "admin-overview",
    "scenario-overview-frozen": "admin-overview-alert",
    "admin-users": "admin-users",
    "admin-user": "admin-user",
    "admin-services": "admin-services",
    "admin-service-new": "admin-service-new",
    "scenario-test-send": "admin-service-test-send",
    "admin-service": "admin-service",
    "scenario-service-frozen": "admin-service-frozen",
    "admin-mappings": "admin-mappings",
    "scenario-queue": "admin-queue",
    "admin-audit": "admin-audit",
    "admin-credit": "admin-credit",
    "admin-events": "admin-events",
    "admin-suppressions": "admin-suppressions",
    "admin-settings": "admin-settings",
}
RECIPIENTS = 12
WAIT_MS = 20_000  # the longest any one state may take to show
# Pages in a state other tests show too go by those tests' names (the harness audits a name once per run); the
# states only this test reaches are named "scenario-…".


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path / "deployment") as server:
        yield server


@pytest.fixture
def deployment_worker(deployment: Server, tmp_path: Path) -> Iterator[Callable[[], None]]:
    """Starts an `edm worker` on the deployment when the test calls it; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield lambda: started.append(start_worker(deployment, tmp_path / "worker.log"))
    finally:
        for process in started:
            stop_process(process)


@pytest.fixture
def sinks() -> Iterator[tuple[SmtpSink, SmtpSink]]:
    a, b = SmtpSink().start(), SmtpSink().start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_an_admin_sets_up_sending_freezes_a_service_mid_campaign_and_finds_it_all_audited(
    browser: Browser,
    deployment: Server,
    audit_marks: Path,
    sinks: tuple[SmtpSink, SmtpSink],
    deployment_worker: Callable[[], None],
    request: pytest.FixtureRequest,
) -> None:
    sink_a, sink_b = sinks
    root = deployment.account("root", role=Role.ADMIN)
    deployment_worker()  # started first: it is up (a few seconds on a busy machine) long before there is work
    with (
        open_console(browser, deployment, audit_marks, request.node.name) as admin,
        open_console(browser, deployment, audit_marks, request.node.name + "-user") as user,
    ):
        admin.sign_in(root)
        docs = os.environ.get("EDM_DOCS_SCREENSHOTS") == "1"
        if docs:
            admin.after_check = lambda name: _save_for_docs(admin, name)
        username = f"buyer-{root.id}"
        user_id = _create_user_with_credit(admin, username)
        a = _create_smtp_service(admin, "relay-a", sink_a, interval="3", quota="500")
        _test_send(admin, a, sink_a)
        b = _create_smtp_service(admin, "relay-b", sink_b, interval="0", quota="500", backup=True)
        _map(admin, user_id, [a, b])

        _give_the_user_something_to_send(deployment, user_id)
        user.sign_in(Account(user_id, username, ""))
        task_id = _schedule_campaign(user)

        # The queue lists the user's waiting work, and A's usage moves (the test send counted 1; A sends every 3 s, so
        # it would need 33 s for all 12: the freeze below comes long before).
        admin.visit("/admin/queue", "scenario-queue")
        expect(admin.page.locator("#users-title + .table-wrap, #users-title ~ .table-wrap")).to_contain_text(
            username, timeout=WAIT_MS
        )
        admin.visit(f"/admin/services/{a}", "admin-service")
        _wait_for_usage(admin, at_least=2)

        # Freeze A while the campaign runs: A sends nothing new (at most the one send it had started), B the rest.
        admin.page.fill("#f-reason", "scenario: relay maintenance")
        admin.submit(f"form[action='/admin/services/{a}/freeze'] button", "scenario-service-frozen")
        assert "The service is frozen" in admin.page.inner_text("main")
        sent_by_a_at_freeze = len(sink_a.messages) - 1  # less the test send
        assert sent_by_a_at_freeze < RECIPIENTS, "the campaign was still running when A froze"
        log = admin.page.locator("section[aria-labelledby=log-title] tbody tr").first
        expect(log).to_contain_text("Frozen")
        expect(log).to_contain_text("scenario: relay maintenance")
        admin.visit("/admin", "scenario-overview-frozen")
        assert "The service relay-a is frozen." in admin.page.inner_text("section[aria-labelledby=alerts-title]")

        user.visit(f"/tasks/{task_id}", "scenario-task")
        expect(user.page.locator("#count-sent")).to_have_text(str(RECIPIENTS), timeout=WAIT_MS)
        expect(user.page.locator("#live [data-role=status]")).to_have_text("Completed", timeout=WAIT_MS)
        campaign = [m for m in sink_a.messages[1:] + sink_b.messages]
        assert len(campaign) == RECIPIENTS and len({m.subtask_id for m in campaign}) == RECIPIENTS, "none twice"
        assert len(sink_a.messages) - 1 <= sent_by_a_at_freeze + 1, "A started nothing after the freeze"
        assert len(sink_b.messages) >= RECIPIENTS - sent_by_a_at_freeze - 1, "B sent the rest"
        admin.visit(f"/admin/services/{b}", "admin-service")
        assert admin.page.inner_text("[data-field=used_today]") == str(len(sink_b.messages))

        # Unfreeze: the status log says so and the alert is gone.
        admin.visit(f"/admin/services/{a}", "scenario-service-frozen")
        admin.submit(f"form[action='/admin/services/{a}/unfreeze'] button", "admin-service")
        expect(admin.page.locator("section[aria-labelledby=log-title] tbody tr").first).to_contain_text("Unfrozen")
        admin.visit("/admin", "admin-overview")
        assert "relay-a" not in admin.page.inner_text("section[aria-labelledby=alerts-title]")

        # Every step, in the audit log: the admin's own entries, newest first.
        admin.visit(f"/admin/audit?actor={root.username}", "admin-audit")
        actions = admin.page.locator("table.admin-audit tbody td:nth-child(3)").all_inner_texts()
        assert actions[:2] == ["service.unfreeze", "service.freeze"], actions
        for action in ("user.create", "credit.adjust", "service.create", "service.test_send", "mapping."):
            assert any(a.startswith(action) for a in actions), f"{action} in {actions}"
        assert actions.count("service.create") == 2

        if docs:  # the admin pages this story does not need, for the docs only
            for path, name in (
                ("/admin/services", "admin-services"),
                ("/admin/credit", "admin-credit"),
                ("/admin/events?match_status=", "admin-events"),
                ("/admin/suppressions", "admin-suppressions"),
                ("/admin/settings", "admin-settings"),
            ):
                admin.visit(path, name)


def _save_for_docs(console: Console, name: str) -> None:
    if name in DOCS_PAGES:
        DOCS.mkdir(parents=True, exist_ok=True)
        console.page.set_viewport_size(DESKTOP)
        console.page.screenshot(path=str(DOCS / f"{DOCS_PAGES[name]}.png"))
    if name == "admin-service":  # below the fold: the health history's charts, on their own
        console.page.locator("#history").screenshot(path=str(DOCS / "admin-service-history.png"))


def _create_user_with_credit(admin: Console, username: str) -> int:
    page = admin.page
    admin.visit("/admin/users", "admin-users")
    page.fill("#f-username", username)
    page.fill("#f-email", f"{username}@example.com")
    page.fill("#f-password", PASSWORD)
    page.uncheck("#f-must_change")  # the user signs in with it below
    admin.submit("#new-user button.primary", "admin-user")
    user_id = int(re.sub(r"\D", "", page.url.split("?")[0].rsplit("/", 1)[1]))
    page.select_option("#f-operation", "add")
    page.fill("#f-amount", "100")
    page.fill("#f-reason", "first campaign")
    admin.submit("#adjust-credit button.primary", "admin-user")
    assert page.inner_text(".admin-balance strong") == "100"
    return user_id


def _create_smtp_service(
    admin: Console, name: str, sink: SmtpSink, *, interval: str, quota: str, backup: bool = False
) -> int:
    page = admin.page
    admin.visit("/admin/services/new?provider=smtp", "admin-service-new")
    page.fill("#f-name", name)
    page.fill("#f-domain", "mail.example.com")
    page.fill("#f-daily_quota", quota)
    page.fill("#f-sending_interval_seconds", interval)
    page.fill("#f-max_concurrency", "1")
    page.fill("#f-opt_host", sink.host)
    page.fill("#f-opt_port", str(sink.port))
    page.select_option("#f-opt_security", "none")
    if backup:
        page.check("input[name=backup_only]")
    admin.submit("form.service-form button.primary", "admin-service")
    assert "The sending service was created." in page.inner_text("main")
    return int(page.url.split("?")[0].rsplit("/", 1)[1])


def _test_send(admin: Console, service_id: int, sink: SmtpSink) -> None:
    page = admin.page
    page.fill("#f-to", "postmaster@example.org")
    admin.submit(f"form[action='/admin/services/{service_id}/test-send'] button", "scenario-test-send")
    assert page.inner_text("#test-result strong") == "Accepted"
    assert sink.wait_for(1, timeout=10)
    assert sink.messages[0].rcpt_tos == ("postmaster@example.org",)


def _map(admin: Console, user_id: int, service_ids: list[int]) -> None:
    page = admin.page
    admin.visit("/admin/mappings", "admin-mappings")
    for service_id in service_ids:
        page.check(f"input[name=m][value='{user_id}:{service_id}']")
    admin.submit("#matrix button.primary", "admin-mappings")
    for service_id in service_ids:
        assert page.is_checked(f"input[name=m][value='{user_id}:{service_id}']")


def _give_the_user_something_to_send(server: Server, user_id: int) -> None:
    """The user's contacts, sender and template (their pages have tests of their own: test_new_user_flow.py)."""

    async def make(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        async with unit_of_work(sessionmaker) as session:
            await factories.contacts(session, user_id, RECIPIENTS, prefix="reader-")
            await factories.sender(session, user_id, local="news")
            await factories.template(session, user_id, "Spring news", subject="Spring")

    server.database(make)


def _schedule_campaign(user: Console) -> int:
    page = user.page
    user.visit("/tasks/new", "wizard-new")
    page.fill("#f-name", "Spring")
    page.select_option("#f-sender_id", index=1)  # the only sender, after "Choose a sender"
    page.select_option("#f-template_id_1", label="Spring news")
    page.check("input[name=rule_type][value=all_contacts]")
    expect(page.locator("#estimate")).to_contain_text(f"{RECIPIENTS} contacts will receive it")
    expect(page.locator("#schedule-button")).to_be_enabled()
    with page.expect_navigation(url=re.compile(r"/tasks/\d+\?notice=scheduled$")):
        page.click("#schedule-button")
    return int(page.url.split("?")[0].rsplit("/", 1)[1])


def _wait_for_usage(admin: Console, *, at_least: int) -> None:
    """The service page's usage, refreshed by its live poll, reaches `at_least`."""
    admin.page.wait_for_function(
        "n => parseInt(document.querySelector('[data-field=used_today]').textContent.replace(/\\D/g, ''), 10) >= n",
        arg=at_least,
        timeout=WAIT_MS,
    )
