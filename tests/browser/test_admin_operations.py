"""The admin overview, service access and queue pages in a real browser: each page opens clean (axe at both widths,
no script error, nothing from another host), and the service access batch form refuses an unknown user and a
missing service beside the fields, what was typed kept."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from tests import factories
from tests.browser.conftest import Console


def test_the_admin_operations_pages_open_and_the_batch_form_refuses_beside_the_fields(console: Console) -> None:
    admin = console.server.account("chief", role="admin")

    async def add_service(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        async with unit_of_work(sessionmaker) as session:
            await factories.service(session, console.server.settings, f"svc-{admin.id}", map_to=[admin.id])

    console.server.database(add_service)
    page = console.page
    console.sign_in(admin)
    console.visit("/admin", "admin-overview")
    assert page.locator("#chart-credit-title").count() == 1
    console.visit("/admin/mappings", "admin-mappings")
    page.fill("#f-users", "no-such-user")
    console.submit("#batch button[type=submit]", "admin-mappings-refused", status=422)
    assert page.inner_text("#f-users-error") == "No user is called “no-such-user”."
    assert page.inner_text("#f-service_ids-error") == "Choose at least one service."
    assert page.input_value("#f-users") == "no-such-user"
    console.visit("/admin/queue", "admin-queue")
    assert page.locator("#queue-live[data-poll]").count() == 1
    # The live view polls the API's JSON; with nothing changed, the page stays (a reload would drop the mark).
    page.evaluate("window.edmMark = 1")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/admin/queue"), timeout=8000) as polled:
        pass
    assert polled.value.status == 200
    page.wait_for_timeout(200)
    assert page.evaluate("window.edmMark") == 1
