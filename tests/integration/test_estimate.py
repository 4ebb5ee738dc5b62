"""`POST /api/v1/recipients/estimate` (docs/tasks.md): rule kinds, parent tags standing for their children on
both sides, exclusion reasons in order, ids of other users refused, and the credit figures."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from edm.models.suppressions import Suppression
from tests.helpers import Account, make_account

API = "/api/v1"
NO_EXCLUSIONS = {
    "invalid_address": 0,
    "contact_inactive": 0,
    "unsubscribed": 0,
    "hard_bounced": 0,
    "complained": 0,
    "suppression_list": 0,
}


async def _post(client: httpx.AsyncClient, who: Account, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"{API}{path}", json=body, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _estimate(client: httpx.AsyncClient, who: Account, rule: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"{API}/recipients/estimate", json=rule, headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
async def world(client: httpx.AsyncClient, sessionmaker: Any) -> dict[str, Any]:
    """Alice (credit 100) with a Customers/EU tree, a Blocked tag and contacts in every exclusion state."""
    alice = await make_account(sessionmaker, "alice", credit=100)
    bob = await make_account(sessionmaker, "bob")
    customers = (await _post(client, alice, "/tags", {"name": "Customers"}))["id"]
    eu = (await _post(client, alice, "/tags", {"name": "EU", "parent_id": customers}))["id"]
    blocked = (await _post(client, alice, "/tags", {"name": "Blocked"}))["id"]
    people = {
        "a": ([eu], {}), "b": ([customers], {}), "c": ([customers], {"status": "inactive"}),
        "d": ([eu], {}), "e": ([customers], {}), "f": ([customers, blocked], {}), "g": ([], {}),
        "h": ([eu], {}),
    }  # fmt: skip
    ids = {}
    for key, (tags, extra) in people.items():
        domain = "blocked.example" if key == "g" else "example.org"
        body = {"email": f"{key}@{domain}", "tag_ids": tags, **extra}
        ids[key] = (await _post(client, alice, "/contacts", body))["id"]
    now = utc_now()
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(Contact).where(Contact.id == ids["d"]).values(unsubscribed_at=now))
        session.add_all(
            [
                Suppression(
                    scope="user",
                    user_id=alice.id,
                    owner_key=alice.id,
                    kind="address",
                    value="e@example.org",
                    reason="manual",
                ),
                Suppression(
                    scope="global", user_id=None, owner_key=0, kind="domain", value="blocked.example", reason="manual"
                ),
                Suppression(
                    scope="user",
                    user_id=alice.id,
                    owner_key=alice.id,
                    kind="address",
                    value="h@example.org",
                    reason="manual",
                    expires_at=now - dt.timedelta(days=1),
                ),  # expired: no longer applies
                Suppression(
                    scope="user",
                    user_id=bob.id,
                    owner_key=bob.id,
                    kind="address",
                    value="a@example.org",
                    reason="manual",
                ),  # another user's list does not apply to alice
            ]
        )
    bob_contact = (await _post(client, bob, "/contacts", {"email": "z@example.org"}))["id"]
    return {
        "alice": alice,
        "bob": bob,
        "ids": ids,
        "bob_contact": bob_contact,
        "customers": customers,
        "eu": eu,
        "blocked": blocked,
    }


async def test_tag_based_parent_includes_children_and_excludes(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    rule = {"type": "tag_based", "include_tag_ids": [world["customers"]], "exclude_tag_ids": [world["blocked"]]}
    out = await _estimate(client, world["alice"], rule)
    # a, d, h via the EU child; b, c, e directly; f excluded by tag.
    assert out["candidates"] == 6 and out["sendable"] == 3  # a, b, h
    assert out["excluded"] == {**NO_EXCLUSIONS, "contact_inactive": 1, "unsubscribed": 1, "suppression_list": 1}
    assert out["credit_needed"] == 3 and out["credit_balance"] == 100
    assert dt.datetime.fromisoformat(out["computed_at"]) <= utc_now()

    child_only = await _estimate(client, world["alice"], {"type": "tag_based", "include_tag_ids": [world["eu"]]})
    assert (child_only["candidates"], child_only["sendable"]) == (3, 2)


async def test_all_contacts_and_excluding_a_parent(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    out = await _estimate(client, world["alice"], {"type": "all_contacts"})
    assert out["candidates"] == 8 and out["sendable"] == 4  # a, b, f, h
    assert out["excluded"]["suppression_list"] == 2  # e by address, g by global domain
    # Excluding the parent excludes its children's members too: only g remains.
    out = await _estimate(client, world["alice"], {"type": "all_contacts", "exclude_tag_ids": [world["customers"]]})
    assert out["candidates"] == 1 and out["sendable"] == 0 and out["excluded"]["suppression_list"] == 1


async def test_specific_ids(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    ids = world["ids"]
    out = await _estimate(client, world["alice"], {"type": "specific", "contact_ids": [ids["a"], ids["c"]]})
    assert (out["candidates"], out["sendable"], out["excluded"]["contact_inactive"]) == (2, 1, 1)

    rule = {"type": "specific", "contact_ids": [ids["a"], world["bob_contact"], 2**63 - 1]}
    r = await client.post(f"{API}/recipients/estimate", json=rule, headers=world["alice"].headers)
    assert r.status_code == 422, r.text
    detail = r.json()["error"]["details"][0]
    assert detail["field"] == "recipient_rule.contact_ids"
    assert str(world["bob_contact"]) in detail["message"] and str(ids["a"]) not in detail["message"]


@pytest.mark.parametrize("rule", [
    {"type": "everyone"},
    {"type": "tag_based", "include_tag_ids": []},
    {"type": "specific", "contact_ids": []},
    {"type": "specific", "contact_ids": ["1"]},
    {"type": "all_contacts", "colour": "red"},
    {"type": "specific", "contact_ids": [10**30]},
])  # fmt: skip
async def test_bad_rules_are_422(client: httpx.AsyncClient, world: dict[str, Any], rule: dict[str, Any]) -> None:
    r = await client.post(f"{API}/recipients/estimate", json=rule, headers=world["alice"].headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"].startswith("recipient_rule")


async def test_other_users_tags_and_roles(client: httpx.AsyncClient, world: dict[str, Any], sessionmaker: Any) -> None:
    bob = world["bob"]
    r = await client.post(
        f"{API}/recipients/estimate",
        json={"type": "tag_based", "include_tag_ids": [world["customers"]]},
        headers=bob.headers,
    )
    assert r.status_code == 422 and str(world["customers"]) in r.json()["error"]["message"]
    assert (await _estimate(client, bob, {"type": "all_contacts"}))["candidates"] == 1
    reader = await make_account(sessionmaker, "reader", scope="read")
    assert (await _estimate(client, reader, {"type": "all_contacts"}))["candidates"] == 0
    r = await client.post(f"{API}/recipients/estimate", json=[1, 2], headers=bob.headers)
    assert r.status_code == 422
