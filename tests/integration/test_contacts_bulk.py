"""Bulk actions, CSV export, activity timeline and resubscribe through the real ASGI app and database
(docs/contacts.md): set-based bulk by ids and by filter, the expected_count guard, export quoting, the
formula guard, BOM, attributes and tags, the timeline of SubTasks and events, audited resubscribe."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from edm.db.session import unit_of_work
from edm.models.contacts import Contact, ContactTag
from edm.models.events import Event
from edm.models.suppressions import Suppression
from edm.models.system import AuditLog
from edm.models.tasks import SubTask
from edm.models.users import Role
from tests import factories
from tests.helpers import Account, make_account
from tests.helpers import create_contact as _contact
from tests.helpers import create_tag as _tag
from tests.helpers import expect_error as _error
from tests.helpers import run_cli as _edm

API = "/api/v1"


async def _bulk(client: httpx.AsyncClient, who: Account, **body: Any) -> httpx.Response:
    return await client.post(f"{API}/contacts/bulk", json=body, headers=who.headers)


async def _members(sessionmaker: Any, tag_id: int) -> set[int]:
    async with sessionmaker() as session:
        return set(await session.scalars(select(ContactTag.contact_id).where(ContactTag.tag_id == tag_id)))


# --------------------------------------------------------------------------------------------------------
# Bulk
# --------------------------------------------------------------------------------------------------------


async def test_bulk_by_ids_tags_untags_sets_status_and_deletes(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    ids = [(await _contact(client, alice, f"c{i}@example.org"))["id"] for i in range(4)]
    vip = await _tag(client, alice, "VIP")

    r = await _bulk(client, alice, action="tag", ids=ids[:3], tag_ids=[vip])
    assert r.status_code == 200, r.text
    assert r.json() == {"action": "tag", "matched": 3, "changed": 3}
    assert await _members(sessionmaker, vip) == set(ids[:3])
    assert (await _bulk(client, alice, action="tag", ids=ids[:3], tag_ids=[vip])).json()["changed"] == 0

    r = await _bulk(client, alice, action="untag", ids=[ids[0]], tag_ids=[vip])
    assert r.json()["changed"] == 1 and await _members(sessionmaker, vip) == set(ids[1:3])

    r = await _bulk(client, alice, action="set_status", ids=ids[:2], status="inactive")
    assert r.json() == {"action": "set_status", "matched": 2, "changed": 2}
    async with sessionmaker() as session:
        statuses = dict((await session.execute(select(Contact.id, Contact.status))).all())
    assert [statuses[i] for i in ids] == ["inactive", "inactive", "active", "active"]

    r = await _bulk(client, alice, action="delete", ids=ids[:2])
    assert r.json()["changed"] == 2
    async with sessionmaker() as session:
        assert set(await session.scalars(select(Contact.id))) == set(ids[2:])
        assert set(await session.scalars(select(ContactTag.contact_id))) == {ids[2]}


async def test_bulk_by_filter_is_set_based_over_the_list_filters(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    async with unit_of_work(sessionmaker) as session:
        news = await factories.tag(session, alice.id, "News")
        ids = await factories.contacts(session, alice.id, 300, prefix="n", tag_id=news)
        others = await factories.contacts(session, alice.id, 5, prefix="o")
    flag = await _tag(client, alice, "Flag")
    r = await _bulk(client, alice, action="tag", filter={"tag_ids": [news]}, tag_ids=[flag])
    assert r.json() == {"action": "tag", "matched": 300, "changed": 300}
    # Untag by a filter on the very tag being removed (the subquery must not correlate with the DELETE).
    r = await _bulk(client, alice, action="untag", filter={"tag_ids": [flag], "q": "n1"}, tag_ids=[flag])
    assert r.json()["changed"] == 111  # n1, n10-n19, n100-n199
    assert len(await _members(sessionmaker, flag)) == 189
    r = await _bulk(client, alice, action="set_status", filter={"untagged": True}, status="archived")
    assert r.json()["changed"] == 5
    async with sessionmaker() as session:
        archived = set(await session.scalars(select(Contact.id).where(Contact.status == "archived")))
    assert archived == set(others)
    # Any action with expected_count (the console's "all N matching", confirmed) is refused when the count moved.
    body = _error(
        await _bulk(client, alice, action="tag", filter={"untagged": True}, tag_ids=[flag], expected_count=4),
        409,
        "conflict",
    )
    assert body["current_count"] == 5 and len(await _members(sessionmaker, flag)) == 189
    r = await _bulk(client, alice, action="set_status", filter={"untagged": True}, status="archived", expected_count=5)
    assert r.json()["matched"] == 5

    # Delete by filter: the count the user saw is required and must still be the count.
    _error(await _bulk(client, alice, action="delete", filter={"status": ["archived"]}), 422, "validation_error")
    body = _error(
        await _bulk(client, alice, action="delete", filter={"status": ["archived"]}, expected_count=4), 409, "conflict"
    )
    assert body["current_count"] == 5
    r = await _bulk(client, alice, action="delete", filter={"status": ["archived"]}, expected_count=5)
    assert r.json() == {"action": "delete", "matched": 5, "changed": 5}
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Contact)) == 300
    assert len(ids) == 300


async def test_bulk_refuses_bad_requests_and_other_users_ids(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    mine = await _contact(client, alice, "a@example.org")
    theirs = await _contact(client, bob, "b@example.org")
    tag = await _tag(client, alice, "T")
    bob_tag = await _tag(client, bob, "T")
    for body, field in [
        ({"action": "tag", "ids": [mine["id"]], "tag_ids": []}, "tag_ids"),
        ({"action": "set_status", "ids": [mine["id"]]}, "status"),
        ({"action": "tag", "ids": [theirs["id"]], "tag_ids": [tag]}, "ids"),
        ({"action": "tag", "ids": [mine["id"]], "tag_ids": [bob_tag]}, "tag_ids"),
        ({"action": "delete"}, "ids"),
        ({"action": "delete", "ids": [mine["id"]], "filter": {}}, "ids"),
        ({"action": "explode", "ids": [mine["id"]]}, "action"),
        ({"action": "delete", "ids": list(range(1, 10_002))}, "ids"),
        ({"action": "delete", "filter": {"attributes": {"bad-key": "x"}}, "expected_count": 0}, "attr.bad-key"),
        ({"action": "delete", "filter": {"nope": 1}, "expected_count": 0}, "filter.nope"),
    ]:
        error = _error(await _bulk(client, alice, **body), 422, "validation_error")
        assert field in [d["field"] for d in error["details"]], (body, error)
    # Bob's filter never reaches Alice's contacts.
    r = await _bulk(client, bob, action="delete", filter={}, expected_count=1)
    assert r.json()["changed"] == 1
    async with sessionmaker() as session:
        assert set(await session.scalars(select(Contact.id))) == {mine["id"]}


@pytest.mark.parametrize("kind", ["read_token", "read_only_role"])
async def test_read_only_callers_cannot_run_bulk_actions(
    client: httpx.AsyncClient, sessionmaker: Any, kind: str
) -> None:
    alice = await make_account(sessionmaker, "alice")
    reader = (
        await make_account(sessionmaker, "alice2", scope="read")
        if kind == "read_token"
        else await make_account(sessionmaker, "viewer", role=Role.READ_ONLY)
    )
    await _contact(client, alice, "a@example.org")
    _error(await _bulk(client, reader, action="delete", filter={}, expected_count=0), 403, "forbidden")
    r = await client.get(f"{API}/contacts/export", headers=reader.headers)
    assert r.status_code == 200  # export is a read


# --------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------


def _rows(r: httpx.Response) -> list[dict[str, str]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))


async def test_export_fields_tags_attributes_quoting_and_guard(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    parent = await _tag(client, alice, "Customers")
    child = await _tag(client, alice, "EU", parent_id=parent)
    vip = await _tag(client, alice, "VIP")
    ann = await _contact(
        client,
        alice,
        "ann@example.org",
        name='Ann "the, first"\nLee',
        company="=HYPERLINK(1)",
        custom_attributes={"city": "Oslo", "score": 4.5, "vip": True},
        tag_ids=[child, vip],
    )
    await _contact(client, alice, "ben@example.org", first_name="-Ben", custom_attributes={"plan": "+pro"})
    r = await client.get(f"{API}/contacts/export", headers=alice.headers)
    assert not r.content.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in r.content and b'"Ann ""the, first""\nLee"' in r.content  # RFC 4180 quoting
    rows = _rows(r)
    assert list(rows[0])[-4:] == ["attr.city", "attr.plan", "attr.score", "attr.vip"]
    first, second = rows
    assert first["id"] == str(ann["id"]) and first["email"] == "ann@example.org"
    assert first["name"] == 'Ann "the, first"\nLee' and first["company"] == "'=HYPERLINK(1)"
    assert first["tags"] == "Customers/EU,VIP" and first["status"] == "active"
    assert first["attr.city"] == "Oslo" and first["attr.score"] == "4.5" and first["attr.vip"] == "true"
    assert first["attr.plan"] == "" and first["suppressed"] == "false" and first["created_at"]
    assert second["first_name"] == "'-Ben" and second["attr.plan"] == "'+pro" and second["tags"] == ""


async def test_export_filters_selection_bom_suppression_and_empty(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    a = await _contact(client, alice, "a@example.org")
    b = await _contact(client, alice, "b@blocked.example")
    await _contact(client, bob, "bob@example.org")
    r = await client.post(f"{API}/suppressions", json={"domain": "blocked.example"}, headers=alice.headers)
    assert r.status_code == 201, r.text

    r = await client.get(f"{API}/contacts/export", params={"bom": "true"}, headers=alice.headers)
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = {row["email"]: row for row in _rows(r)}
    assert set(rows) == {"a@example.org", "b@blocked.example"}
    assert rows["b@blocked.example"]["suppressed"] == "true"
    assert rows["b@blocked.example"]["on_suppression_list"] == "true"
    assert rows["a@example.org"]["suppressed"] == "false"

    rows_sel = _rows(await client.get(f"{API}/contacts/export", params={"id": [b["id"]]}, headers=alice.headers))
    assert [row["email"] for row in rows_sel] == ["b@blocked.example"]
    rows_q = _rows(await client.get(f"{API}/contacts/export", params={"suppressed": "false"}, headers=alice.headers))
    assert [row["id"] for row in rows_q] == [str(a["id"])]

    r = await client.get(f"{API}/contacts/export", params={"q": "nobody"}, headers=alice.headers)
    assert r.content.decode().splitlines()[0].startswith("id,email,")
    assert len(r.content.decode().splitlines()) == 1  # header only
    bob_rows = _rows(await client.get(f"{API}/contacts/export", headers=bob.headers))
    assert [row["email"] for row in bob_rows] == ["bob@example.org"]
    # Another user's ids are not found.
    r = await client.get(f"{API}/contacts/export", params={"id": [a["id"]]}, headers=bob.headers)
    _error(r, 422, "validation_error")


async def test_export_streams_in_batches(
    client: httpx.AsyncClient, sessionmaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edm.contacts import export

    monkeypatch.setattr(export, "BATCH", 7)
    alice = await make_account(sessionmaker, "alice")
    async with unit_of_work(sessionmaker) as session:
        ids = await factories.contacts(session, alice.id, 50)
    async with client.stream("GET", f"{API}/contacts/export", headers=alice.headers) as r:
        chunks = [chunk async for chunk in r.aiter_raw()]
    text = b"".join(chunks).decode()
    assert [int(row["id"]) for row in csv.DictReader(io.StringIO(text, newline=""))] == ids


# --------------------------------------------------------------------------------------------------------
# Activity, suppression state and resubscribe
# --------------------------------------------------------------------------------------------------------


async def _sent_to(sessionmaker: Any, user_id: int, contact_id: int, *, name: str, sent: dt.datetime) -> int:
    async with unit_of_work(sessionmaker) as session:
        sender = await factories.sender(session, user_id, local=f"s-{name}")
        template = await factories.template(session, user_id, name=name)
        task_id = await factories.task(
            session,
            user_id,
            sender_id=sender,
            template_ids=[template],
            name=name,
            rule={"type": "specific", "contact_ids": [contact_id]},
            schedule=False,
        )
        sub = SubTask(
            task_id=task_id,
            user_id=user_id,
            contact_id=contact_id,
            recipient_email="x@example.org",
            seq=1,
            send_state="sent",
            sent_at=sent,
            delivery_state="delivered",
            subject_sent=f"Hi {name}",
        )
        session.add(sub)
        await session.flush()
        session.add(
            Event(
                source="tracking",
                dedupe_key=f"o-{sub.id}",
                event_type="opened",
                occurred_at=sent + dt.timedelta(hours=1),
                subtask_id=sub.id,
                task_id=task_id,
                user_id=user_id,
                match_status="matched",
                details={"machine": False},
                raw={},
            )
        )
        return sub.id


async def test_activity_is_newest_first_and_paginated(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    ann = await _contact(client, alice, "ann@example.org")
    t0 = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
    first = await _sent_to(sessionmaker, alice.id, ann["id"], name="march", sent=t0)
    second = await _sent_to(sessionmaker, alice.id, ann["id"], name="april", sent=t0 + dt.timedelta(days=31))
    url = f"{API}/contacts/{ann['id']}/activity"
    seen: list[tuple[str, int | None, str | None]] = []
    cursor = None
    for _ in range(3):
        r = await client.get(url, params={"limit": 3, **({"cursor": cursor} if cursor else {})}, headers=alice.headers)
        assert r.status_code == 200, r.text
        seen += [(i["kind"], i["subtask_id"], i["task_name"]) for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [
        ("event", second, "april"),
        ("send", second, "april"),
        ("event", first, "march"),
        ("send", first, "march"),
    ]
    body = (await client.get(url, headers=alice.headers)).json()["items"]
    assert body[1]["send_state"] == "sent" and body[1]["delivery_state"] == "delivered"
    assert body[1]["subject"] == "Hi april" and body[0]["event_type"] == "opened"
    _error(await client.get(url, headers=bob.headers), 404, "not_found")
    _error(await client.get(url, params={"cursor": "junk"}, headers=alice.headers), 422, "validation_error")


async def test_detail_shows_suppression_state_and_resubscribe_clears_it(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "viewer", role=Role.READ_ONLY)
    ann = await _contact(client, alice, "ann@example.org")
    url = f"{API}/contacts/{ann['id']}"
    assert (await client.get(url, headers=alice.headers)).json()["suppression"] == {
        "blocked": False,
        "contact_reasons": [],
        "entries": [],
    }
    _error(await client.post(f"{url}/resubscribe", json={"reason": "asked"}, headers=alice.headers), 409, "conflict")

    async with unit_of_work(sessionmaker) as session:
        contact = await session.get(Contact, ann["id"])
        assert contact is not None
        contact.unsubscribed_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        session.add(
            Suppression(
                scope="user",
                user_id=alice.id,
                owner_key=alice.id,
                kind="address",
                value="ann@example.org",
                reason="unsubscribed",
            )
        )
    state = (await client.get(url, headers=alice.headers)).json()["suppression"]
    assert state["blocked"] and state["contact_reasons"] == ["unsubscribed"]
    assert [(e["scope"], e["reason"]) for e in state["entries"]] == [("user", "unsubscribed")]

    _error(await client.post(f"{url}/resubscribe", json={}, headers=alice.headers), 422, "validation_error")
    _error(
        await client.post(f"{url}/resubscribe", json={"reason": " "}, headers=alice.headers), 422, "validation_error"
    )
    _error(await client.post(f"{url}/resubscribe", json={"reason": "x"}, headers=bob.headers), 404, "not_found")
    _error(await client.post(f"{url}/resubscribe", json={"reason": "x"}, headers=reader.headers), 403, "forbidden")
    r = await client.post(f"{url}/resubscribe", json={"reason": "asked us by phone"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["unsubscribed_at"] is None and r.json()["suppression"]["blocked"] is False
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0
        audit = (await session.scalars(select(AuditLog).where(AuditLog.action == "contact.resubscribe"))).one()
    assert audit.actor_user_id == alice.id and audit.details["reason"] == "asked us by phone"


# --------------------------------------------------------------------------------------------------------
# The CLI (a real `edm` process on its own SQLite database)
# --------------------------------------------------------------------------------------------------------


def test_contact_export_through_the_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert _edm(url, "db", "upgrade").returncode == 0
    assert (
        _edm(
            url,
            "user",
            "create",
            "--username",
            "ann",
            "--email",
            "ann@example.com",
            "--password-stdin",
            stdin="a long password\n",
        ).returncode
        == 0
    )
    added = _edm(url, "contact", "add", "--user", "ann", "--tag", "Customers/EU", "a@example.org", "b@example.org")
    assert added.returncode == 0, added.stderr
    assert _edm(url, "contact", "add", "--user", "ann", "c@example.org").returncode == 0

    out = tmp_path / "eu.csv"
    result = _edm(url, "contact", "export", "--user", "ann", "--tag", "Customers/EU", "--out", str(out), "--bom")
    assert result.returncode == 0, result.stderr
    text = out.read_bytes().decode("utf-8")
    assert text.startswith("\ufeffid,email,")
    rows = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline="")))
    assert [(r["email"], r["tags"], r["source"]) for r in rows] == [
        ("a@example.org", "Customers/EU", "manual"),
        ("b@example.org", "Customers/EU", "manual"),
    ]
    everyone = _edm(url, "contact", "export", "--user", "ann")
    assert everyone.returncode == 0 and len(everyone.stdout.strip().splitlines()) == 4

    for args, message in [(("--tag", "Nope"), "no tag named"), (("--status", "gone"), "status"), ((), "not found")]:
        user = "nobody" if not args else "ann"
        bad = _edm(url, "contact", "export", "--user", user, *args)
        assert bad.returncode == 2, (bad.stdout, bad.stderr)
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in bad.stderr, bad.stderr
