"""Templates, preview, the variable catalogue and senders through the real ASGI app (docs/templates.md)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.models.tasks import Task, TaskTemplate
from edm.models.users import Role
from tests.helpers import Account, make_account
from tests.helpers import expect_error as _error

API = "/api/v1"
HTML = "<html><body><p>Hello {{ contact.first_name | default('there', true) }}</p></body></html>"


async def _template(client: httpx.AsyncClient, who: Account, name: str = "Welcome", **fields: Any) -> dict[str, Any]:
    body = {"name": name, "subject": "Hi {{ contact.first_name }}", "html": HTML, **fields}
    r = await client.post(f"{API}/templates", json=body, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _sender(client: httpx.AsyncClient, who: Account, local_part: str, **fields: Any) -> dict[str, Any]:
    r = await client.post(f"{API}/senders", json={"local_part": local_part, **fields}, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


# --------------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------------


async def test_template_crud(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    created = await _template(client, alice, preheader="Spring news", description="first")
    assert created["html"] == HTML and created["inline_css"] is True and created["text"] is None

    listed = (await client.get(f"{API}/templates?include_total=true", headers=alice.headers)).json()
    assert listed["total"] == 1 and "html" not in listed["items"][0]
    r = await client.patch(
        f"{API}/templates/{created['id']}",
        json={"subject": "New {{ name }}", "inline_css": False},
        headers=alice.headers,
    )
    assert r.status_code == 200 and (r.json()["subject"], r.json()["inline_css"]) == ("New {{ name }}", False)
    assert r.json()["html"] == HTML

    assert (await client.delete(f"{API}/templates/{created['id']}", headers=alice.headers)).status_code == 204
    _error(await client.get(f"{API}/templates/{created['id']}", headers=alice.headers), 404, "not_found")


async def test_syntax_errors_are_422_with_the_line(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    body = {"name": "Broken", "subject": "ok", "html": "<p>line 1</p>\n<p>{% if x %}never closed</p>\n"}
    error = _error(
        await client.post(f"{API}/templates", json=body, headers=alice.headers), 422, "template_syntax_error"
    )
    assert error["details"][0]["field"] == "html" and error["details"][0]["line"] is not None

    created = await _template(client, alice)
    r = await client.patch(f"{API}/templates/{created['id']}", json={"subject": "{{ oops"}, headers=alice.headers)
    assert _error(r, 422, "template_syntax_error")["details"][0]["field"] == "subject"
    unchanged = (await client.get(f"{API}/templates/{created['id']}", headers=alice.headers)).json()
    assert unchanged["subject"] == created["subject"]


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "", "subject": "s", "html": "h"}, "name"),
    ({"name": "n", "subject": "", "html": "h"}, "subject"),
    ({"name": "n", "subject": "s" * 999, "html": "h"}, "subject"),
    ({"name": "n", "subject": "s", "html": "   "}, "html"),
    ({"name": "n", "subject": "s", "html": "h", "preheader": "p" * 256}, "preheader"),
    ({"name": "n", "subject": "s", "html": "h", "engine": "mustache"}, "engine"),
    ({"name": "n", "subject": "s"}, "html"),
])  # fmt: skip
async def test_bad_template_bodies(
    client: httpx.AsyncClient, sessionmaker: Any, body: dict[str, Any], field: str
) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{API}/templates", json=body, headers=alice.headers)
    assert field in [d["field"] for d in _error(r, 422, "validation_error")["details"]]


async def test_names_unique_per_user_and_duplicate(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    created = await _template(client, alice)
    r = await client.post(
        f"{API}/templates", json={"name": "Welcome", "subject": "s", "html": "h"}, headers=alice.headers
    )
    assert _error(r, 409, "conflict")["details"][0]["field"] == "name"
    await _template(client, bob)  # another user may use the same name

    url = f"{API}/templates/{created['id']}/duplicate"
    first = (await client.post(url, headers=alice.headers)).json()
    second = (await client.post(url, headers=alice.headers)).json()
    named = (await client.post(url, json={"name": "Mine"}, headers=alice.headers)).json()
    assert (first["name"], second["name"], named["name"]) == ("Welcome (copy)", "Welcome (copy 2)", "Mine")
    assert first["html"] == HTML and first["id"] != created["id"]
    _error(await client.post(url, json={"name": "Mine"}, headers=alice.headers), 409, "conflict")


async def test_delete_refused_while_a_draft_task_uses_it(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    used = await _template(client, alice, "Used")
    past = await _template(client, alice, "Past")
    async with unit_of_work(sessionmaker) as session:
        draft = Task(user_id=alice.id, name="Spring", status="draft")
        done = Task(user_id=alice.id, name="Winter", status="completed")
        session.add_all([draft, done])
        await session.flush()
        session.add_all(
            [
                TaskTemplate(task_id=draft.id, template_id=used["id"]),
                TaskTemplate(task_id=done.id, template_id=past["id"], subject="s", html="h"),
            ]
        )
    body = _error(await client.delete(f"{API}/templates/{used['id']}", headers=alice.headers), 409, "in_use")
    assert body["tasks"] == [{"id": draft.id, "name": "Spring", "status": "draft"}]
    # A task past generation keeps its own snapshot: the template may go.
    assert (await client.delete(f"{API}/templates/{past['id']}", headers=alice.headers)).status_code == 204
    async with sessionmaker() as session:
        snapshot = await session.scalar(select(TaskTemplate).where(TaskTemplate.task_id == done.id))
        assert snapshot is not None and snapshot.template_id is None and snapshot.html == "h"


async def test_preview_unsaved_with_sample_data(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    body = {
        "subject": "Hi {{ contact.first_name }}",
        "preheader": "Read me",
        "html": '<body><a href="https://shop.example/x">Shop</a> {{ foo }} {{ contact.nope }}</body>',
    }
    r = await client.post(f"{API}/templates/preview", json=body, headers=alice.headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["subject"] == "Hi Jane" and out["sample_data"] is True and out["preheader"] == "Read me"
    assert "https://shop.example/x" in out["links"]
    assert set(out["unknown_variables"]) == {"foo", "contact.nope"}
    assert "contact.first_name" in out["variables"]
    assert "no unsubscribe link: a footer will be appended" in out["warnings"]
    assert "Unsubscribe" in out["html"] and "Shop (https://shop.example/x)" in out["text"]

    with_link = {**body, "html": '<a href="{{ unsubscribe_url }}">Leave</a>'}
    out = (await client.post(f"{API}/templates/preview", json=with_link, headers=alice.headers)).json()
    assert not any("unsubscribe" in w for w in out["warnings"]) and out["unknown_variables"] == []

    error = _error(
        await client.post(f"{API}/templates/preview", json={"subject": "{% if %}", "html": "x"}, headers=alice.headers),
        422,
        "template_syntax_error",
    )
    assert error["details"][0]["field"] == "subject"


async def test_preview_saved_with_a_contact(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "reader", scope="read")
    template = await _template(client, alice, html="<p>{{ contact.attributes.city }} / {{ name }}</p>")
    r = await client.post(
        f"{API}/contacts",
        json={"email": "ann@example.org", "first_name": "Ann", "name": "Ann L", "custom_attributes": {"city": "Oslo"}},
        headers=alice.headers,
    )
    contact_id = r.json()["id"]
    bob_contact = (await client.post(f"{API}/contacts", json={"email": "b@example.org"}, headers=bob.headers)).json()
    await _sender(client, alice, "news", display_name="Shop")

    url = f"{API}/templates/{template['id']}/preview"
    out = (await client.post(url, json={"contact_id": contact_id}, headers=alice.headers)).json()
    assert out["subject"] == "Hi Ann" and "Oslo / Ann L" in out["html"] and out["sample_data"] is False
    assert out["unknown_variables"] == []
    sample = (await client.post(url, headers=alice.headers)).json()
    assert sample["subject"] == "Hi Jane"
    error = _error(
        await client.post(url, json={"contact_id": bob_contact["id"]}, headers=alice.headers), 422, "validation_error"
    )
    assert error["details"][0]["field"] == "contact_id"
    _error(await client.post(url, headers=bob.headers), 404, "not_found")
    assert (
        await client.post(f"{API}/templates/preview", json={"subject": "s", "html": "h"}, headers=reader.headers)
    ).status_code == 200


async def test_template_variables(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    await client.post(
        f"{API}/contacts", json={"email": "a@example.org", "custom_attributes": {"city": "x"}}, headers=alice.headers
    )
    await client.post(
        f"{API}/contacts",
        json={"email": "b@example.org", "custom_attributes": {"plan": 1, "city": "y"}},
        headers=alice.headers,
    )
    await client.post(
        f"{API}/contacts", json={"email": "c@example.org", "custom_attributes": {"secret": 1}}, headers=bob.headers
    )
    out = (await client.get(f"{API}/template-variables", headers=alice.headers)).json()
    names = {v["name"] for v in out["variables"]}
    assert {"contact.first_name", "unsubscribe_url", "sender.email", "org.postal_address", "now"} <= names
    assert [a["key"] for a in out["custom_attributes"]] == ["city", "plan"]


async def test_templates_isolation_and_roles(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "reader", role=Role.READ_ONLY)
    template = await _template(client, alice)
    url = f"{API}/templates/{template['id']}"
    _error(await client.get(url, headers=bob.headers), 404, "not_found")
    _error(await client.patch(url, json={"name": "x"}, headers=bob.headers), 404, "not_found")
    _error(await client.delete(url, headers=bob.headers), 404, "not_found")
    _error(await client.post(f"{url}/duplicate", headers=bob.headers), 404, "not_found")
    assert (await client.get(f"{API}/templates", headers=bob.headers)).json()["items"] == []
    _error(
        await client.post(f"{API}/templates", json={"name": "n", "subject": "s", "html": "h"}, headers=reader.headers),
        403,
        "forbidden",
    )
    _error(await client.patch(url, json={"name": "x"}, headers=reader.headers), 403, "forbidden")


# --------------------------------------------------------------------------------------------------------
# Senders
# --------------------------------------------------------------------------------------------------------


async def test_sender_crud(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    created = await _sender(client, alice, "News.Letter", display_name="Shop", reply_to=" help@Example.org ")
    assert (created["local_part"], created["reply_to"], created["archived_at"]) == (
        "News.Letter",
        "help@Example.org",
        None,
    )
    r = await client.patch(f"{API}/senders/{created['id']}", json={"display_name": "Shop News"}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["display_name"] == "Shop News"
    page = (await client.get(f"{API}/senders?include_total=true", headers=alice.headers)).json()
    assert [s["id"] for s in page["items"]] == [created["id"]] and page["total"] == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"local_part": ".news"}, "local_part"),
    ({"local_part": "news."}, "local_part"),
    ({"local_part": "ne..ws"}, "local_part"),
    ({"local_part": "news+x"}, "local_part"),
    ({"local_part": "x" * 65}, "local_part"),
    ({"local_part": ""}, "local_part"),
    ({"local_part": "ok", "reply_to": "not an address"}, "reply_to"),
    ({"local_part": "ok", "display_name": "d" * 201}, "display_name"),
    ({"local_part": "ok", "domain": "example.com"}, "domain"),
])  # fmt: skip
async def test_bad_sender_bodies(
    client: httpx.AsyncClient, sessionmaker: Any, body: dict[str, Any], field: str
) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{API}/senders", json=body, headers=alice.headers)
    assert field in [d["field"] for d in _error(r, 422, "validation_error")["details"]]


async def test_local_part_unique_across_users_case_insensitively(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    await _sender(client, alice, "News")
    r = await client.post(f"{API}/senders", json={"local_part": "news"}, headers=bob.headers)
    assert _error(r, 409, "conflict")["details"][0]["field"] == "local_part"
    other = await _sender(client, alice, "promo")
    r = await client.patch(f"{API}/senders/{other['id']}", json={"local_part": "NEWS"}, headers=alice.headers)
    _error(r, 409, "conflict")


async def test_delete_archives_unless_an_unfinished_task_uses_it(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    busy = await _sender(client, alice, "busy")
    old = await _sender(client, alice, "old")
    async with unit_of_work(sessionmaker) as session:
        session.add(Task(user_id=alice.id, name="Spring", status="paused", sender_id=busy["id"]))
        session.add(Task(user_id=alice.id, name="Winter", status="completed", sender_id=old["id"]))
    body = _error(await client.delete(f"{API}/senders/{busy['id']}", headers=alice.headers), 409, "in_use")
    assert [t["name"] for t in body["tasks"]] == ["Spring"]

    assert (await client.delete(f"{API}/senders/{old['id']}", headers=alice.headers)).status_code == 204
    listed = (await client.get(f"{API}/senders", headers=alice.headers)).json()["items"]
    assert [s["id"] for s in listed] == [busy["id"]]
    everything = (await client.get(f"{API}/senders?include_archived=true", headers=alice.headers)).json()["items"]
    assert {s["id"] for s in everything} == {busy["id"], old["id"]}
    archived = (await client.get(f"{API}/senders/{old['id']}", headers=alice.headers)).json()
    assert archived["archived_at"] is not None
    _error(
        await client.patch(f"{API}/senders/{old['id']}", json={"display_name": "x"}, headers=alice.headers),
        409,
        "conflict",
    )
    # Its owner may bring the archived local part back; nobody else may take it.
    revived = await _sender(client, alice, "OLD", display_name="Again")
    assert (revived["id"], revived["local_part"], revived["archived_at"]) == (old["id"], "OLD", None)


async def test_senders_isolation_and_roles(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "reader", scope="read")
    sender = await _sender(client, alice, "news")
    url = f"{API}/senders/{sender['id']}"
    _error(await client.get(url, headers=bob.headers), 404, "not_found")
    _error(await client.patch(url, json={"display_name": "x"}, headers=bob.headers), 404, "not_found")
    _error(await client.delete(url, headers=bob.headers), 404, "not_found")
    assert (await client.get(f"{API}/senders", headers=bob.headers)).json()["items"] == []
    _error(await client.post(f"{API}/senders", json={"local_part": "r"}, headers=reader.headers), 403, "forbidden")
    _error(await client.delete(url, headers=reader.headers), 403, "forbidden")
