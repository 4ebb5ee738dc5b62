"""The unsubscribe pages people reach from a mail: the console's look, in the browser's language."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.db.session import unit_of_work
from edm.models.tasks import SubTask, Task
from edm.security.tokens import sign_token
from edm.tasks import generation
from tests import factories
from tests.browser.conftest import Console


def _unsubscribe_token(console: Console) -> str:
    jane = console.server.account("jane", credit=10)

    async def generated(sessionmaker: async_sessionmaker[AsyncSession]) -> str:
        async with unit_of_work(sessionmaker) as session:
            sender = await factories.sender(session, jane.id, local=f"news-{jane.username}")
            template = await factories.template(session, jane.id)
            await factories.contacts(session, jane.id, 1, prefix=f"{jane.username}-")
            task_id = await factories.task(
                session, jane.id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
            )
            await generation.generate(session, task_id, now=clock.utc_now())
        async with sessionmaker() as session:
            public_id = await session.scalar(
                select(SubTask.public_id).join(Task, Task.id == SubTask.task_id).where(Task.user_id == jane.id)
            )
        token: str = sign_token("unsubscribe", public_id, key=console.server.settings.signing_key)
        return token

    return console.server.database(generated)


def test_the_unsubscribe_page_in_english_and_chinese(console: Console) -> None:
    token = _unsubscribe_token(console)
    page = console.page
    console.visit(f"/u/{token}", "unsubscribe-en")
    assert page.locator("h1").inner_text() == "Unsubscribe"
    assert page.inner_text("main .panel p").startswith("Stop receiving these emails at ")

    console.context.set_extra_http_headers({"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    console.visit(f"/u/{token}", "unsubscribe-zh")
    assert page.locator("h1").inner_text() == "退订"
    assert page.locator("html").get_attribute("lang") == "zh-Hans"
    console.submit("button:has-text('退订')", "unsubscribed-zh")
    assert page.locator("h1").inner_text() == "已退订"
    assert "将不再收到这类邮件" in page.inner_text("main")

    console.visit("/u/not-a-token", "link-not-valid-zh", status=404)
    assert page.inner_text("main .panel") == "此退订链接无效。"
