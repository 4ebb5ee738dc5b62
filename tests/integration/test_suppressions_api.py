"""Suppression lists through the real ASGI app and database (docs/suppression.md, docs/api.md): a user's own list and
the admins' global list, CRUD with normalization, isolation, read-only refusals, CSV import with bad rows, CSV
export (streamed, guarded) and its round trip, the check endpoint, audited removal that clears the contact
flag, the lists' effect at generation and at claim time (domains, expiry), and the `edm suppression` command."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.dispatch import queue
from edm.models.contacts import Contact
from edm.models.suppressions import Suppression
from edm.models.system import AuditLog
from edm.models.tasks import SubTask
from edm.models.users import Role
from edm.tasks import generation
from edm.users.service import create_token
from tests import factories
from tests.helpers import Account, make_account, settings_for
from tests.helpers import expect_error as _error
from tests.helpers import run_cli as edm

API = "/api/v1"
OWN = f"{API}/suppressions"
GLOBAL = f"{API}/admin/suppressions"


async def _add(client: httpx.AsyncClient, who: Account, url: str = OWN, **body: Any) -> dict[str, Any]:
    r = await client.post(url, json=body, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _values(client: httpx.AsyncClient, who: Account, url: str = OWN, **params: Any) -> list[str]:
    r = await client.get(url, params={"limit": 200, **params}, headers=who.headers)
    assert r.status_code == 200, r.text
    return [e["value"] for e in r.json()["items"]]


def _upload(text: str | bytes, name: str = "list.csv") -> dict[str, Any]:
    data = text.encode() if isinstance(text, str) else text
    return {"files": {"file": (name, data, "text/csv")}}


def _later(**delta: float) -> str:
    return (utc_now() + dt.timedelta(**delta)).isoformat()


# --------------------------------------------------------------------------------------------------------
# CRUD
# --------------------------------------------------------------------------------------------------------


async def test_add_get_list_and_remove_normalized_entries(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    address = await _add(client, alice, email="  Ann.Lee@Bücher.Example ", note="asked by phone")
    domain = await _add(client, alice, domain="@Bücher.ORG.", expires_at=_later(days=30))
    assert (address["scope"], address["user_id"], address["kind"], address["value"], address["reason"]) == (
        "user",
        alice.id,
        "address",
        "ann.lee@xn--bcher-kva.example",
        "manual",
    )
    assert (address["note"], address["created_by"], address["expired"]) == ("asked by phone", alice.id, False)
    assert (domain["kind"], domain["value"], domain["expires_at"] is not None) == ("domain", "xn--bcher-kva.org", True)

    r = await client.get(f"{OWN}/{address['id']}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["value"] == address["value"]
    assert await _values(client, alice) == [address["value"], domain["value"]]

    r = await client.delete(f"{OWN}/{domain['id']}", headers=alice.headers)
    assert r.json() == {"removed": 1, "contacts_cleared": 0}, r.text
    _error(await client.get(f"{OWN}/{domain['id']}", headers=alice.headers), 404, "not_found")
    _error(await client.delete(f"{OWN}/{domain['id']}", headers=alice.headers), 404, "not_found")
    async with sessionmaker() as session:
        audit = (await session.scalars(select(AuditLog).where(AuditLog.action == "suppression.remove"))).one()
    assert (audit.actor_user_id, audit.target_id, audit.details["value"]) == (
        alice.id,
        str(domain["id"]),
        "xn--bcher-kva.org",
    )


async def test_list_filters_pages_and_total(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    for i in range(5):
        await _add(client, alice, email=f"user{i}@example.com", note="vip" if i % 2 else None)
    await _add(client, alice, domain="spam.example")
    async with unit_of_work(sessionmaker) as session:  # an entry that has expired since it was added
        session.add(
            Suppression(
                scope="user",
                user_id=alice.id,
                owner_key=alice.id,
                kind="address",
                value="old@example.com",
                reason="import",
                expires_at=utc_now() - dt.timedelta(days=1),
            )
        )

    assert await _values(client, alice, kind="domain") == ["spam.example"]
    assert await _values(client, alice, reason="import") == ["old@example.com"]
    assert await _values(client, alice, q="VIP") == ["user1@example.com", "user3@example.com"]
    assert await _values(client, alice, q="user4") == ["user4@example.com"]
    assert await _values(client, alice, q="%") == [], "LIKE wildcards are searched literally"
    assert await _values(client, alice, expired=True) == ["old@example.com"]
    assert "old@example.com" not in await _values(client, alice, expired=False)
    r = await client.get(OWN, params={"expired": "true"}, headers=alice.headers)
    assert r.json()["items"][0]["expired"] is True

    seen, cursor = [], None
    while True:
        r = await client.get(
            OWN,
            params={"limit": 3, "include_total": "true", **({"cursor": cursor} if cursor else {})},
            headers=alice.headers,
        )
        body = r.json()
        assert body["total"] == 7
        seen += [e["id"] for e in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and seen == sorted(seen)


async def test_duplicates_conflict_and_an_expired_entry_is_renewed(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    first = await _add(client, alice, email="ann@example.com")
    body = _error(await client.post(OWN, json={"email": "ANN@example.com"}, headers=alice.headers), 409, "conflict")
    assert body["existing_id"] == first["id"]
    async with unit_of_work(sessionmaker) as session:
        session.add(
            Suppression(
                scope="user",
                user_id=alice.id,
                owner_key=alice.id,
                kind="domain",
                value="old.example",
                reason="import",
                note="old",
                expires_at=utc_now(),
            )
        )
    renewed = await _add(client, alice, domain="old.example", note="again")
    assert (renewed["reason"], renewed["note"], renewed["expires_at"], renewed["expired"]) == (
        "manual",
        "again",
        None,
        False,
    )
    assert await _values(client, alice) == ["ann@example.com", "old.example"]
    # The same value on another list is another entry.
    bob = await make_account(sessionmaker, "bob")
    await _add(client, bob, email="ann@example.com")


@pytest.mark.parametrize(("body", "field"), [
    ({}, "email"),
    ({"email": "a@example.com", "domain": "example.com"}, "email"),
    ({"email": "not-an-address"}, "email"),
    ({"email": "a@-bad-.com"}, "email"),
    ({"domain": "localhost"}, "domain"),
    ({"domain": "exa mple.com"}, "domain"),
    ({"email": "a@example.com", "note": "x" * 501}, "note"),
    ({"email": "a@example.com", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"email": "a@example.com", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
    ({"email": "a@example.com", "reason": "manual"}, "reason"),
    ({"email": "a\u0000@example.com"}, "email"),
])  # fmt: skip
async def test_bad_entries_are_422_naming_the_field(
    client: httpx.AsyncClient, sessionmaker: Any, body: dict[str, Any], field: str
) -> None:
    alice = await make_account(sessionmaker, "alice")
    error = _error(await client.post(OWN, json=body, headers=alice.headers), 422, "validation_error")
    assert field in error["details"][0]["field"], error


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/suppressions?kind=bogus"),
    ("GET", "/suppressions?reason=bogus"),
    ("GET", "/suppressions?limit=0"),
    ("GET", "/suppressions?limit=201"),
    ("GET", "/suppressions?cursor=nope"),
    ("GET", "/suppressions?q=%00"),
    ("GET", "/suppressions?user_id=0"),
    ("GET", "/suppressions/0"),
    ("GET", "/suppressions/99999999999999999999"),
    ("DELETE", "/suppressions/0"),
    ("GET", "/suppressions/check"),
    ("GET", "/suppressions/check?email=nope"),
    ("GET", "/suppressions/check?email=" + "a" * 400 + "@example.com"),
    ("GET", "/suppressions/export?kind=bogus"),
])  # fmt: skip
async def test_odd_input_is_a_4xx(client: httpx.AsyncClient, sessionmaker: Any, method: str, path: str) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.request(method, f"{API}{path}", headers=alice.headers)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"]


# --------------------------------------------------------------------------------------------------------
# Who may do what
# --------------------------------------------------------------------------------------------------------


async def test_users_cannot_see_or_remove_each_others_entries(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    entry = await _add(client, alice, email="ann@example.com")
    _error(await client.get(f"{OWN}/{entry['id']}", headers=bob.headers), 404, "not_found")
    _error(await client.delete(f"{OWN}/{entry['id']}", headers=bob.headers), 404, "not_found")
    assert await _values(client, bob) == []
    _error(await client.get(OWN, params={"user_id": alice.id}, headers=bob.headers), 403, "forbidden")
    export = await client.get(f"{OWN}/export", headers=bob.headers)
    assert export.text.splitlines()[1:] == []
    assert await _values(client, alice) == ["ann@example.com"], "still there"
    # Admins read another user's list with user_id; they remove only through their own or the global list.
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    assert await _values(client, admin, user_id=alice.id) == ["ann@example.com"]
    _error(await client.delete(f"{OWN}/{entry['id']}", headers=admin.headers), 404, "not_found")
    _error(await client.delete(f"{GLOBAL}/{entry['id']}", headers=admin.headers), 404, "not_found")


async def test_the_global_list_is_for_admins(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    entry = await _add(client, admin, GLOBAL, email="trap@example.com", note="spam trap")
    assert (entry["scope"], entry["user_id"], entry["reason"]) == ("global", None, "manual")
    for method, path in (
        ("GET", GLOBAL),
        ("POST", GLOBAL),
        ("GET", f"{GLOBAL}/{entry['id']}"),
        ("DELETE", f"{GLOBAL}/{entry['id']}"),
        ("GET", f"{GLOBAL}/export"),
        ("GET", f"{GLOBAL}/check?email=trap@example.com"),
        ("POST", f"{GLOBAL}/import"),
    ):
        _error(await client.request(method, path, headers=alice.headers), 403, "forbidden")
    assert await _values(client, alice) == [], "a user's list does not show global entries"
    r = await client.post(
        f"{GLOBAL}/import",
        headers=admin.headers,
        **_upload("email,note\nbounced@example.com,from the old system\nbad,\n"),
    )
    assert (r.json()["added"], r.json()["error_count"]) == (1, 1), r.text
    assert await _values(client, admin, GLOBAL) == ["trap@example.com", "bounced@example.com"]
    r = await client.delete(f"{GLOBAL}/{entry['id']}", headers=admin.headers)
    assert r.status_code == 200, r.text
    async with sessionmaker() as session:
        audits = [
            (a.action, a.actor_user_id, a.details)
            for a in await session.scalars(select(AuditLog).order_by(AuditLog.id))
        ]
    assert [(action, actor) for action, actor, _ in audits] == [
        ("suppression.add", admin.id),
        ("suppression.import", admin.id),
        ("suppression.remove", admin.id),
    ]
    assert audits[1][2] == {"total": 2, "added": 1, "existing": 0, "errors": 1}
    assert audits[2][2]["scope"] == "global" and audits[2][2]["value"] == "trap@example.com"


@pytest.mark.parametrize("kind", ["read_token", "read_only_role", "read_admin_token"])
async def test_read_only_callers_get_403_on_writes(client: httpx.AsyncClient, sessionmaker: Any, kind: str) -> None:
    alice = await make_account(sessionmaker, "alice")
    reader = {
        "read_token": lambda: make_account(sessionmaker, "alice2", scope="read"),
        "read_only_role": lambda: make_account(sessionmaker, "viewer", role=Role.READ_ONLY),
        "read_admin_token": lambda: make_account(sessionmaker, "root", role=Role.ADMIN, scope="read"),
    }
    who = await reader[kind]()
    entry = await _add(client, alice, email="ann@example.com")
    base = GLOBAL if kind == "read_admin_token" else OWN
    _error(await client.post(base, json={"email": "x@example.com"}, headers=who.headers), 403, "forbidden")
    _error(await client.delete(f"{base}/{entry['id']}", headers=who.headers), 403, "forbidden")
    _error(
        await client.post(f"{base}/import", headers=who.headers, **_upload("email\nx@example.com\n")), 403, "forbidden"
    )
    for path in ("", "/export", "/check?email=x@example.com"):
        assert (await client.get(f"{base}{path}", headers=who.headers)).status_code == 200
    async with sessionmaker() as session:
        assert [s.value for s in await session.scalars(select(Suppression))] == ["ann@example.com"]


# --------------------------------------------------------------------------------------------------------
# Removal with a reason
# --------------------------------------------------------------------------------------------------------


async def test_removing_unsubscribe_and_complaint_entries_needs_a_reason_and_clears_the_flag(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    now = utc_now()
    async with unit_of_work(sessionmaker) as session:
        for owner in (alice.id, bob.id):  # both users hold the address; both complained and unsubscribed
            session.add(
                Contact(
                    user_id=owner,
                    email="Ann@Example.com",
                    email_normalized="ann@example.com",
                    email_domain="example.com",
                    status="active",
                    custom_attributes={},
                    unsubscribed_at=now,
                    complained_at=now,
                )
            )
        own = Suppression(
            scope="user",
            user_id=alice.id,
            owner_key=alice.id,
            kind="address",
            value="ann@example.com",
            reason="unsubscribed",
            source_task_id=7,
            source_event_id=9,
        )
        complaint = Suppression(
            scope="global", user_id=None, owner_key=0, kind="address", value="ann@example.com", reason="complaint"
        )
        session.add_all([own, complaint])
    body = _error(await client.delete(f"{OWN}/{own.id}", headers=alice.headers), 422, "validation_error")
    assert body["details"][0]["field"] == "reason"
    _error(
        await client.delete(f"{OWN}/{own.id}", params={"reason": "  "}, headers=alice.headers), 422, "validation_error"
    )
    _error(await client.delete(f"{GLOBAL}/{complaint.id}", headers=admin.headers), 422, "validation_error")

    r = await client.delete(f"{OWN}/{own.id}", params={"reason": "resubscribed at the fair"}, headers=alice.headers)
    assert r.json() == {"removed": 1, "contacts_cleared": 1}, r.text
    flags = await _flags(sessionmaker)
    assert flags == {alice.id: (False, True), bob.id: (True, True)}, "only alice's unsubscribe flag is cleared"

    r = await client.delete(f"{GLOBAL}/{complaint.id}", params={"reason": "complaint withdrawn"}, headers=admin.headers)
    assert r.json() == {"removed": 1, "contacts_cleared": 2}, r.text
    assert await _flags(sessionmaker) == {alice.id: (False, False), bob.id: (True, False)}, (
        "a global entry stands for every user: each contact's complaint flag is cleared"
    )
    async with sessionmaker() as session:
        audits = list(await session.scalars(select(AuditLog).order_by(AuditLog.id)))
    assert [
        (
            a.action,
            a.actor_user_id,
            a.actor_kind,
            a.target_type,
            a.details["entry_reason"],
            a.details["reason"],
            a.details["contacts_cleared"],
        )
        for a in audits
    ] == [
        ("suppression.remove", alice.id, "token", "suppression", "unsubscribed", "resubscribed at the fair", 1),
        ("suppression.remove", admin.id, "token", "suppression", "complaint", "complaint withdrawn", 2),
    ]
    assert audits[0].ip


async def _flags(sessionmaker: Any) -> dict[int, tuple[bool, bool]]:
    """user id -> (unsubscribed, complained) of their contact."""
    async with sessionmaker() as session:
        rows = await session.execute(select(Contact.user_id, Contact.unsubscribed_at, Contact.complained_at))
        return {uid: (unsub is not None, complained is not None) for uid, unsub, complained in rows}


# --------------------------------------------------------------------------------------------------------
# Import and export
# --------------------------------------------------------------------------------------------------------


async def test_import_keeps_good_rows_and_reports_each_bad_one(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    await _add(client, alice, email="known@example.com")
    future = (utc_now() + dt.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = (
        "E-Mail;Domain;Note;Expires At;Ignored\n"  # row 1
        "Good@Example.com;;first;;x\n"  # 2 added
        "not-an-address;;;;\n"  # 3 bad email
        "good@example.com;;again;;\n"  # 4 repeated in the file -> existing
        "known@example.com;;;;\n"  # 5 already listed -> existing
        ";Bücher.Example;a domain;" + future + ";\n"  # 6 added (domain, expiring)
        "\n"  # blank: not a row
        "past@example.com;;;2001-01-01;\n"  # 8 expiry in the past
        "when@example.com;;;tomorrow;\n"  # 9 not a time
        "both@example.com;example.net;;;\n"  # 10 both
        ";;only a note;;\n"  # 11 neither
        "long@example.com;;" + "n" * 501 + ";;\n"  # 12 note too long
        "'=calc@example.com;;'+note;;\n"  # 13 added: the export's guard is undone
    )
    r = await client.post(f"{OWN}/import", headers=alice.headers, **_upload(text))
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["total"], report["added"], report["existing"], report["error_count"]) == (11, 3, 2, 6)
    assert [(e["row"], e["column"]) for e in report["errors"]] == [
        (3, "email"),
        (8, "expires_at"),
        (9, "expires_at"),
        (10, "email"),
        (11, "email"),
        (12, "note"),
    ]
    assert "not a valid email address" in report["errors"][0]["message"]
    assert "in the future" in report["errors"][1]["message"]
    r = await client.get(OWN, params={"reason": "import"}, headers=alice.headers)
    imported = {e["value"]: e for e in r.json()["items"]}
    assert set(imported) == {"good@example.com", "xn--bcher-kva.example", "=calc@example.com"}
    assert imported["=calc@example.com"]["note"] == "+note"
    assert imported["good@example.com"]["note"] == "first"
    assert imported["xn--bcher-kva.example"]["kind"] == "domain"
    assert imported["xn--bcher-kva.example"]["expires_at"].startswith(future[:19])


@pytest.mark.parametrize(("content", "status", "needle"), [
    (b"name,phone\nann,1\n", 422, "no email or domain column"),
    (b"", 422, "empty"),
    (b"\n\n", 422, "empty"),
    (b"email\n\xff\xfe\xfa@x.com\n", 422, "UTF-8"),
    (b"PK\x03\x04rest-of-a-zip", 415, "CSV"),
])  # fmt: skip
async def test_import_refuses_unreadable_files(
    client: httpx.AsyncClient, sessionmaker: Any, content: bytes, status: int, needle: str
) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{OWN}/import", headers=alice.headers, **_upload(content))
    assert r.status_code == status and needle in r.text, r.text


async def test_import_form_errors(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await client.post(f"{OWN}/import", json={"email": "x@example.com"}, headers=alice.headers)
    assert r.status_code == 415 and r.json()["error"]["code"]
    r = await client.post(f"{OWN}/import", headers=alice.headers, data={"mode": "x"}, files={"other": ("a", b"")})
    assert r.status_code == 422
    r = await client.post(
        f"{OWN}/import",
        headers=alice.headers,
        data={"encoding": "klingon"},
        files={"file": ("a.csv", b"email\na@b.co\n", "text/csv")},
    )
    assert r.status_code == 422 and "encoding" in r.text
    r = await client.post(
        f"{OWN}/import",
        headers=alice.headers,
        data={"encoding": "gb18030"},
        files={"file": ("a.csv", "email,note\na@b.co,中文\n".encode("gb18030"), "text/csv")},
    )
    assert r.json()["added"] == 1
    r = await client.get(OWN, headers=alice.headers)
    assert r.json()["items"][0]["note"] == "中文"


async def test_export_is_guarded_csv_and_imports_back(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    expiry = (utc_now() + dt.timedelta(days=3)).replace(microsecond=0)
    await _add(client, alice, email="=cmd@example.com", note='said "stop", twice\nby mail')
    await _add(client, alice, email="+plus@example.com", note="@mention")
    await _add(client, alice, domain="example.org", note="-1", expires_at=expiry.isoformat())
    await _add(client, alice, email="plain@example.com")

    r = await client.get(f"{OWN}/export", headers=alice.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text, newline="")))
    assert rows[0] == ["email", "domain", "reason", "note", "expires_at", "created_at"]
    assert [row[:4] for row in rows[1:]] == [
        ["'=cmd@example.com", "", "manual", 'said "stop", twice\nby mail'],
        ["'+plus@example.com", "", "manual", "'@mention"],
        ["", "example.org", "manual", "'-1"],
        ["plain@example.com", "", "manual", ""],
    ]
    assert '"said ""stop"", twice\nby mail"' in r.text and r.text.endswith("\r\n"), "RFC 4180 quoting"
    assert rows[3][4] == expiry.isoformat().replace("+00:00", "Z")

    r2 = await client.post(f"{OWN}/import", headers=bob.headers, **_upload(r.content))
    assert r2.json() == {"total": 4, "added": 4, "existing": 0, "error_count": 0, "errors": []}, r2.text

    def comparable(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(e["kind"], e["value"], e["note"], e["expires_at"]) for e in items]

    mine = (await client.get(OWN, headers=alice.headers)).json()["items"]
    theirs = (await client.get(OWN, headers=bob.headers)).json()["items"]
    assert comparable(theirs) == comparable(mine)
    assert {e["reason"] for e in theirs} == {"import"}

    bom = await client.get(f"{OWN}/export", params={"bom": "true", "kind": "domain"}, headers=alice.headers)
    assert bom.content.startswith("\ufeff".encode()) and len(bom.text.splitlines()) == 2
    again = await client.post(f"{OWN}/import", headers=bob.headers, **_upload(bom.content))
    assert again.json()["existing"] == 1, "a BOM is read as UTF-8, and the entry is already there"


async def test_export_streams_a_long_list_in_id_order(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    now = utc_now()
    async with unit_of_work(sessionmaker) as session:
        session.add_all(
            [
                Suppression(
                    scope="global",
                    user_id=None,
                    owner_key=0,
                    kind="address",
                    value=f"r{i:05d}@example.com",
                    reason="hard_bounce",
                    created_at=now,
                    updated_at=now,
                )
                for i in range(2500)
            ]
        )
    async with client.stream("GET", f"{GLOBAL}/export", headers=admin.headers) as r:
        lines = [line async for line in r.aiter_lines() if line]
    assert len(lines) == 2501
    assert [line.split(",")[0] for line in lines[1:]] == [f"r{i:05d}@example.com" for i in range(2500)]


# --------------------------------------------------------------------------------------------------------
# Check
# --------------------------------------------------------------------------------------------------------


async def test_check_names_what_blocks_an_address(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    own = await _add(client, alice, email="ann@example.com", note="mine")
    await _add(client, admin, GLOBAL, domain="example.com", note="who added it is not for users")
    async with unit_of_work(sessionmaker) as session:
        session.add(
            Suppression(
                scope="user",
                user_id=alice.id,
                owner_key=alice.id,
                kind="address",
                value="gone@other.example",
                reason="manual",
                expires_at=utc_now(),
            )
        )
        session.add(
            Contact(
                user_id=alice.id,
                email="ann@example.com",
                email_normalized="ann@example.com",
                email_domain="example.com",
                status="inactive",
                custom_attributes={},
                hard_bounced_at=utc_now(),
            )
        )

    r = await client.get(f"{OWN}/check", params={"email": " Ann@EXAMPLE.com "}, headers=alice.headers)
    body = r.json()
    assert (body["email"], body["blocked"]) == ("ann@example.com", True)
    assert body["entries"][0] == {
        "scope": "user",
        "kind": "address",
        "reason": "manual",
        "id": own["id"],
        "value": "ann@example.com",
        "note": "mine",
        "expires_at": None,
        "message": "blocked by your list",
        "created_at": own["created_at"],
    }
    assert body["entries"][1] == {
        "scope": "global",
        "kind": "domain",
        "reason": "manual",
        "message": "blocked by the global list",
        "id": None,
        "value": None,
        "note": None,
        "expires_at": None,
        "created_at": None,
    }, "users see the list and the reason only"
    assert body["contact"]["blocking"] == ["contact_inactive", "hard_bounced"]

    r = await client.get(f"{OWN}/check", params={"email": "gone@other.example"}, headers=alice.headers)
    assert r.json() == {"email": "gone@other.example", "blocked": False, "entries": [], "contact": None}, (
        "an expired entry no longer blocks"
    )

    bob = await make_account(sessionmaker, "bob")
    r = await client.get(f"{OWN}/check", params={"email": "ann@example.com"}, headers=bob.headers)
    assert [(e["scope"], e["kind"]) for e in r.json()["entries"]] == [("global", "domain")], "not alice's entry"
    assert r.json()["contact"] is None

    r = await client.get(f"{GLOBAL}/check", params={"email": "zed@example.com"}, headers=admin.headers)
    entry = r.json()["entries"][0]
    assert (entry["value"], entry["note"]) == ("example.com", "who added it is not for users")
    r = await client.get(
        f"{OWN}/check", params={"email": "ann@example.com", "user_id": alice.id}, headers=admin.headers
    )
    assert [e["scope"] for e in r.json()["entries"]] == ["user", "global"]
    assert r.json()["entries"][1]["value"] == "example.com", "admins see global entries in full"


# --------------------------------------------------------------------------------------------------------
# Effect at generation and at claim time
# --------------------------------------------------------------------------------------------------------


async def _suppressed(sessionmaker: Any, task_id: int) -> dict[str, str | None]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(SubTask.recipient_email, SubTask.suppressed_reason).where(SubTask.task_id == task_id)
        )
        return dict(rows.all())


async def test_domain_entries_and_expiry_at_generation(
    client: httpx.AsyncClient, sessionmaker: Any, db_url: str
) -> None:
    settings = settings_for(db_url)
    w = await factories.world(sessionmaker, settings, recipients=2, name="alice")
    async with unit_of_work(sessionmaker) as session:
        await factories.contacts(session, w.user_id, 3, prefix="a", domain="blocked.example")
        await factories.contacts(session, w.user_id, 2, prefix="b", domain="global.example")
        await factories.contacts(session, w.user_id, 2, prefix="soon", domain="open.example")
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    alice = await _token_for(sessionmaker, w.user_id)
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    await _add(client, alice, domain="BLOCKED.example")
    await _add(client, admin, GLOBAL, domain="global.example")
    await _add(client, alice, email="soon0@open.example", expires_at=_later(hours=1))
    await _add(client, alice, email="soon1@open.example", expires_at=_later(hours=3))

    async with unit_of_work(sessionmaker) as session:  # two hours on: the first expiry has passed
        await generation.generate(session, task_id, now=utc_now() + dt.timedelta(hours=2))
    reasons = await _suppressed(sessionmaker, task_id)
    blocked = {e: r for e, r in reasons.items() if r is not None}
    assert blocked == {
        **{f"a{i}@blocked.example": "suppression_list" for i in range(3)},
        **{f"b{i}@global.example": "suppression_list" for i in range(2)},
        "soon1@open.example": "suppression_list",
    }
    assert reasons["soon0@open.example"] is None, "an expired entry no longer blocks"


async def test_domain_entries_and_expiry_at_claim_time(
    client: httpx.AsyncClient, sessionmaker: Any, db_url: str
) -> None:
    settings = settings_for(db_url)
    w = await factories.world(
        sessionmaker, settings, recipients=0, name="alice", services_=[{"name": "esp", "max_concurrency": 50}]
    )
    async with unit_of_work(sessionmaker) as session:
        await factories.contacts(session, w.user_id, 3, prefix="a", domain="late.example")
        await factories.contacts(session, w.user_id, 2, prefix="g", domain="global.example")
        await factories.contacts(session, w.user_id, 3, prefix="x", domain="open.example")
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
        result = await generation.generate(session, task_id, now=utc_now())
    assert result is not None and result.sendable == 8
    alice = await _token_for(sessionmaker, w.user_id)
    admin = await make_account(sessionmaker, "root", role=Role.ADMIN)
    # Added after generation: the claim must find them.
    await _add(client, alice, domain="late.example")
    await _add(client, admin, GLOBAL, domain="global.example")
    await _add(client, alice, email="x0@open.example", expires_at=_later(hours=1))
    await _add(client, admin, GLOBAL, email="x1@open.example", expires_at=_later(hours=3))

    async with unit_of_work(sessionmaker) as session:
        claim = await queue.claim(
            session, service_id=w.service_ids[0], worker_id="w", now=utc_now() + dt.timedelta(hours=2)
        )
    assert claim is not None and claim.suppressed == 6
    assert {i.recipient_email for i in claim.items} == {"x0@open.example", "x2@open.example"}, "x0's entry has expired"
    reasons = await _suppressed(sessionmaker, task_id)
    assert {e for e, r in reasons.items() if r == "suppression_list"} == {
        "a0@late.example",
        "a1@late.example",
        "a2@late.example",
        "g0@global.example",
        "g1@global.example",
        "x1@open.example",
    }


async def _token_for(sessionmaker: Any, user_id: int) -> Account:
    async with unit_of_work(sessionmaker) as session:
        token, _ = await create_token(session, user_id=user_id, name="tests")
    return Account(user_id, "alice", token)


async def test_contact_flag_check_matches_generation(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    """The check endpoint's contact reasons use generation's names (docs/tasks.md#selection-and-the-estimate) so they
    read the same."""
    alice = await make_account(sessionmaker, "alice")
    async with unit_of_work(sessionmaker) as session:
        session.add(
            Contact(
                user_id=alice.id,
                email="c@example.com",
                email_normalized="c@example.com",
                email_domain="example.com",
                status="active",
                custom_attributes={},
                unsubscribed_at=utc_now(),
                complained_at=utc_now(),
            )
        )
    r = await client.get(f"{OWN}/check", params={"email": "c@example.com"}, headers=alice.headers)
    assert (r.json()["blocked"], r.json()["contact"]["blocking"]) == (True, ["unsubscribed", "complained"])
    async with unit_of_work(sessionmaker) as session:
        await session.execute(update(Contact).values(unsubscribed_at=None, complained_at=None))
    r = await client.get(f"{OWN}/check", params={"email": "c@example.com"}, headers=alice.headers)
    assert (r.json()["blocked"], r.json()["contact"]["blocking"]) == (False, [])


# --------------------------------------------------------------------------------------------------------
# The CLI (a real `edm` process on its own SQLite database)
# --------------------------------------------------------------------------------------------------------


def _one_line_exit_2(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_suppression_lists_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    url = f"sqlite:///{path}"
    assert edm(url, "db", "upgrade").returncode == 0
    assert (
        edm(
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

    added = edm(url, "suppression", "add", "--user", "ann", "A@Example.com", "Example.ORG", "--note", "=x")
    assert added.returncode == 0 and "added 2 entries" in added.stdout, added.stderr
    _one_line_exit_2(edm(url, "suppression", "add", "--user", "ann", "a@example.com"), "already on this list")
    _one_line_exit_2(edm(url, "suppression", "add", "a@example.com"), "give either --user U or --global")
    _one_line_exit_2(edm(url, "suppression", "add", "--global", "not@an@address"), "not a valid")
    _one_line_exit_2(edm(url, "suppression", "list", "--user", "nobody"), "not found")

    checked = json.loads(edm(url, "suppression", "check", "--user", "ann", "Zed@example.org", "--json").stdout)
    assert checked["blocked"] is True
    assert [(e["scope"], e["kind"], e["value"]) for e in checked["entries"]] == [("user", "domain", "example.org")]
    assert "not blocked" in edm(url, "suppression", "check", "--global", "zed@example.org").stdout

    exported = tmp_path / "out.csv"
    assert edm(url, "suppression", "export", "--user", "ann", "-o", str(exported)).returncode == 0
    assert exported.read_text().splitlines()[1].startswith("a@example.com,,manual,'=x,")
    imported = edm(url, "suppression", "import", str(exported), "--global")
    assert imported.returncode == 0 and "2 added, 0 existing, 0 errors" in imported.stdout, imported.stdout
    listed = json.loads(edm(url, "suppression", "list", "--global", "--json").stdout)
    assert [(e["value"], e["reason"], e["note"]) for e in listed] == [
        ("a@example.com", "import", "=x"),
        ("example.org", "import", "=x"),
    ]
    assert "removed entry" in edm(url, "suppression", "remove", "--global", "example.org").stdout
    _one_line_exit_2(edm(url, "suppression", "remove", "--user", "ann", "999"), "not found")

    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO suppressions (scope, user_id, owner_key, kind, value, reason, created_at, updated_at)"
            " VALUES ('user', 1, 1, 'address', 'u@example.com', 'unsubscribed', '2024-01-01 00:00:00',"
            " '2024-01-01 00:00:00')"
        )
    _one_line_exit_2(edm(url, "suppression", "remove", "--user", "ann", "u@example.com"), "needs a reason")
    removed = edm(url, "suppression", "remove", "--user", "ann", "u@example.com", "--reason", "phoned us")
    assert removed.returncode == 0, removed.stderr
    with sqlite3.connect(path) as db:
        audits = db.execute(
            "SELECT action, actor_kind, details FROM audit_log WHERE action LIKE 'suppression.%' ORDER BY id"
        ).fetchall()
    assert [(action, kind, json.loads(details).get("reason")) for action, kind, details in audits] == [
        ("suppression.import", "cli", None),
        ("suppression.remove", "cli", None),
        ("suppression.remove", "cli", "phoned us"),
    ]
