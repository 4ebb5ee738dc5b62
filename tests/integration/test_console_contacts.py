"""The contacts pages of the console over the ASGI app (no browser): filters in the URL and their errors, the
create and edit forms' inline errors keeping what was typed, bulk actions confirmed with their count and refused
when the count moved, and what a read-only account sees and may post. tests/browser/test_new_user_flow.py drives the
same pages in Chromium."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.contacts import service, tags
from edm.db.session import unit_of_work
from edm.models.contacts import Contact, ContactTag
from tests.helpers import console_log_in, create_contact, create_tag, field_error, make_account, page_field

HTML = {"Accept": "text/html"}


async def test_the_list_filters_from_the_url_and_says_what_to_do_first(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    await console_log_in(client, alice)
    empty = await client.get("/contacts")
    assert "No contacts yet — import a CSV" in empty.text

    vip = await create_tag(client, alice, "VIP")
    await create_contact(client, alice, "ann@example.com", company="Acme", tag_ids=[vip])
    await create_contact(client, alice, "bob@example.com", status="inactive")
    page = (await client.get("/contacts", params={"q": "acme"})).text
    assert "ann@example.com" in page and "bob@example.com" not in page
    page = (await client.get("/contacts", params={"status": "inactive"})).text
    assert "bob@example.com" in page and "ann@example.com" not in page
    page = (await client.get("/contacts", params={"tag": str(vip), "sort": "email"})).text
    assert "ann@example.com" in page and "bob@example.com" not in page
    assert f"/api/v1/contacts/export?bom=true&amp;tag_id={vip}" in page, "the export takes the same filters"
    assert 'aria-sort="ascending"' in page

    bad = await client.get("/contacts", params={"from": "2026-13-01", "status": "gone"}, headers=HTML)
    assert bad.status_code == 422
    assert (
        field_error(bad.text, "from") == "Enter a valid date."
        and field_error(bad.text, "status") == "Choose one of the options."
    )
    assert 'value="2026-13-01"' in bad.text, "what was typed stays"

    export = await client.get(f"/api/v1/contacts/export?tag_id={vip}")
    assert export.status_code == 200 and "ann@example.com" in export.text and "bob@" not in export.text


async def test_creating_and_editing_show_errors_beside_the_field_and_keep_what_was_typed(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    bad = await client.post("/contacts/new", data={"csrf_token": csrf, "email": "not-an-address", "company": "Acme"})
    assert bad.status_code == 422
    assert field_error(bad.text, "email") == "Enter a valid email address."
    assert 'value="not-an-address"' in bad.text and 'value="Acme"' in bad.text

    made = await client.post("/contacts/new", data={"csrf_token": csrf, "email": "ann@example.com", "status": "active"})
    assert made.status_code == 303
    location = made.headers["location"]
    assert re.fullmatch(r"/contacts/\d+\?notice=created", location)
    again = await client.post("/contacts/new", data={"csrf_token": csrf, "email": "ANN@example.com"})
    assert again.status_code == 409 and field_error(again.text, "email") == "This is already in use."

    path = location.split("?")[0]
    broken = {"csrf_token": csrf, "email": "ann@example.com", "status": "active", "custom_attributes": "{city"}
    answer = await client.post(path, data={**broken, "first_name": "Ann"})
    assert answer.status_code == 422 and "Enter a JSON object of attributes" in field_error(
        answer.text, "custom_attributes"
    )
    assert "{city" in answer.text and 'value="Ann"' in answer.text
    answer = await client.post(path, data={**broken, "custom_attributes": '{"bad key": 1}'})
    assert answer.status_code == 422 and "Enter a JSON object of attributes" in field_error(
        answer.text, "custom_attributes"
    )
    saved = await client.post(path, data={**broken, "first_name": "Ann", "custom_attributes": '{"city": "Paris"}'})
    assert saved.status_code == 303
    page = (await client.get(path)).text
    assert (
        "Ann" in page
        and "Paris" in page
        and "The contact was saved." in (await client.get(saved.headers["location"])).text
    )


async def test_bulk_actions_are_confirmed_with_their_count_and_refused_when_it_moved(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    vip = await create_tag(client, alice, "VIP")
    ids = [(await create_contact(client, alice, f"c{i}@example.com", company="Acme"))["id"] for i in range(3)]
    await create_contact(client, alice, "other@example.com")

    base = {"csrf_token": csrf, "q": "acme", "action": "tag", "tag_id": str(vip)}
    nothing = await client.post("/contacts/bulk", data={**base, "scope": "selected"})
    assert nothing.status_code == 422 and "Select at least one contact" in field_error(nothing.text, "scope")
    no_tag = await client.post("/contacts/bulk", data={**base, "scope": "all", "tag_id": ""})
    assert no_tag.status_code == 422 and field_error(no_tag.text, "tag_id") == "Choose a tag."

    confirm = await client.post("/contacts/bulk", data={**base, "scope": "all"})
    assert confirm.status_code == 200 and "Add the tag “VIP” to these contacts?" in confirm.text
    assert "Contacts affected: 3" in confirm.text and page_field(confirm.text, "expected_count") == "3"

    await create_contact(client, alice, "late@acme.example", company="Acme")  # the filter now matches 4
    moved = await client.post("/contacts/bulk", data={**base, "scope": "all", "expected_count": "3"})
    assert moved.status_code == 409 and "Contacts affected: 4" in moved.text
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ContactTag)) == 0, "nothing was tagged"
    done = await client.post("/contacts/bulk", data={**base, "scope": "all", "expected_count": "4"})
    assert (
        done.status_code == 303 and "notice=bulk" in done.headers["location"] and "q=acme" in done.headers["location"]
    )
    assert "Done: 4 contacts matched, 4 changed." in (await client.get(done.headers["location"])).text

    # the new status of set_status is not the list's status filter: the matches stay those of the search
    archive = {"csrf_token": csrf, "q": "acme", "action": "set_status", "new_status": "archived", "scope": "all"}
    confirm = await client.post("/contacts/bulk", data=archive)
    assert "Contacts affected: 4" in confirm.text and page_field(confirm.text, "new_status") == "archived"
    done = await client.post("/contacts/bulk", data={**archive, "expected_count": "4"})
    assert "status=" not in done.headers["location"] and "q=acme" in done.headers["location"]
    assert "Done: 4 contacts matched, 4 changed." in (await client.get(done.headers["location"])).text

    delete = {"csrf_token": csrf, "action": "delete", "scope": "selected", "id": [str(i) for i in ids[:2]]}
    confirm = await client.post("/contacts/bulk", data=delete)
    assert "Delete these contacts?" in confirm.text and "Contacts affected: 2" in confirm.text
    assert (await client.post("/contacts/bulk", data={**delete, "expected_count": "2"})).status_code == 303
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Contact)) == 3


async def test_a_read_only_account_sees_no_control_that_writes_and_its_posts_are_refused(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    reader = await make_account(sessionmaker, "reader", role="read_only")
    csrf = await console_log_in(client, reader)
    page = (await client.get("/contacts")).text
    assert 'action="/contacts/bulk"' not in page and "/contacts/new" not in page
    for path in ("/contacts/new", "/contacts/bulk", "/contacts/1", "/contacts/1/delete"):
        refused = await client.post(path, data={"csrf_token": csrf, "email": "x@example.com"}, headers=HTML)
        assert refused.status_code == 403, path
    other = await create_contact(client, alice, "alice-only@example.com")
    assert (await client.get(f"/contacts/{other['id']}", headers=HTML)).status_code == 404, "not the reader's"


async def test_an_unsubscribed_contact_is_resubscribed_with_a_reason_and_a_contact_is_deleted(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    contact = await create_contact(client, alice, "gone@example.com")
    async with sessionmaker() as session, session.begin():
        row = await session.get(Contact, contact["id"])
        assert row is not None
        row.unsubscribed_at = row.created_at
    path = f"/contacts/{contact['id']}"
    page = (await client.get(path)).text
    assert "Campaigns do not send to this contact." in page and "The contact unsubscribed." in page
    empty = await client.post(f"{path}/resubscribe", data={"csrf_token": csrf, "reason": ""})
    assert empty.status_code == 422 and field_error(empty.text, "reason") == "This field is required."
    done = await client.post(f"{path}/resubscribe", data={"csrf_token": csrf, "reason": "asked by phone"})
    assert done.status_code == 303 and done.headers["location"] == f"{path}?notice=resubscribed"
    page = (await client.get(done.headers["location"])).text
    assert "The contact was resubscribed." in page and "Campaigns may send to this contact." in page
    assert f'action="{path}/resubscribe"' not in page

    assert "Delete the contact gone@example.com? This cannot be undone." in page
    deleted = await client.post(f"{path}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/contacts?notice=deleted"
    assert (await client.get(path, headers=HTML)).status_code == 404


async def test_a_contact_page_adds_one_of_the_users_tags_and_removes_an_explicit_one(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    csrf = await console_log_in(client, alice)
    news = await create_tag(client, alice, "News")
    vip = await create_tag(client, alice, "VIP")
    gold = await create_tag(client, alice, "Gold", parent_id=vip)
    bobs = await create_tag(client, bob, "Bob's")
    contact = await create_contact(client, alice, "ann@example.com", tag_ids=[news])
    path = f"/contacts/{contact['id']}"

    page = (await client.get(path)).text
    assert f'action="{path}/tags"' in page and f'action="{path}/tags/{news}/remove"' in page
    assert f'<option value="{gold}">VIP / Gold</option>' in page and f'<option value="{news}"' not in page, (
        "the tags it does not have yet"
    )
    added = await client.post(f"{path}/tags", data={"csrf_token": csrf, "tag_id": str(gold)})
    assert added.status_code == 303 and added.headers["location"] == f"{path}?notice=tagged#tags"
    page = (await client.get(added.headers["location"])).text
    assert "The tag was added." in page and "Implied tags" in page and f'action="{path}/tags/{gold}/remove"' in page
    contact_tags = (await client.get(f"/api/v1/contacts/{contact['id']}", headers=alice.headers)).json()["tags"]
    assert {(t["id"], t["implied"]) for t in contact_tags} == {(news, False), (gold, False), (vip, True)}

    nothing = await client.post(f"{path}/tags", data={"csrf_token": csrf, "tag_id": ""}, headers=HTML)
    assert nothing.status_code == 422 and field_error(nothing.text, "tag_id") == "Choose a tag."
    foreign = await client.post(f"{path}/tags", data={"csrf_token": csrf, "tag_id": str(bobs)}, headers=HTML)
    assert foreign.status_code == 422 and field_error(foreign.text, "tag_id") == "This no longer exists: choose again."
    unknown = await client.post(f"{path}/tags", data={"csrf_token": csrf, "tag_id": "99999999"}, headers=HTML)
    assert unknown.status_code == 422 and field_error(unknown.text, "tag_id") == "This no longer exists: choose again."

    removed = await client.post(f"{path}/tags/{news}/remove", data={"csrf_token": csrf})
    assert removed.status_code == 303 and removed.headers["location"] == f"{path}?notice=untagged#tags"
    assert "The tag was removed." in (await client.get(removed.headers["location"])).text
    refused = await client.post(f"{path}/tags/{bobs}/remove", data={"csrf_token": csrf}, headers=HTML)
    assert refused.status_code == 422 and "This tag no longer exists." in refused.text
    contact_tags = (await client.get(f"/api/v1/contacts/{contact['id']}", headers=alice.headers)).json()["tags"]
    assert {(t["id"], t["implied"]) for t in contact_tags} == {(gold, False), (vip, True)}
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ContactTag).where(ContactTag.tag_id == bobs)) == 0

    other = await create_contact(client, bob, "bobs@example.com")
    for action in (f"/contacts/{other['id']}/tags", f"/contacts/{other['id']}/tags/{bobs}/remove"):
        answer = await client.post(action, data={"csrf_token": csrf, "tag_id": str(news)}, headers=HTML)
        assert answer.status_code == 404, action


async def test_a_read_only_account_sees_no_tag_control_on_a_contact_and_its_tag_posts_are_refused(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only")
    async with unit_of_work(sessionmaker) as session:  # the reader's own contact and tags (its API token is read-only)
        vip = (await tags.create_tag(session, user_id=reader.id, name="VIP")).id
        news = (await tags.create_tag(session, user_id=reader.id, name="News")).id
        contact = (
            await service.create_contact(session, user_id=reader.id, values={"email": "r@example.com"}, tag_ids=[vip])
        ).id
    csrf = await console_log_in(client, reader)
    page = (await client.get(f"/contacts/{contact}")).text
    assert "VIP" in page and f"/contacts/{contact}/tags" not in page and 'name="tag_id"' not in page
    for action in (f"/contacts/{contact}/tags", f"/contacts/{contact}/tags/{vip}/remove"):
        refused = await client.post(action, data={"csrf_token": csrf, "tag_id": str(news)}, headers=HTML)
        assert refused.status_code == 403, action
    async with sessionmaker() as session:
        rows = await session.scalars(select(ContactTag.tag_id).where(ContactTag.contact_id == contact))
        assert list(rows) == [vip]
