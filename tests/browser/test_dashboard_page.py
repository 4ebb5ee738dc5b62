"""The dashboard in a real browser: its figures move while a campaign sends (polling, no reload), and its charts."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from playwright.sync_api import expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.devtools.smtp_sink import SmtpSink
from tests import factories
from tests.browser.conftest import Console


def test_the_figures_follow_a_sending_campaign_without_a_reload(
    console: Console, smtp_sink: SmtpSink, worker: Callable[[], subprocess.Popen[bytes]]
) -> None:
    ivy = console.server.account("ivy", credit=100)
    settings = console.server.settings

    async def campaign(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        async with unit_of_work(sessionmaker) as session:
            sender = await factories.sender(session, ivy.id, local=f"news-{ivy.username}")
            template = await factories.template(session, ivy.id)
            await factories.contacts(session, ivy.id, 3, prefix=f"{ivy.username}-")
            options = {"host": smtp_sink.host, "port": smtp_sink.port, "security": "none"}
            await factories.service(
                session, settings, f"sink-{ivy.username}", provider="smtp", options=options, map_to=[ivy.id]
            )
            await factories.task(
                session, ivy.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
            )

    console.server.database(campaign)
    console.sign_in(ivy)
    console.visit("/", "dashboard-scheduled")
    page = console.page
    sent = page.locator('#figures [data-field="daily.totals.sent"]')
    assert page.locator("#figures").get_attribute("data-poll") == "/api/v1/dashboard"
    assert sent.inner_text() == "0"
    assert page.locator(".chart-canvas canvas").count() == 2, "uPlot drew both charts"

    worker()
    expect(sent).to_have_text("3", timeout=30_000)  # polled every 5 s while the page stays open
    assert smtp_sink.wait_for(3)
    assert page.locator('#figures [data-field="credit.balance"]').inner_text() == "97"
    console.check("dashboard-sent")
