"""Tags through the real ASGI app and database (SPEC §4.3, §13.2): the two-level tree, sibling-unique names,
counts with implied parents, references that block deletion, bulk membership, isolation and roles."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from edm.contacts.models import Contact
from edm.db.session import unit_of_work
from edm.tasks.models import Task
from tests.helpers import Account, make_account

API = "/api/v1"



async def _tag(client: httpx.AsyncClient, who: Account, name: str, **fields: Any) -> dict[str, Any]:
    r = await client.post(f"{API}/tags", json={"name": name, **fields}, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _contacts(client: httpx.AsyncClient, who: Account, n: int, prefix: str = "c") -> list[int]:
    ids = []
    for i in range(n):
        r = await client.post(f"{API}/contacts", json={"email": f"{prefix}{i}@example.org"}, headers=who.headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code, body
    return body


async def test_create_roots_and_children(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    root = await _tag(client, alice, " Customers ", color="#AABBCC", description="paying")
    assert (root["name"], root["color"], root["parent_id"]) == ("Customers", "#aabbcc", None)
    assert (await _tag(client, alice, "plain"))["color"] == "#3b82f6"
    child = await _tag(client, alice, "EU", parent_id=root["id"])
    assert child["parent_id"] == root["id"]
    # Same name under another parent, or as a root, is fine: names are unique among siblings.
    other_root = await _tag(client, alice, "Leads")
    await _tag(client, alice, "EU", parent_id=other_root["id"])
    await _tag(client, alice, "EU")

    r = await client.post(f"{API}/tags", json={"name": "Deep", "parent_id": child["id"]}, headers=alice.headers)
    assert _error(r, 422, "validation_error")["details"][0]["field"] == "parent_id"
    r = await client.post(f"{API}/tags", json={"name": "EU", "parent_id": root["id"]}, headers=alice.headers)
    assert _error(r, 409, "conflict")["details"][0]["field"] == "name"
    r = await client.post(f"{API}/tags", json={"name": "Customers"}, headers=alice.headers)
    assert _error(r, 409, "conflict")["existing_id"] == root["id"]


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "a/b"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "ok", "color": "blue"}, "color"),
    ({"name": "ok", "color": "#12345g"}, "color"),
    ({"name": "ok", "parent_id": 0}, "parent_id"),
    ({"name": "ok", "is_split_group": True}, "is_split_group"),
])  # fmt: skip
async def test_bad_tag_bodies(client: httpx.AsyncClient, sessionmaker: Any, body: dict[str, Any], field: str) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{API}/tags", json=body, headers=alice.headers)
    assert field in [d["field"] for d in _error(r, 422, "validation_error")["details"]]


async def test_parent_of_another_user_is_422(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    theirs = await _tag(client, bob, "Bob's")
    r = await client.post(f"{API}/tags", json={"name": "x", "parent_id": theirs["id"]}, headers=alice.headers)
    error = _error(r, 422, "validation_error")
    assert error["details"][0]["field"] == "parent_id" and str(theirs["id"]) in error["details"][0]["message"]


async def test_counts_list_and_tree(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    root = await _tag(client, alice, "Customers")
    eu = await _tag(client, alice, "EU", parent_id=root["id"])
    us = await _tag(client, alice, "US", parent_id=root["id"])
    ids = await _contacts(client, alice, 4)
    await client.post(f"{API}/tags/{root['id']}/contacts", json={"contact_ids": ids[:1]}, headers=alice.headers)
    await client.post(f"{API}/tags/{eu['id']}/contacts", json={"contact_ids": ids[:3]}, headers=alice.headers)
    await client.post(f"{API}/tags/{us['id']}/contacts", json={"contact_ids": ids[2:4]}, headers=alice.headers)

    items = {t["id"]: t for t in (await client.get(f"{API}/tags", headers=alice.headers)).json()["items"]}
    assert (items[root["id"]]["member_count"], items[root["id"]]["total_member_count"]) == (1, 4)
    assert (items[eu["id"]]["member_count"], items[eu["id"]]["total_member_count"]) == (3, 3)
    assert items[us["id"]]["member_count"] == 2

    tree = (await client.get(f"{API}/tags/tree", headers=alice.headers)).json()
    assert [(t["name"], [c["name"] for c in t["children"]]) for t in tree] == [("Customers", ["EU", "US"])]
    assert tree[0]["total_member_count"] == 4

    page = (await client.get(f"{API}/tags?limit=2&include_total=true", headers=alice.headers)).json()
    assert len(page["items"]) == 2 and page["next_cursor"] and page["total"] == 3

    members = (await client.get(f"{API}/tags/{root['id']}/contacts", headers=alice.headers)).json()
    assert [c["id"] for c in members["items"]] == ids
    members = (await client.get(f"{API}/tags/{root['id']}/contacts?explicit_only=true", headers=alice.headers)).json()
    assert [c["id"] for c in members["items"]] == ids[:1]


async def test_rename_and_recolor(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    a = await _tag(client, alice, "A")
    await _tag(client, alice, "B")
    r = await client.patch(f"{API}/tags/{a['id']}", json={"name": "A2", "color": "#000000"}, headers=alice.headers)
    assert r.status_code == 200 and (r.json()["name"], r.json()["color"]) == ("A2", "#000000")
    r = await client.patch(f"{API}/tags/{a['id']}", json={"name": "A2"}, headers=alice.headers)
    assert r.status_code == 200  # renaming to its own name is not a conflict
    _error(await client.patch(f"{API}/tags/{a['id']}", json={"name": "B"}, headers=alice.headers), 409, "conflict")
    r = await client.patch(f"{API}/tags/{a['id']}", json={"parent_id": 5}, headers=alice.headers)
    assert _error(r, 422, "validation_error")["details"][0]["field"] == "parent_id"


async def test_delete_refused_while_referenced(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    root = await _tag(client, alice, "Customers")
    child = await _tag(client, alice, "EU", parent_id=root["id"])
    body = _error(await client.delete(f"{API}/tags/{root['id']}", headers=alice.headers), 409, "in_use")
    assert body["children"] == [{"id": child["id"], "name": "EU"}]

    async with unit_of_work(sessionmaker) as session:
        rule = {"type": "tag_based", "include_tag_ids": [1000], "exclude_tag_ids": [child["id"]]}
        session.add(Task(user_id=alice.id, name="Spring", status="draft", recipient_rule=rule))
        session.add(Task(user_id=alice.id, name="Old", status="completed",
                         recipient_rule={"type": "tag_based", "include_tag_ids": [child["id"]]}))
    body = _error(await client.delete(f"{API}/tags/{child['id']}", headers=alice.headers), 409, "in_use")
    assert [t["name"] for t in body["tasks"]] == ["Spring"]


async def test_delete_removes_memberships_not_contacts(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    tag = await _tag(client, alice, "VIP")
    ids = await _contacts(client, alice, 2)
    await client.post(f"{API}/tags/{tag['id']}/contacts", json={"contact_ids": ids}, headers=alice.headers)
    assert (await client.delete(f"{API}/tags/{tag['id']}", headers=alice.headers)).status_code == 204
    _error(await client.get(f"{API}/tags/{tag['id']}", headers=alice.headers), 404, "not_found")
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Contact)) == 2
    contact = (await client.get(f"{API}/contacts/{ids[0]}", headers=alice.headers)).json()
    assert contact["tags"] == []


async def test_bulk_members(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    tag = await _tag(client, alice, "VIP")
    mine = await _contacts(client, alice, 3)
    theirs = await _contacts(client, bob, 1, prefix="b")
    url = f"{API}/tags/{tag['id']}/contacts"

    r = await client.post(url, json={"contact_ids": [*mine, *theirs, 999999]}, headers=alice.headers)
    error = _error(r, 422, "validation_error")
    assert error["details"][0]["field"] == "contact_ids"
    assert error["missing_ids"] == [theirs[0], 999999]
    assert (await client.get(f"{API}/tags/{tag['id']}", headers=alice.headers)).json()["member_count"] == 0

    assert (await client.post(url, json={"contact_ids": mine}, headers=alice.headers)).json()["added"] == 3
    assert (await client.post(url, json={"contact_ids": mine}, headers=alice.headers)).json()["added"] == 0
    r = await client.request("DELETE", url, json={"contact_ids": mine[:2]}, headers=alice.headers)
    assert r.json()["removed"] == 2
    assert (await client.get(f"{API}/tags/{tag['id']}", headers=alice.headers)).json()["member_count"] == 1
    _error(await client.post(url, json={"contact_ids": []}, headers=alice.headers), 422, "validation_error")


async def test_other_users_tags_are_not_found(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    tag = await _tag(client, alice, "VIP")
    bob_contact = (await _contacts(client, bob, 1, prefix="b"))[0]
    url = f"{API}/tags/{tag['id']}"
    _error(await client.get(url, headers=bob.headers), 404, "not_found")
    _error(await client.patch(url, json={"name": "x"}, headers=bob.headers), 404, "not_found")
    _error(await client.delete(url, headers=bob.headers), 404, "not_found")
    _error(await client.get(f"{url}/contacts", headers=bob.headers), 404, "not_found")
    _error(await client.post(f"{url}/contacts", json={"contact_ids": [bob_contact]}, headers=bob.headers),
           404, "not_found")
    assert (await client.get(f"{API}/tags", headers=bob.headers)).json()["items"] == []
    assert (await client.get(f"{API}/tags/tree", headers=bob.headers)).json() == []


async def test_read_only_token_cannot_change_tags(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    reader = await make_account(sessionmaker, "reader", scope="read")
    tag = await _tag(client, alice, "VIP")
    _error(await client.post(f"{API}/tags", json={"name": "x"}, headers=reader.headers), 403, "forbidden")
    _error(await client.patch(f"{API}/tags/{tag['id']}", json={"name": "x"}, headers=reader.headers),
           403, "forbidden")
    _error(await client.delete(f"{API}/tags/{tag['id']}", headers=reader.headers), 403, "forbidden")
    _error(await client.post(f"{API}/tags/{tag['id']}/contacts", json={"contact_ids": [1]}, headers=reader.headers),
           403, "forbidden")
    assert (await client.get(f"{API}/tags", headers=reader.headers)).status_code == 200
