"""The console's suppressions page over the ASGI app (no browser): adding with errors beside the field and what was
typed kept, removal only with a reason, the CSV import's report, the check, the filters, and what a read-only user
sees and may do. tests/browser/test_suppressions_page.py drives the page in Chromium."""

from __future__ import annotations

import html
import re

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.models.system import Notification
from edm.suppressions import service as suppressions
from edm.suppressions.service import SuppressionList
from edm.system.service import CLI
from tests.helpers import Account, console_log_in, field_error, make_account, page_field


async def _entries(client: httpx.AsyncClient, who: Account) -> list[dict[str, object]]:
    listed = await client.get("/api/v1/suppressions", headers=who.headers)
    assert listed.status_code == 200
    items: list[dict[str, object]] = listed.json()["items"]
    return items


async def test_entries_are_added_refused_beside_the_field_and_removed_only_with_a_reason(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    empty = await client.get("/suppressions")
    assert empty.status_code == 200 and "Your list is empty." in empty.text

    bad = await client.post(
        "/suppressions", data={"csrf_token": csrf, "kind": "domain", "value": "not a domain", "note": "typo"}
    )
    assert bad.status_code == 422 and field_error(bad.text, "value") == "Enter a valid domain, e.g. example.org."
    assert page_field(bad.text, "value") == "not a domain" and page_field(bad.text, "note") == "typo"
    missing = await client.post("/suppressions", data={"csrf_token": csrf, "kind": "address", "value": " "})
    assert missing.status_code == 422 and field_error(missing.text, "value") == "This field is required."

    added = await client.post(
        "/suppressions", data={"csrf_token": csrf, "kind": "address", "value": "Ann@Example.com", "note": "asked"}
    )
    assert added.status_code == 303 and added.headers["location"] == "/suppressions?notice=added"
    twice = await client.post("/suppressions", data={"csrf_token": csrf, "kind": "address", "value": "ann@example.com"})
    assert twice.status_code == 409 and field_error(twice.text, "value") == "This is already on your list."
    [entry] = await _entries(client, alice)
    assert entry["value"] == "ann@example.com" and entry["reason"] == "manual"

    confirm = await client.get(f"/suppressions/{entry['id']}/remove")
    assert confirm.status_code == 200 and "Remove 1 entry" in confirm.text
    no_reason = await client.post(f"/suppressions/{entry['id']}/remove", data={"csrf_token": csrf, "reason": ""})
    assert no_reason.status_code == 422 and field_error(no_reason.text, "reason") == "Say why the entry is removed."
    assert len(await _entries(client, alice)) == 1, "nothing removed without a reason"
    removed = await client.post(f"/suppressions/{entry['id']}/remove", data={"csrf_token": csrf, "reason": "mistake"})
    assert removed.status_code == 303 and await _entries(client, alice) == []


async def test_the_import_keeps_good_rows_and_reports_bad_ones_and_the_check_and_filters_work(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    bob = await make_account(sessionmaker, "bob")
    csrf = await console_log_in(client, bob)
    csv = b"email,domain,note\nkim@example.com,,one\nnot-an-address,,two\n,spam.example,three\n"
    report = await client.post(
        "/suppressions/import", data={"csrf_token": csrf}, files={"file": ("list.csv", csv, "text/csv")}
    )
    assert report.status_code == 200
    text = html.unescape(report.text)
    assert "3 rows read, 2 added, 0 already listed, 1 with errors." in text
    assert "Row 3, column “email”: Enter a valid email address." in text
    assert sorted(str(e["value"]) for e in await _entries(client, bob)) == ["kim@example.com", "spam.example"]
    no_file = await client.post("/suppressions/import", data={"csrf_token": csrf}, files={"file": ("", b"", "")})
    assert no_file.status_code == 422 and field_error(no_file.text, "file") == "Choose a CSV file."

    blocked = " ".join(
        html.unescape((await client.get("/suppressions", params={"check": "Someone@SPAM.example"})).text).split()
    )
    assert "someone@spam.example is blocked" in blocked and "Your list — Domain spam.example" in blocked
    free = html.unescape((await client.get("/suppressions", params={"check": "ann@other.example"})).text)
    assert "ann@other.example is not blocked." in free
    invalid = await client.get("/suppressions", params={"check": "nope"})
    assert invalid.status_code == 200 and field_error(invalid.text, "check") == "Enter a valid email address."

    domains = (await client.get("/suppressions", params={"kind": "domain"})).text
    assert "spam.example" in domains and "kim@example.com" not in domains and "Entries that match: 1" in domains
    assert "/api/v1/suppressions/export?kind=domain&amp;bom=true" in domains
    searched = (await client.get("/suppressions", params={"q": "kim", "reason": "import"})).text
    assert "kim@example.com" in searched and "spam.example" not in searched


async def test_a_read_only_user_sees_the_list_and_the_check_but_no_write_control_and_its_posts_are_refused(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only")
    async with unit_of_work(sessionmaker) as session:
        entry = suppressions.new_entry(email="kept@example.com", domain=None, now=utc_now())
        await suppressions.add_entry(session, SuppressionList.of_user(reader.id), entry, actor=CLI, now=utc_now())
    csrf = await console_log_in(client, reader)
    page = await client.get("/suppressions", params={"check": "ann@example.com"})
    assert page.status_code == 200 and "ann@example.com is not blocked." in page.text
    assert "kept@example.com" in page.text, "the list is shown"
    assert (
        'method="post" action="/suppressions"' not in page.text
        and "/remove" not in page.text
        and "/suppressions/import" not in page.text
    )
    for path in ("/suppressions", "/suppressions/import", "/suppressions/1/remove"):
        refused = await client.post(path, data={"csrf_token": csrf, "kind": "address", "value": "x@example.com"})
        assert refused.status_code == 403, path
    assert [e["value"] for e in await _entries(client, reader)] == ["kept@example.com"]


async def test_notifications_are_listed_counted_in_the_top_bar_and_marked_read(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    carl = await make_account(sessionmaker, "carl")
    other = await make_account(sessionmaker, "other")
    async with unit_of_work(sessionmaker) as session:
        for n in range(2):
            session.add(Notification(user_id=carl.id, kind="import", title=f"Import {n} finished", link="/contacts"))
        session.add(Notification(user_id=other.id, kind="import", title="Not for carl"))
    csrf = await console_log_in(client, carl)
    page = await client.get("/notifications")
    assert page.status_code == 200 and "Import 0 finished" in page.text and "Not for carl" not in page.text
    assert re.search(r'class="notif-link">Notifications <span class="badge">2<', page.text), "the top bar's count"
    [first, second] = (await client.get("/api/v1/me/notifications", headers=carl.headers)).json()["items"]
    read = await client.post(
        f"/notifications/{second['id']}/read", data={"csrf_token": csrf, "next": "/notifications?show=unread"}
    )
    assert read.status_code == 303 and read.headers["location"] == "/notifications?show=unread"
    unread = (await client.get("/notifications?show=unread")).text
    assert "Import 1 finished" in unread and "Import 0 finished" not in unread
    assert re.search(r'class="notif-link">Notifications <span class="badge">1<', unread)
    assert "Import 0 finished" in (await client.get("/notifications?show=read")).text
    elsewhere = await client.post(f"/notifications/{second['id']}/read", data={"csrf_token": csrf, "next": "//x.io"})
    assert elsewhere.headers["location"] == "/notifications", "only a path on this site"
    theirs = (await client.get("/api/v1/me/notifications", headers=other.headers)).json()["items"][0]
    assert (await client.post(f"/notifications/{theirs['id']}/read", data={"csrf_token": csrf})).status_code == 404


async def test_a_read_only_user_marks_its_own_notifications_read_in_the_console_as_in_the_api(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only", scope="read")
    other = await make_account(sessionmaker, "other")
    async with unit_of_work(sessionmaker) as session:
        for n in range(2):
            session.add(Notification(user_id=reader.id, kind="import", title=f"Import {n} finished"))
        session.add(Notification(user_id=other.id, kind="import", title="Not for the reader"))
    csrf = await console_log_in(client, reader)
    page = (await client.get("/notifications")).text
    assert page.count('action="/notifications/') == 2, "every unread one has its button, read-only or not"
    [first, second] = (await client.get("/api/v1/me/notifications", headers=reader.headers)).json()["items"]
    read = await client.post(f"/notifications/{second['id']}/read", data={"csrf_token": csrf, "next": "/notifications"})
    assert read.status_code == 303 and read.headers["location"] == "/notifications"
    api = await client.post(f"/api/v1/me/notifications/{first['id']}/read", headers=reader.headers)
    assert api.status_code == 200 and api.json()["read_at"], "the API takes a read-scope token for it too"
    assert (await client.get("/api/v1/me/notifications", headers=reader.headers)).json()["unread"] == 0
    assert "Import 0 finished" in (await client.get("/notifications?show=read")).text
    assert 'action="/notifications/' not in (await client.get("/notifications")).text
    theirs = (await client.get("/api/v1/me/notifications", headers=other.headers)).json()["items"][0]
    assert (await client.post(f"/notifications/{theirs['id']}/read", data={"csrf_token": csrf})).status_code == 404
    assert (await client.post(f"/notifications/{theirs['id']}/read", data={})).status_code == 403, "CSRF still"
    other_write = await client.post("/suppressions", data={"csrf_token": csrf, "kind": "address", "value": "x@x.io"})
    assert other_write.status_code == 403, "any other write of a read-only user is still refused"
