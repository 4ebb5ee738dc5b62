"""The suppressions page in a real browser: an entry is added and listed, an address is checked against it, and the
entry is removed with a reason on its confirmation page; then the notifications page, reached from the top bar's
unread count, marks a notification read."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.system import Notification
from tests.browser.conftest import Console


def test_an_entry_is_added_checked_and_removed_with_a_reason_and_a_notification_read(console: Console) -> None:
    lena = console.server.account("lena")

    async def notify(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        async with unit_of_work(sessionmaker) as session:
            session.add(Notification(user_id=lena.id, kind="import", title="Import finished", link="/contacts"))

    console.server.database(notify)
    page = console.page
    console.sign_in(lena)
    console.visit("/suppressions", "suppressions-empty")
    assert "Your list is empty." in page.inner_text("main")

    page.select_option("#f-kind", "domain")
    page.fill("#f-value", "blocked.example")
    page.fill("#f-note", "a competitor")
    console.submit("#add-entry button.primary", "suppression-added")
    assert "The entry was added." in page.inner_text("main")
    row = page.locator("table.suppressions tbody tr", has_text="blocked.example")
    assert row.count() == 1 and "a competitor" in row.inner_text()

    page.fill("#f-check", "Ann@Blocked.example")
    console.submit("#check button", "suppression-checked")
    assert "ann@blocked.example is blocked" in page.inner_text("#check-result")

    console.submit("table.suppressions tbody tr:has-text('blocked.example') a", "suppression-remove")
    page.fill("#f-reason", "no longer a competitor")
    console.submit("main form button.danger", "suppressions-empty")
    assert "The entry was removed." in page.inner_text("main")
    assert page.locator("table.suppressions").count() == 0

    assert page.inner_text(".notif-link .badge").split() == ["1", "unread"]
    console.submit(".notif-link", "notifications")
    assert "Import finished" in page.inner_text("main")
    console.submit(".notif-list button", "notifications")
    assert page.locator(".notif-link .badge").count() == 0 and page.locator(".notif-list .unread").count() == 0
