"""The template editor's preview picker over the ASGI app: it searches the user's contacts (a user with a million
contacts must be able to preview for any of them, not only the first 100), keeps the chosen contact in the list
whatever the search, and never offers another user's contacts."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.console import content_templates
from edm.db.session import unit_of_work
from tests import factories
from tests.helpers import console_log_in, make_account


def _options(page: str) -> list[str]:
    """The addresses the picker offers, in order."""
    select = re.search(r'<select id="f-contact_id"[^>]*>(.*?)</select>', page, re.DOTALL)
    found = select.group(1) if select else page
    return re.findall(r'<option value="\d+"[^>]*>([^<(]+?)(?: \(|</option>)', found)


async def test_the_preview_picker_searches_the_contacts_and_keeps_the_chosen_one(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = await make_account(sessionmaker, "ann")
    bob = await make_account(sessionmaker, "bob")
    async with unit_of_work(sessionmaker) as session:
        mine = await factories.contacts(session, ann.id, 6, prefix="ann-")
        await factories.contacts(session, bob.id, 3, prefix="ann-bob-")
        template = await factories.template(session, ann.id, "Letter")
    monkeypatch.setattr(content_templates, "PICKER_CONTACTS", 2)  # a small first page
    await console_log_in(client, ann)
    page = (await client.get(f"/templates/{template}")).text
    assert len(_options(page)) == 2, "the first PICKER_CONTACTS contacts"
    assert 'id="f-contact_q"' in page and 'hx-get="/templates/contact-options"' in page

    found = await client.get("/templates/contact-options", params={"contact_q": "ann-4@"})
    assert found.status_code == 200 and _options(found.text) == ["ann-4@example.net"]
    none = await client.get("/templates/contact-options", params={"contact_q": "nobody-here"})
    assert _options(none.text) == [] and "No contact matches." in none.text
    others = await client.get("/templates/contact-options", params={"contact_q": "bob"})
    assert _options(others.text) == [], "another user's contacts are never offered"

    chosen = mine[5]
    kept = await client.get("/templates/contact-options", params={"contact_q": "ann-1@", "contact_id": chosen})
    assert _options(kept.text)[0] == "ann-5@example.net" and f'value="{chosen}" selected' in kept.text
    # Without JavaScript (or read-only): the page itself filters by what was typed, the chosen contact first.
    page = (await client.get(f"/templates/{template}", params={"contact_q": "ann-2@", "contact_id": chosen})).text
    assert _options(page) == ["ann-5@example.net", "ann-2@example.net"]
