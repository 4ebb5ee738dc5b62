"""`POST /api/v1/recipients/estimate` takes the recipient rule exactly as task creation does (one pydantic model,
`RecipientRule`, for both): the rule a task was created with, estimated, gives what generation then produces;
a bad rule is a 422 naming the field, with the same path in both places; and the OpenAPI document types it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from edm.models.suppressions import Suppression
from edm.tasks import generation
from tests import factories
from tests.helpers import Account, create_contact, create_tag, expect_error, make_account

API = "/api/v1"


@pytest.fixture
async def alice(sessionmaker: async_sessionmaker[AsyncSession]) -> Account:
    return await make_account(sessionmaker, "alice", credit=100)


async def _task_body(
    client: httpx.AsyncClient, alice: Account, sessionmaker: async_sessionmaker[AsyncSession]
) -> dict[str, Any]:
    """Customers (with an EU child) minus Blocked, over contacts in every state a rule meets; the body of a
    task that sends to them."""
    customers = await create_tag(client, alice, "Customers")
    eu = await create_tag(client, alice, "EU", parent_id=customers)
    blocked = await create_tag(client, alice, "Blocked")
    ids = {}
    for key, tags, extra in (
        ("a", [customers], {}),
        ("b", [eu], {}),
        ("c", [customers], {"status": "inactive"}),
        ("d", [eu], {}),
        ("e", [customers], {}),
        ("f", [customers, blocked], {}),
        ("g", [], {}),
    ):
        ids[key] = (await create_contact(client, alice, f"{key}@example.org", tag_ids=tags, **extra))["id"]
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(Contact).where(Contact.id == ids["d"]).values(unsubscribed_at=utc_now()))
        session.add(
            Suppression(
                scope="user",
                user_id=alice.id,
                owner_key=alice.id,
                kind="address",
                value="e@example.org",
                reason="manual",
            )
        )
        sender = await factories.sender(session, alice.id)
        template = await factories.template(session, alice.id)
    return {
        "name": "spring",
        "sender_id": sender,
        "templates": [{"template_id": template}],
        "recipient_rule": {"type": "tag_based", "include_tag_ids": [customers], "exclude_tag_ids": [blocked]},
    }


async def test_the_rule_a_task_was_created_with_estimates_what_generation_produces(
    client: httpx.AsyncClient, alice: Account, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = await _task_body(client, alice, sessionmaker)
    created = await client.post(f"{API}/tasks", json=body, headers=alice.headers)
    assert created.status_code == 201, created.text

    r = await client.post(
        f"{API}/recipients/estimate", json={"recipient_rule": body["recipient_rule"]}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    estimate = r.json()
    # a, b directly or through EU; c inactive, d unsubscribed, e on the suppression list; f blocked, g untagged
    assert (estimate["candidates"], estimate["sendable"]) == (5, 2)
    bare = await client.post(f"{API}/recipients/estimate", json=body["recipient_rule"], headers=alice.headers)
    assert bare.status_code == 200 and {k: v for k, v in bare.json().items() if k != "computed_at"} == {
        k: v for k, v in estimate.items() if k != "computed_at"
    }, "the bare rule, as before, counts the same"

    task_id = created.json()["id"]
    scheduled = await client.post(f"{API}/tasks/{task_id}/schedule", json={"now": True}, headers=alice.headers)
    assert scheduled.status_code == 200, scheduled.text
    async with unit_of_work(sessionmaker) as session:
        result = await generation.generate(session, task_id, now=utc_now())
    assert result is not None and result.sendable == estimate["sendable"]
    stats = (await client.get(f"{API}/tasks/{task_id}/stats", headers=alice.headers)).json()
    assert stats["recipients"] == estimate["candidates"]
    assert stats["excluded_by_reason"] == {reason: n for reason, n in estimate["excluded"].items() if n}
    assert stats["queued"] == estimate["sendable"] == estimate["credit_needed"]


@pytest.mark.parametrize(("rule", "field", "message"), [
    ({"type": "everyone"}, "recipient_rule.type", "Input should be 'specific', 'tag_based' or 'all_contacts'"),
    ({"include_tag_ids": [1]}, "recipient_rule.type", "Field required"),
    ({"type": "tag_based", "include_tag_ids": ["7"]}, "recipient_rule.include_tag_ids.0",
     "Input should be a valid integer"),
    ({"type": "specific", "contact_ids": [True]}, "recipient_rule.contact_ids.0", "Input should be a valid integer"),
    ({"type": "specific", "contact_ids": [2**63]}, "recipient_rule.contact_ids.0",
     "Input should be less than or equal to 9223372036854775807"),
    ({"type": "all_contacts", "colour": "red"}, "recipient_rule.colour", "unknown field"),
    ({"type": "tag_based", "include_tag_ids": []}, "recipient_rule.include_tag_ids", "must list at least one tag"),
])  # fmt: skip
async def test_a_bad_rule_is_422_with_its_field_path_in_the_estimate_and_in_task_creation(
    client: httpx.AsyncClient, alice: Account, rule: dict[str, Any], field: str, message: str
) -> None:
    for path, body in (
        (f"{API}/recipients/estimate", {"recipient_rule": rule}),
        (f"{API}/recipients/estimate", rule),
        (f"{API}/tasks", {"name": "spring", "recipient_rule": rule}),
    ):
        error = expect_error(await client.post(path, json=body, headers=alice.headers), 422, "validation_error")
        assert error["details"][0] == {"field": field, "message": message}, (path, body)


async def test_the_estimate_refuses_fields_beside_the_rule(client: httpx.AsyncClient, alice: Account) -> None:
    body = {"recipient_rule": {"type": "all_contacts"}, "name": "spring"}
    error = expect_error(
        await client.post(f"{API}/recipients/estimate", json=body, headers=alice.headers), 422, "validation_error"
    )
    assert error["details"] == [{"field": "name", "message": "unknown field"}]


async def test_openapi_types_the_estimate_body_with_the_task_rule_model(client: httpx.AsyncClient) -> None:
    doc = (await client.get(f"{API}/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    body = doc["paths"][f"{API}/recipients/estimate"]["post"]["requestBody"]["content"]["application/json"]
    estimate_request = schemas[body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert estimate_request["required"] == ["recipient_rule"]
    rule_ref = estimate_request["properties"]["recipient_rule"]["$ref"]
    assert rule_ref == "#/components/schemas/RecipientRule"
    task_rule = schemas["TaskCreate"]["properties"]["recipient_rule"]
    assert {"$ref": rule_ref} in task_rule["anyOf"], "task creation uses the very same model"
    rule = schemas["RecipientRule"]
    assert rule["properties"]["type"]["enum"] == ["specific", "tag_based", "all_contacts"]
    assert rule["properties"]["contact_ids"]["items"]["type"] == "integer"
    assert rule["additionalProperties"] is False
