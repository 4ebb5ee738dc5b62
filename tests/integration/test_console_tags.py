"""The tag pages of the console over the ASGI app (no browser): create, rename, recolour, move, split and delete,
each error beside its field with what was typed kept, deletion refused while the tag is in use, and what a
read-only account may do."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.models.contacts import Tag
from tests.helpers import console_log_in, create_contact, create_tag, field_error, make_account

HTML = {"Accept": "text/html"}


async def test_tags_are_created_edited_moved_split_and_deleted_with_errors_beside_their_fields(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    assert "No tags yet." in (await client.get("/tags")).text

    bad = await client.post("/tags", data={"csrf_token": csrf, "name": "a/b", "color": "red"})
    assert bad.status_code == 422
    assert field_error(bad.text, "name") == "Use a name without “/”, of at most 64 characters."
    assert 'value="a/b"' in bad.text and 'value="red"' in bad.text
    made = await client.post("/tags", data={"csrf_token": csrf, "name": "Spring", "color": "#3366CC"})
    assert made.status_code == 303 and made.headers["location"].startswith("/tags?notice=created")
    taken = await client.post("/tags", data={"csrf_token": csrf, "name": "Spring"})
    assert taken.status_code == 409 and field_error(taken.text, "name") == "This is already in use."
    async with sessionmaker() as session:
        spring = await session.scalar(select(Tag).where(Tag.name == "Spring"))
    assert spring is not None and spring.color == "#3366cc"

    members = [(await create_contact(client, alice, f"s{i}@example.com", tag_ids=[spring.id]))["id"] for i in range(10)]
    tree = (await client.get("/tags")).text
    assert f'href="/contacts?tag={spring.id}"' in tree and ">10<" in tree

    page = f"/tags/{spring.id}"
    recolour = await client.post(page, data={"csrf_token": csrf, "name": "Spring", "color": "blue"})
    assert (
        recolour.status_code == 422
        and field_error(recolour.text, "color") == "Enter a colour as #rrggbb, e.g. #3366cc."
    )
    assert (
        await client.post(page, data={"csrf_token": csrf, "name": "Spring 26", "color": "#00aa00"})
    ).status_code == 303

    split = f"{page}/split"
    bad_split = await client.post(split, data={"csrf_token": csrf, "group_count": "2", "ratios": "1, 2, 3"})
    assert bad_split.status_code == 422 and "one positive share per group" in field_error(bad_split.text, "ratios")
    assert 'value="1, 2, 3"' in bad_split.text
    done = await client.post(split, data={"csrf_token": csrf, "group_count": "2", "ratios": "20, 80", "seed": "7"})
    assert done.status_code == 303
    detail = (await client.get(page)).text
    assert "Spring 26 group 1</a> — 2 members" in detail and "Spring 26 group 2</a> — 8 members" in detail
    again = await client.post(split, data={"csrf_token": csrf, "group_count": "2"})
    assert again.status_code == 409 and "tick “Replace the groups”" in field_error(again.text, "regroup")

    other = await create_tag(client, alice, "Other")
    moved = await client.post(f"/tags/{other}/move", data={"csrf_token": csrf, "parent_id": str(spring.id)})
    assert moved.status_code == 303
    refused = await client.post(f"{page}/move", data={"csrf_token": csrf, "parent_id": str(other)})
    assert refused.status_code == 422 and "nest one level deep" in field_error(refused.text, "parent_id")

    in_use = await client.post(f"{page}/delete", data={"csrf_token": csrf})
    assert in_use.status_code == 409 and "This tag has child tags: move or delete them first." in in_use.text
    assert "It is removed from 10 contacts." in detail, "the delete asks with the count"
    assert (await client.post(f"/tags/{other}/delete", data={"csrf_token": csrf})).status_code == 303
    assert len(members) == 10


async def test_a_read_only_account_sees_the_tree_but_no_form_and_its_posts_are_refused(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only")
    csrf = await console_log_in(client, reader)
    page = (await client.get("/tags")).text
    assert 'action="/tags"' not in page
    for path in ("/tags", "/tags/1", "/tags/1/move", "/tags/1/split", "/tags/1/delete"):
        refused = await client.post(path, data={"csrf_token": csrf, "name": "x"}, headers=HTML)
        assert refused.status_code == 403, path
