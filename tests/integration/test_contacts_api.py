"""Contacts through the real ASGI app and database (docs/contacts.md, docs/api.md): CRUD, uniqueness, validation,
filters, cursor pages, isolation between users and read-only refusals."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from edm.models.contacts import Contact, ContactTag
from edm.models.users import Role
from tests.helpers import create_contact as _contact
from tests.helpers import create_tag as _tag
from tests.helpers import expect_error as _error
from tests.helpers import make_account

API = "/api/v1"


async def test_create_get_update_delete(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    created = await _contact(
        client,
        alice,
        "  Ann.Lee@Bücher.Example ",
        first_name="Ann",
        company="Acme",
        custom_attributes={"city": "Oslo", "vip": True, "score": 4.5},
    )
    assert created["email"] == "Ann.Lee@Bücher.Example"
    assert created["email_normalized"] == "ann.lee@xn--bcher-kva.example"
    assert created["status"] == "active" and created["source"] == "api"
    assert created["custom_attributes"] == {"city": "Oslo", "vip": True, "score": 4.5}

    r = await client.get(f"{API}/contacts/{created['id']}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["first_name"] == "Ann"

    r = await client.patch(
        f"{API}/contacts/{created['id']}", json={"last_name": "Lee", "status": "inactive"}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["last_name"] == "Lee" and r.json()["status"] == "inactive" and r.json()["first_name"] == "Ann"

    r = await client.delete(f"{API}/contacts/{created['id']}", headers=alice.headers)
    assert r.status_code == 204
    _error(await client.get(f"{API}/contacts/{created['id']}", headers=alice.headers), 404, "not_found")


async def test_duplicate_address_is_409_with_the_existing_id(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    first = await _contact(client, alice, "ann@example.org")
    r = await client.post(f"{API}/contacts", json={"email": " ANN@Example.ORG"}, headers=alice.headers)
    body = _error(r, 409, "conflict")
    assert body["existing_id"] == first["id"] and body["details"][0]["field"] == "email"

    other = await _contact(client, alice, "bob@example.org")
    r = await client.patch(f"{API}/contacts/{other['id']}", json={"email": "Ann@example.org"}, headers=alice.headers)
    assert _error(r, 409, "conflict")["existing_id"] == first["id"]
    # Another user may hold the same address: uniqueness is per user.
    bob = await make_account(sessionmaker, "bob")
    await _contact(client, bob, "ann@example.org")


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "not-an-address"}, "email"),
    ({"email": "a@b.co", "custom_attributes": {"bad-key": 1}}, "custom_attributes.bad-key"),
    ({"email": "a@b.co", "custom_attributes": {"nested": {"x": 1}}}, "custom_attributes.nested"),
    ({"email": "a@b.co", "custom_attributes": {f"k{i}": i for i in range(101)}}, "custom_attributes"),
    ({"email": "a@b.co", "custom_attributes": {"long": "x" * 2001}}, "custom_attributes.long"),
    ({"email": "a@b.co", "first_name": "x" * 201}, "first_name"),
    ({"email": "a@b.co", "first_name": "nul\u0000"}, "first_name"),
    ({"email": "a@b.co", "status": "deleted"}, "status"),
    ({"email": "a@b.co", "timezone": "Mars/Olympus"}, "timezone"),
    ({"email": "a@b.co", "favourite": "x"}, "favourite"),
    ({"first_name": "no email"}, "email"),
])  # fmt: skip
async def test_bad_contact_bodies_name_the_field(
    client: httpx.AsyncClient, sessionmaker: Any, body: dict[str, Any], field: str
) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{API}/contacts", json=body, headers=alice.headers)
    error = _error(r, 422, "validation_error")
    assert field in [d["field"] for d in error["details"]], error


async def test_malformed_json_limits_and_cursors(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(
        f"{API}/contacts", content=b'{"email": ', headers={**alice.headers, "content-type": "application/json"}
    )
    _error(r, 400, "invalid_json")
    error = _error(await client.get(f"{API}/contacts?limit=201", headers=alice.headers), 422, "validation_error")
    assert error["details"][0]["field"] == "limit"
    error = _error(await client.get(f"{API}/contacts?cursor=garbage", headers=alice.headers), 422, "validation_error")
    assert error["details"][0]["field"] == "cursor"
    _error(await client.get(f"{API}/contacts/99999999999999999999", headers=alice.headers), 422, "validation_error")
    _error(await client.get(f"{API}/contacts/abc", headers=alice.headers), 422, "validation_error")
    _error(await client.get(f"{API}/contacts?q=a%00b", headers=alice.headers), 422, "validation_error")
    # A cursor past any BIGINT was never issued by us: a clear 422 (docs/api.md#errors "bad cursor"), not a 500.
    from edm.paging import encode_cursor

    r = await client.get(f"{API}/contacts", params={"cursor": encode_cursor(2**70)}, headers=alice.headers)
    assert _error(r, 422, "validation_error")["details"][0]["field"] == "cursor"


async def test_pages_follow_ids_and_end_with_a_null_cursor(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    ids = [(await _contact(client, alice, f"c{i}@example.org"))["id"] for i in range(5)]
    seen: list[int] = []
    cursor = None
    for _ in range(3):
        params: dict[str, Any] = {"limit": 2, "include_total": "true"}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get(f"{API}/contacts", params=params, headers=alice.headers)).json()
        assert body["total"] == 5
        seen += [c["id"] for c in body["items"]]
        cursor = body["next_cursor"]
    assert seen == ids and cursor is None


async def test_filters(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    parent = await _tag(client, alice, "Customers")
    child = await _tag(client, alice, "EU", parent_id=parent)
    ann = await _contact(client, alice, "ann@example.org", company="Big_Corp 100%", tag_ids=[child])
    ben = await _contact(client, alice, "ben@example.org", last_name="Bigsby", tag_ids=[parent])
    cat = await _contact(client, alice, "cat@example.org", status="inactive")

    async def ids(**params: Any) -> list[int]:
        r = await client.get(f"{API}/contacts", params=params, headers=alice.headers)
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["items"]]

    assert await ids(q="BIG") == [ann["id"], ben["id"]]
    assert await ids(q="_corp 100%") == [ann["id"]]  # LIKE wildcards are literal
    assert await ids(q="g%c") == []  # would match "Big_Corp" as a wildcard
    assert await ids(status="inactive") == [cat["id"]]
    assert await ids(tag_id=parent) == [ann["id"], ben["id"]]  # the parent includes its child's members
    assert await ids(tag_id=child) == [ann["id"]]
    assert await ids(untagged="true") == [cat["id"]]
    assert await ids(source="api") == [ann["id"], ben["id"], cat["id"]]
    detail = (await client.get(f"{API}/contacts/{ann['id']}", headers=alice.headers)).json()
    assert {(t["id"], t["implied"]) for t in detail["tags"]} == {(child, False), (parent, True)}


async def test_tag_and_untag_one_contact(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    contact = await _contact(client, alice, "ann@example.org")
    mine = await _tag(client, alice, "VIP")
    theirs = await _tag(client, bob, "Secret")

    r = await client.post(
        f"{API}/contacts/{contact['id']}/tags", json={"tag_ids": [mine, theirs]}, headers=alice.headers
    )
    error = _error(r, 422, "validation_error")
    assert error["details"][0]["field"] == "tag_ids" and str(theirs) in error["details"][0]["message"]

    r = await client.post(f"{API}/contacts/{contact['id']}/tags", json={"tag_ids": [mine]}, headers=alice.headers)
    assert r.json() == {"added": 1}
    r = await client.post(f"{API}/contacts/{contact['id']}/tags", json={"tag_ids": [mine]}, headers=alice.headers)
    assert r.json() == {"added": 0}
    r = await client.delete(f"{API}/contacts/{contact['id']}/tags/{mine}", headers=alice.headers)
    assert r.status_code == 204
    assert (await client.get(f"{API}/contacts/{contact['id']}", headers=alice.headers)).json()["tags"] == []
    r = await client.delete(f"{API}/contacts/{contact['id']}/tags/{theirs}", headers=alice.headers)
    _error(r, 404, "not_found")


async def test_deleting_a_contact_removes_its_memberships(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    tag = await _tag(client, alice, "VIP")
    contact = await _contact(client, alice, "ann@example.org", tag_ids=[tag])
    await client.delete(f"{API}/contacts/{contact['id']}", headers=alice.headers)
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ContactTag)) == 0
    r = await client.get(f"{API}/tags/{tag}", headers=alice.headers)
    assert r.json()["member_count"] == 0


async def test_other_users_contacts_are_not_found(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    contact = await _contact(client, alice, "ann@example.org")
    url = f"{API}/contacts/{contact['id']}"
    _error(await client.get(url, headers=bob.headers), 404, "not_found")
    _error(await client.patch(url, json={"name": "x"}, headers=bob.headers), 404, "not_found")
    _error(await client.delete(url, headers=bob.headers), 404, "not_found")
    _error(await client.post(f"{url}/tags", json={"tag_ids": [1]}, headers=bob.headers), 404, "not_found")
    assert (await client.get(f"{API}/contacts", headers=bob.headers)).json()["items"] == []
    _error(await client.get(f"{API}/contacts?user_id={alice.id}", headers=bob.headers), 403, "forbidden")
    async with sessionmaker() as session:
        assert (await session.get(Contact, contact["id"])) is not None


async def test_admin_may_list_another_users_contacts(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    contact = await _contact(client, alice, "ann@example.org")
    r = await client.get(f"{API}/contacts", params={"user_id": alice.id}, headers=admin.headers)
    assert [c["id"] for c in r.json()["items"]] == [contact["id"]]
    assert (await client.get(f"{API}/contacts", headers=admin.headers)).json()["items"] == []


@pytest.mark.parametrize("kind", ["read_token", "read_only_role"])
async def test_read_only_callers_cannot_write(client: httpx.AsyncClient, sessionmaker: Any, kind: str) -> None:
    alice = await make_account(sessionmaker, "alice")
    reader = (
        await make_account(sessionmaker, "alice2", scope="read")
        if kind == "read_token"
        else await make_account(sessionmaker, "viewer", role=Role.READ_ONLY)
    )
    contact = await _contact(client, alice, "ann@example.org")
    _error(
        await client.post(f"{API}/contacts", json={"email": "x@example.org"}, headers=reader.headers), 403, "forbidden"
    )
    _error(
        await client.patch(f"{API}/contacts/{contact['id']}", json={"name": "x"}, headers=reader.headers),
        403,
        "forbidden",
    )
    _error(await client.delete(f"{API}/contacts/{contact['id']}", headers=reader.headers), 403, "forbidden")
    assert (await client.get(f"{API}/contacts", headers=reader.headers)).status_code == 200


async def test_unauthenticated_is_401(client: httpx.AsyncClient) -> None:
    _error(await client.get(f"{API}/contacts"), 401, "unauthenticated")
    _error(await client.get(f"{API}/contacts", headers={"Authorization": "Bearer nope"}), 401, "invalid_token")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/contacts?tag_id=0", None),
    ("GET", "/contacts?tag_id=99999999999999999999", None),
    ("GET", "/contacts?status=bogus", None),
    ("GET", "/contacts?user_id=0", None),
    ("GET", "/contacts?source=%00", None),
    ("POST", "/contacts", b'{"email": "a@b.co", "custom_attributes": {"x": 1e400}}'),
    ("POST", "/contacts", b'{"email": "a@b.co", "custom_attributes": {"x": 99999999999999999999999}}'),
    ("POST", "/contacts", b'{"email": "a@b.co", "custom_attributes": []}'),
    ("POST", "/contacts", b'{"email": "a@b.co", "timezone": "../../etc/passwd"}'),
    ("POST", "/contacts", b'{"email": "a\\u0000@b.co"}'),
    ("POST", "/contacts", b'{"email": "a@b.co", "tag_ids": [0]}'),
    ("POST", "/contacts", b'{"email": "a@b.co", "tag_ids": [99999999999999999999]}'),
    ("POST", "/contacts", b'{"email": "a@-b.co"}'),
    ("POST", "/contacts", b'{"email": 12}'),
    ("POST", "/contacts", b'[]'),
    ("POST", "/contacts", b'null'),
    ("PATCH", "/contacts/1", b'{"email": null}'),
    ("PATCH", "/contacts/1", b'{"status": null}'),
    ("POST", "/contacts/1/tags", b'{"tag_ids": "1"}'),
    ("DELETE", "/contacts/1/tags/0", None),
    ("POST", "/tags", b'{"name": "x", "parent_id": 99999999999999999999}'),
    ("GET", "/tags/1/contacts?limit=0", None),
])  # fmt: skip
async def test_odd_input_is_a_4xx(
    client: httpx.AsyncClient, sessionmaker: Any, method: str, path: str, body: bytes | None
) -> None:
    alice = await make_account(sessionmaker, "alice")
    await _contact(client, alice, "seed@example.org")
    headers = {**alice.headers, "content-type": "application/json"}
    r = await client.request(method, f"{API}{path}", content=body, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"]


async def test_more_filters(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    """List filters (docs/contacts.md#listing-and-searching): import, created range, suppressed, attr.<key>=<value>,
    engaged since, children or not."""
    import datetime as dt

    from edm.db.session import unit_of_work

    alice = await make_account(sessionmaker, "alice")
    parent = await _tag(client, alice, "Customers")
    child = await _tag(client, alice, "EU", parent_id=parent)
    ann = await _contact(
        client, alice, "ann@example.org", custom_attributes={"city": "Oslo", "vip": True, "n": 4.5}, tag_ids=[child]
    )
    ben = await _contact(
        client, alice, "ben@example.org", custom_attributes={"city": "Rome", "vip": False, "n": 4}, tag_ids=[parent]
    )
    cat = await _contact(client, alice, "cat@blocked.example")
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    async with unit_of_work(sessionmaker) as session:
        for cid, created, opened, import_id in [
            (ann["id"], t0, t0 + dt.timedelta(days=40), 7),
            (ben["id"], t0 + dt.timedelta(days=10), None, None),
            (cat["id"], t0 + dt.timedelta(days=20), None, None),
        ]:
            row = await session.get(Contact, cid)
            assert row is not None
            row.created_at, row.last_clicked_at, row.import_id = created, opened, import_id
    r = await client.post(f"{API}/suppressions", json={"domain": "blocked.example"}, headers=alice.headers)
    assert r.status_code == 201, r.text

    async def ids(**params: Any) -> list[int]:
        r = await client.get(f"{API}/contacts", params=params, headers=alice.headers)
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["items"]]

    assert await ids(import_id=7) == [ann["id"]]
    assert await ids(created_from="2026-01-05T00:00:00Z") == [ben["id"], cat["id"]]
    assert await ids(created_from="2026-01-05T00:00:00Z", created_to="2026-01-15T00:00:00Z") == [ben["id"]]
    assert await ids(suppressed="true") == [cat["id"]]
    assert await ids(suppressed="false") == [ann["id"], ben["id"]]
    assert await ids(**{"attr.city": "Oslo"}) == [ann["id"]]
    assert await ids(**{"attr.vip": "false"}) == [ben["id"]]
    assert await ids(**{"attr.n": "4.5"}) == [ann["id"]]
    assert await ids(**{"attr.n": "4", "attr.city": "Rome"}) == [ben["id"]]
    assert await ids(engaged_since="2026-02-01T00:00:00Z") == [ann["id"]]
    assert await ids(tag_id=parent, explicit_only="true") == [ben["id"]]
    for bad in (
        {"attr.bad-key": "x"},
        {"created_from": "2026-01-01T00:00:00"},
        {"sort": "colour"},
        {"engaged_since": "yesterday"},
    ):
        _error(await client.get(f"{API}/contacts", params=bad, headers=alice.headers), 422, "validation_error")


@pytest.mark.parametrize(
    "sort",
    [
        "created",
        "-created",
        "updated",
        "-updated",
        "email",
        "-email",
        "name",
        "-name",
        "last_activity",
        "-last_activity",
        "-id",
    ],
)
async def test_every_sort_pages_through_every_contact_once(
    client: httpx.AsyncClient, sessionmaker: Any, sort: str
) -> None:
    import datetime as dt

    from edm.db.session import unit_of_work

    alice = await make_account(sessionmaker, "alice")
    names = ["Zed", None, "amy", "Bob", None, "Zed", "carl"]
    ids = [(await _contact(client, alice, f"u{i}@example.org", name=n))["id"] for i, n in enumerate(names)]
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    async with unit_of_work(sessionmaker) as session:
        for i, cid in enumerate(ids):
            row = await session.get(Contact, cid)
            assert row is not None
            row.created_at = t0 + dt.timedelta(days=i % 3)  # ties: the id breaks them
            row.last_opened_at = t0 + dt.timedelta(days=5 - i % 2) if i % 3 else None
    full = [
        c["id"]
        for c in (
            await client.get(f"{API}/contacts", params={"sort": sort, "limit": 200}, headers=alice.headers)
        ).json()["items"]
    ]
    assert sorted(full) == sorted(ids)
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"sort": sort, "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get(f"{API}/contacts", params=params, headers=alice.headers)
        assert r.status_code == 200, r.text
        seen += [c["id"] for c in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == full
    if sort == "created":
        assert full == sorted(ids, key=lambda i: (ids.index(i) % 3, i))
    if sort == "-id":
        assert full == sorted(ids, reverse=True)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-0", "1e400", '"x"', "{}", "null", "ünïcode", "a%_\\"])
async def test_odd_attribute_and_search_values_are_plain_text(
    client: httpx.AsyncClient, sessionmaker: Any, value: str
) -> None:
    alice = await make_account(sessionmaker, "alice")
    match = await _contact(client, alice, "m@example.org", name=f"x{value}y", custom_attributes={"k": value})
    await _contact(client, alice, "other@example.org", custom_attributes={"k": "plain"})
    for params in ({"attr.k": value}, {"q": value}):
        r = await client.get(f"{API}/contacts", params=params, headers=alice.headers)
        assert r.status_code == 200, r.text
        assert [c["id"] for c in r.json()["items"]] == [match["id"]], params
