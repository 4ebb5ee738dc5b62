"""The campaign pages in a real browser: a weighted A/B campaign made in the wizard (with its inline errors and the
live estimate), scheduled, followed to `completed` on its page while the counts move, the list, and one recipient.
tests/integration/test_console_tasks.py checks the same pages' forms and refusals without a browser."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

from playwright.sync_api import expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from tests import factories
from tests.browser.conftest import Console


def test_a_weighted_ab_campaign_is_made_in_the_wizard_and_followed_until_it_completes(
    console: Console, smtp_sink: SmtpSink, worker: Callable[[], subprocess.Popen[bytes]]
) -> None:
    kai = console.server.account("kai", credit=100)
    settings = console.server.settings

    async def content(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
        async with unit_of_work(sessionmaker) as session:
            vip = await factories.tag(session, kai.id, "VIP")
            await factories.contacts(session, kai.id, 3, prefix=f"{kai.username}-", tag_id=vip)
            await factories.contacts(session, kai.id, 2, prefix=f"{kai.username}-other-")
            options = {"host": smtp_sink.host, "port": smtp_sink.port, "security": "none"}
            await factories.service(
                session, settings, f"sink-{kai.username}", provider="smtp", options=options, map_to=[kai.id]
            )
            return {
                "sender": await factories.sender(session, kai.id, local=f"news-{kai.username}"),
                "a": await factories.template(session, kai.id, "Spring A"),
                "b": await factories.template(session, kai.id, "Spring B"),
                "vip": vip,
            }

    ids = console.server.database(content)
    console.sign_in(kai)
    page = console.page
    console.visit("/tasks", "tasks-empty")
    assert "No campaigns yet" in page.inner_text("main")
    page.click("main .empty a")  # "Create your first campaign"
    page.wait_for_url("**/tasks/new")
    console.check("wizard-new")
    assert page.is_disabled("#schedule-button")
    assert "Complete “Basics” to schedule." in page.inner_text("#review-missing")
    expect(page.locator("#estimate")).to_contain_text("5 contacts will receive it")  # all contacts, by default

    # Bad input: the errors beside their fields, what was typed kept.
    page.select_option("#f-template_id_1", str(ids["a"]))
    page.fill("#f-weight_1", "0")
    console.submit("button[value=save]", "wizard-errors", status=422)
    assert page.inner_text("#f-name-error") == "This field is required."
    assert page.inner_text("#f-weight_1-error") == "This number is too small."
    assert page.input_value("#f-weight_1") == "0" and page.input_value("#f-template_id_1") == str(ids["a"])

    page.fill("#f-name", "Spring sale")
    page.select_option("#f-sender_id", str(ids["sender"]))
    page.fill("#f-weight_1", "3")
    page.select_option("#f-template_id_2", str(ids["b"]))
    page.fill("#f-weight_2", "1")
    page.check("input[name=rule_type][value=tag_based]")
    expect(page.locator("#estimate")).to_contain_text("Choose at least one tag")
    assert page.is_disabled("#schedule-button"), "no tag chosen: the recipients step is not done"
    page.check(f"input[name=include_tag_ids][value='{ids['vip']}']")
    expect(page.locator("#estimate")).to_contain_text("3 contacts will receive it")
    assert "Credit needed: 3 of your 100." in page.inner_text("#estimate")
    expect(page.locator("#schedule-button")).to_be_enabled()
    console.submit("#schedule-button", "task-scheduled")
    assert re.search(r"/tasks/\d+\?notice=scheduled$", page.url)
    assert "The campaign was scheduled." in page.inner_text("main")
    assert page.locator("#live").get_attribute("data-poll")

    worker()  # the counts move and the page follows the status until the campaign completes
    expect(page.locator("#count-sent")).to_have_text("3", timeout=30_000)
    expect(page.locator("#live [data-role=status]")).to_have_text("Completed", timeout=30_000)
    console.check("task-completed")
    assert smtp_sink.wait_for(3)
    templates = page.inner_text("section[aria-labelledby=templates-title]")
    assert "Spring A" in templates and "Spring B" in templates
    assert page.locator(".chart-canvas canvas").count() == 1, "uPlot drew the timeline"

    console.visit("/tasks", "tasks-list")
    assert "3 sent of 3" in page.inner_text("#tasks-title + .table-wrap")
    page.click("main table a")
    page.click("a.button:has-text('Recipients')")
    page.wait_for_url("**/recipients")
    console.check("task-recipients")
    assert "3 recipients" in page.inner_text("#recipients-title")
    page.click("main table tbody a >> nth=0")
    page.wait_for_url(re.compile(r"/recipients/\d+$"))
    console.check("task-recipient")
    assert "Attempt 1: Accepted" in page.inner_text("#recipient-history")
