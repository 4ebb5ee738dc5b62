"""What keeps the console's contact pages fast at 1,000,000 contacts without changing what they show
(bench/RESULTS.md (k)): the template editor's attribute keys kept as contacts are written, tag-filtered pages read
from the tag's memberships (every member once, in id order, whatever the creation times), and list counts capped
("more than N") where the bulk confirmation still counts exactly."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.console import contacts as console_contacts
from edm.console import tags as console_tags
from edm.contacts import service
from edm.contacts.fields import clean_contact_values
from edm.contacts.filters import ContactFilter, Sort, decode_sort_cursor
from edm.contacts.tags import tag_tree
from edm.contacts.upsert import bulk_insert_contacts
from edm.db.session import unit_of_work
from edm.migrations.migrate import upgrade
from edm.models.contacts import Contact
from edm.paging import Page
from tests.helpers import console_log_in, create_contact, create_tag, make_account

API = "/api/v1"


async def _offered(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    r = await client.get(f"{API}/template-variables", headers=headers)
    assert r.status_code == 200, r.text
    return [a["key"] for a in r.json()["custom_attributes"]]


async def test_attribute_keys_are_offered_after_an_import_an_api_create_and_an_api_update(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    assert await _offered(client, alice.headers) == []
    async with unit_of_work(sessionmaker) as session:
        rows = [
            clean_contact_values({"email": "a@example.com", "custom_attributes": {"city": "Oslo"}}),
            clean_contact_values({"email": "b@example.com", "custom_attributes": {"plan": "gold", "city": "Rome"}}),
        ]
        await bulk_insert_contacts(session, user_id=alice.id, rows=rows)
    assert await _offered(client, alice.headers) == ["city", "plan"]
    made = await create_contact(client, alice, "c@example.com", custom_attributes={"age": 3})
    assert await _offered(client, alice.headers) == ["age", "city", "plan"]
    r = await client.patch(
        f"{API}/contacts/{made['id']}", json={"custom_attributes": {"zone": "x"}}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    # "age" is on no contact any more: it stays a suggestion (documented, harmless).
    assert await _offered(client, alice.headers) == ["age", "city", "plan", "zone"]
    async with unit_of_work(sessionmaker) as session:  # an update_existing import merges new keys
        rows = [clean_contact_values({"email": "a@example.com", "custom_attributes": {"vip": True}})]
        await bulk_insert_contacts(session, user_id=alice.id, rows=rows, mode="update_existing")
    assert "vip" in await _offered(client, alice.headers)
    assert await _offered(client, bob.headers) == [], "keys are per user"


async def test_tag_pages_list_every_member_once_in_id_order_whatever_the_creation_times(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    parent = await create_tag(client, alice, "Parent")
    child = await create_tag(client, alice, "Child", parent_id=parent)
    other = await create_tag(client, alice, "Other")
    ids: dict[int, list[int]] = {}
    for i in range(12):
        tag_ids = [parent] if i % 3 == 0 else [child] if i % 3 == 1 else [other]
        if i in (3, 9):
            tag_ids = [parent, child]  # in both: listed once
        made = await create_contact(client, alice, f"m{i}@example.com", tag_ids=tag_ids)
        ids[made["id"]] = tag_ids
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    async with unit_of_work(sessionmaker) as session:  # creation times out of id order
        for n, contact_id in enumerate(ids):
            created = base + dt.timedelta(hours=(n * 7) % 12)
            await session.execute(update(Contact).where(Contact.id == contact_id).values(created_at=created))
    members = sorted((c for c, t in ids.items() if parent in t or child in t), reverse=True)
    child_only = sorted((c for c, t in ids.items() if child in t), reverse=True)

    async def walk(tag_id: int, *, explicit_only: bool = False, descending: bool = True) -> list[int]:
        seen: list[int] = []
        cursor = None
        sort = Sort("id", descending)
        filters = ContactFilter(tag_ids=(tag_id,), explicit_only=explicit_only)
        async with sessionmaker() as session:
            while True:
                page = await service.contact_page(
                    session, user_id=alice.id, page=Page(2, None), filters=filters, sort=sort, cursor=cursor
                )
                seen += [c.id for c in page.items]
                if page.next_cursor is None:
                    return seen
                cursor = decode_sort_cursor(page.next_cursor, sort)

    assert await walk(parent) == members
    assert await walk(parent, descending=False) == sorted(members)
    assert await walk(child) == child_only
    assert await walk(parent, explicit_only=True) == sorted((c for c, t in ids.items() if parent in t), reverse=True)

    # The API's default (id ascending) pages the same way.
    seen, url = [], f"{API}/contacts?tag_id={parent}&limit=2"
    while url:
        body = (await client.get(url, headers=alice.headers)).json()
        seen += [c["id"] for c in body["items"]]
        url = f"{API}/contacts?tag_id={parent}&limit=2&cursor={body['next_cursor']}" if body["next_cursor"] else ""
    assert seen == sorted(members)

    # The console's newest-first tag page: every member once, newest (highest id) first, across its pages.
    await console_log_in(client, alice, csrf_from="/contacts")
    console_contacts.PAGE_SIZE, size = 3, console_contacts.PAGE_SIZE
    try:
        listed: list[int] = []
        link: str | None = f"/contacts?tag={parent}&sort=-created"
        while link:
            text = (await client.get(link)).text
            listed += [int(i) for i in re.findall(r'<a href="/contacts/(\d+)">', text)]
            found = re.search(r'<a href="([^"]+)" rel="next">', text)
            link = found.group(1).replace("&amp;", "&") if found else None
    finally:
        console_contacts.PAGE_SIZE = size
    assert listed == members


@pytest.mark.parametrize("language", ["en", "zh-CN"])
async def test_list_counts_stop_at_the_cap_and_say_more_than_it(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
    language: str,
) -> None:
    alice = await make_account(sessionmaker, "alice")
    big = await create_tag(client, alice, "Big")
    small = await create_tag(client, alice, "Small")
    for i in range(5):
        await create_contact(client, alice, f"c{i}@example.com", tag_ids=[big] if i else [big, small])
    async with sessionmaker() as session:
        assert await service.count_contacts(session, user_id=alice.id, cap=2) == 3
        assert await service.count_contacts(session, user_id=alice.id, cap=5) == 5
        assert await service.count_contacts(session, user_id=alice.id) == 5
        tree = {t.name: t for t in await tag_tree(session, user_id=alice.id, count_cap=2)}
        assert (tree["Big"].member_count, tree["Big"].total_member_count, tree["Small"].member_count) == (3, 3, 1)
        exact = {t.name: t for t in await tag_tree(session, user_id=alice.id)}
        assert exact["Big"].member_count == 5

    monkeypatch.setattr(console_contacts, "COUNT_CAP", 2)
    monkeypatch.setattr(console_tags, "COUNT_CAP", 2)
    await console_log_in(client, alice, csrf_from="/contacts")
    headers = {"Accept-Language": language}
    listing = (await client.get("/contacts", headers=headers)).text
    filtered = (await client.get(f"/contacts?tag={big}", headers=headers)).text
    few = (await client.get(f"/contacts?tag={small}", headers=headers)).text
    tags_page = (await client.get("/tags", headers=headers)).text
    if language == "en":
        assert "All contacts: more than 2" in listing
        assert "All matching contacts (more than 2)" in listing
        assert "More than 2 contacts" in filtered
        assert "1 contacts" in few and "More than" not in few
        assert "<td>more than 2</td>" in tags_page and "<td>1</td>" in tags_page
    else:
        assert "全部联系人：超过 2" in listing
        assert "超过 2 个联系人" in filtered
        assert "<td>超过 2</td>" in tags_page

    # The bulk confirmation counts exactly: it is the count the action is guarded with.
    csrf = await console_log_in(client, alice, csrf_from="/contacts")
    confirm = await client.post(
        "/contacts/bulk", data={"csrf_token": csrf, "scope": "all", "action": "set_status", "new_status": "inactive"}
    )
    assert confirm.status_code == 200 and 'name="expected_count" value="5"' in confirm.text


def test_the_migration_fills_the_attribute_keys_from_the_stored_contacts(tmp_path: Path) -> None:
    """0008 backfills `contact_attribute_keys` from the contacts already stored (here on SQLite; the PostgreSQL
    spelling, jsonb_object_keys, was run on a 200,000-contact database for the bench figures)."""
    url = f"sqlite:///{tmp_path / 'backfill.db'}"
    upgrade(url, "0007")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, email, role, is_active, timezone, credit_balance, "
                "must_change_password, created_at, updated_at) "
                "VALUES (1, 'a', 'a@example.com', 'user', 1, 'UTC', 0, 0, '2026-01-01', '2026-01-01')"
            )
        )
        for n, attributes in enumerate(['{"city": "Oslo"}', '{"plan": 1, "city": "Rome"}', "{}"]):
            connection.execute(
                text(
                    "INSERT INTO contacts (user_id, email, email_normalized, email_domain, status, "
                    "custom_attributes, soft_bounce_streak, created_at, updated_at) "
                    "VALUES (1, :e, :e, 'example.com', 'active', :a, 0, '2026-01-01', '2026-01-01')"
                ),
                {"e": f"c{n}@example.com", "a": attributes},
            )
    upgrade(url)
    with engine.connect() as connection:
        keys = connection.execute(text("SELECT user_id, key FROM contact_attribute_keys ORDER BY key")).all()
    engine.dispose()
    assert [tuple(k) for k in keys] == [(1, "city"), (1, "plan")]
