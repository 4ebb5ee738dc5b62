"""Tags through the real ASGI app and database (docs/contacts.md#tags): the two-level tree, sibling-unique names,
counts with implied parents, references that block deletion, bulk membership, isolation and roles."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from edm.db.session import unit_of_work
from edm.models.contacts import Contact, ContactTag
from edm.models.tasks import Task
from tests import factories
from tests.helpers import Account, make_account
from tests.helpers import expect_error as _error

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
        session.add(
            Task(
                user_id=alice.id,
                name="Old",
                status="completed",
                recipient_rule={"type": "tag_based", "include_tag_ids": [child["id"]]},
            )
        )
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
    _error(
        await client.post(f"{url}/contacts", json={"contact_ids": [bob_contact]}, headers=bob.headers), 404, "not_found"
    )
    assert (await client.get(f"{API}/tags", headers=bob.headers)).json()["items"] == []
    assert (await client.get(f"{API}/tags/tree", headers=bob.headers)).json() == []


async def test_read_only_token_cannot_change_tags(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    reader = await make_account(sessionmaker, "reader", scope="read")
    tag = await _tag(client, alice, "VIP")
    _error(await client.post(f"{API}/tags", json={"name": "x"}, headers=reader.headers), 403, "forbidden")
    _error(await client.patch(f"{API}/tags/{tag['id']}", json={"name": "x"}, headers=reader.headers), 403, "forbidden")
    _error(await client.delete(f"{API}/tags/{tag['id']}", headers=reader.headers), 403, "forbidden")
    _error(
        await client.post(f"{API}/tags/{tag['id']}/contacts", json={"contact_ids": [1]}, headers=reader.headers),
        403,
        "forbidden",
    )
    assert (await client.get(f"{API}/tags", headers=reader.headers)).status_code == 200


# --------------------------------------------------------------------------------------------------------
# Move (re-parent) and A/B split (docs/contacts.md#tags, docs/contacts.md#ab-split)
# --------------------------------------------------------------------------------------------------------


async def test_move_reparents_and_keeps_the_tree_two_levels(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "alice-r", scope="read")
    a = await _tag(client, alice, "A")
    b = await _tag(client, alice, "B")
    loose = await _tag(client, alice, "Loose")
    child = await _tag(client, alice, "Kid", parent_id=a["id"])
    same_name = await _tag(client, alice, "Kid")

    r = await client.post(f"{API}/tags/{loose['id']}/move", json={"parent_id": b["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text and r.json()["parent_id"] == b["id"]
    assert r.json()["parent_id"] == b["id"]
    r = await client.post(f"{API}/tags/{loose['id']}/move", json={"parent_id": None}, headers=alice.headers)
    assert r.json()["parent_id"] is None
    # A tag with children cannot go under another (only roots have children): 422.
    r = await client.post(f"{API}/tags/{a['id']}/move", json={"parent_id": b["id"]}, headers=alice.headers)
    assert _error(r, 422, "validation_error")["details"][0]["field"] == "parent_id"
    # Under a child (depth 3) or under itself: 422.
    r = await client.post(f"{API}/tags/{loose['id']}/move", json={"parent_id": child["id"]}, headers=alice.headers)
    _error(r, 422, "validation_error")
    r = await client.post(f"{API}/tags/{loose['id']}/move", json={"parent_id": loose["id"]}, headers=alice.headers)
    _error(r, 422, "validation_error")
    # A sibling of the same name: 409.
    r = await client.post(f"{API}/tags/{same_name['id']}/move", json={"parent_id": a["id"]}, headers=alice.headers)
    _error(r, 409, "conflict")
    r = await client.post(f"{API}/tags/{child['id']}/move", json={"parent_id": None}, headers=alice.headers)
    _error(r, 409, "conflict")  # a root "Kid" exists
    # Another user's tag or parent, unknown fields, read-only.
    _error(
        await client.post(f"{API}/tags/{loose['id']}/move", json={"parent_id": None}, headers=bob.headers),
        404,
        "not_found",
    )
    bob_root = await _tag(client, bob, "Root")
    r = await client.post(f"{API}/tags/{loose['id']}/move", json={"parent_id": bob_root["id"]}, headers=alice.headers)
    _error(r, 422, "validation_error")
    r = await client.post(f"{API}/tags/{loose['id']}/move", json={"parent": None}, headers=alice.headers)
    _error(r, 422, "validation_error")
    r = await client.post(f"{API}/tags/{loose['id']}/move", json={"parent_id": b["id"]}, headers=reader.headers)
    _error(r, 403, "forbidden")


async def _split_members(sessionmaker: Any, user_id: int, n: int, name: str = "Leads") -> tuple[int, list[int]]:
    async with unit_of_work(sessionmaker) as session:
        tag_id = await factories.tag(session, user_id, name)
        ids = await factories.contacts(session, user_id, n, prefix=f"{name}-", tag_id=tag_id)
    return tag_id, ids


async def _group_members(sessionmaker: Any, groups: list[dict[str, Any]]) -> list[list[int]]:
    async with sessionmaker() as session:
        return [
            sorted(await session.scalars(select(ContactTag.contact_id).where(ContactTag.tag_id == g["id"])))
            for g in groups
        ]


@pytest.mark.parametrize(("n", "sizes"), [(10, [3, 7]), (1001, [250, 751])])
async def test_split_sizes_follow_largest_remainder(
    client: httpx.AsyncClient, sessionmaker: Any, n: int, sizes: list[int]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    tag_id, ids = await _split_members(sessionmaker, alice.id, n)
    r = await client.post(
        f"{API}/tags/{tag_id}/split", json={"group_count": 2, "ratios": [0.25, 0.75], "seed": 7}, headers=alice.headers
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["seed"] == 7 and body["source_count"] == n
    assert [g["size"] for g in body["groups"]] == sizes
    assert [g["name"] for g in body["groups"]] == ["Leads group 1", "Leads group 2"]
    members = await _group_members(sessionmaker, body["groups"])
    assert [len(m) for m in members] == sizes
    assert sorted(members[0] + members[1]) == sorted(ids)  # each contact in exactly one group
    # Members keep the root membership; groups are split-group children of the root.
    tree = (await client.get(f"{API}/tags/tree", headers=alice.headers)).json()
    root = next(t for t in tree if t["id"] == tag_id)
    assert root["member_count"] == n and all(c["is_split_group"] for c in root["children"])
    assert "seed 7" in root["children"][0]["description"]


def test_split_assignment_is_fisher_yates_over_sorted_members() -> None:
    import random

    from edm.contacts.split import assign, group_sizes, shuffled

    assert group_sizes(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]
    assert group_sizes(7, [0.5, 0.5]) == [4, 3]
    assert group_sizes(0, [0.5, 0.5]) == [0, 0]
    expected = list(range(1, 11))
    rng = random.Random(42)
    for i in range(9, 0, -1):
        j = rng.randrange(i + 1)
        expected[i], expected[j] = expected[j], expected[i]
    assert shuffled([5, 3, 1, 2, 4, 6, 7, 8, 9, 10], 42) == expected  # input order does not matter
    assert assign(list(range(1, 11)), [3, 7], 42) == [expected[:3], expected[3:]]


async def test_same_seed_gives_same_groups_and_regroup_replaces_them(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    first_tag, _ = await _split_members(sessionmaker, alice.id, 40, "First")
    url = f"{API}/tags/{first_tag}/split"
    body = {"group_count": 3, "seed": 123, "group_names": ["A", "B", "C"]}
    one = (await client.post(url, json=body, headers=alice.headers)).json()
    before = await _group_members(sessionmaker, one["groups"])
    assert [len(m) for m in before] == [14, 13, 13]
    # Without regroup, existing groups answer 409.
    _error(await client.post(url, json=body, headers=alice.headers), 409, "conflict")
    # Regroup with the same seed: the same members in the same groups (new tags).
    again = await client.post(url, json={**body, "regroup": True}, headers=alice.headers)
    assert again.status_code == 201, again.text
    assert [g["name"] for g in again.json()["groups"]] == ["A", "B", "C"]
    assert await _group_members(sessionmaker, again.json()["groups"]) == before
    # Regroup with another seed and 2 groups: old groups are gone, every member in one new group.
    other = (await client.post(url, json={"group_count": 2, "seed": 9, "regroup": True}, headers=alice.headers)).json()
    tree = (await client.get(f"{API}/tags/tree", headers=alice.headers)).json()
    assert [c["name"] for c in next(t for t in tree if t["id"] == first_tag)["children"]] == [
        "First group 1",
        "First group 2",
    ]
    after = await _group_members(sessionmaker, other["groups"])
    assert sorted(after[0] + after[1]) == sorted(sum(before, []))
    # No seed: a random one is chosen, stored and returned.
    second_tag, _ = await _split_members(sessionmaker, alice.id, 5, "Second")
    r = (await client.post(f"{API}/tags/{second_tag}/split", json={"group_count": 2}, headers=alice.headers)).json()
    assert isinstance(r["seed"], int)


async def test_split_refusals(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "viewer", role="read_only")
    tag_id, _ = await _split_members(sessionmaker, alice.id, 6)
    child = await _tag(client, alice, "Kid", parent_id=tag_id)
    url = f"{API}/tags/{tag_id}/split"
    for body in [
        {"group_count": 1},
        {"group_count": 11},
        {"group_count": 2, "ratios": [0.5, 0.4]},
        {"group_count": 2, "ratios": [0.5, 0.25, 0.25]},
        {"group_count": 2, "ratios": [1.5, -0.5]},
        {"group_count": 2, "group_names": ["x", "x"]},
        {"group_count": 2, "group_names": ["a/b", "c"]},
        {"group_count": 2, "seed": -1},
        {"group_count": 2, "extra": 1},
    ]:
        _error(await client.post(url, json=body, headers=alice.headers), 422, "validation_error")
    r = await client.post(url, json={"group_count": 2, "ratios": [0.1 + 0.2, 0.7]}, headers=alice.headers)
    assert r.status_code == 201, r.text  # 1 ± 1e-9 is accepted
    _error(
        await client.post(f"{API}/tags/{child['id']}/split", json={"group_count": 2}, headers=alice.headers),
        422,
        "validation_error",
    )  # only roots
    r = await client.post(
        url, json={"group_count": 2, "regroup": True, "group_names": ["Kid", "Other"]}, headers=alice.headers
    )
    _error(r, 409, "conflict")  # a non-split child has that name
    _error(await client.post(url, json={"group_count": 2}, headers=bob.headers), 404, "not_found")
    _error(await client.post(url, json={"group_count": 2}, headers=reader.headers), 403, "forbidden")
