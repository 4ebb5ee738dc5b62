"""CSV import (docs/import.md) through `POST /api/v1/contacts/imports` (202, then the `imports` job) and the importer
service: good rows kept, bad rows reported with spreadsheet row numbers, encodings, delimiters, tags, modes and
batches. Background behaviour (progress, cancel, crash, XLSX, concurrency) is in test_imports.py."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
from sqlalchemy import select

from edm.contacts.importer import ImportReport, import_csv
from edm.contacts.imports import run_imports
from edm.db.session import unit_of_work
from edm.models.contacts import Contact
from tests.helpers import Account, make_account
from tests.helpers import expect_error as _error

API = "/api/v1"


async def _import(client: httpx.AsyncClient, who: Account, data: bytes, **options: Any) -> httpx.Response:
    """Post the file; once queued (202), run the worker's job and answer 202 with the finished import's counts
    and its errors CSV as a report: {total, created, updated, skipped, error_count, errors: [{row, column, …}]}."""
    r = await client.post(
        f"{API}/contacts/imports", files={"file": ("contacts.csv", data, "text/csv")}, data=options, headers=who.headers
    )
    if r.status_code != 202:
        return r
    await run_imports(client._transport.app.state.sessionmaker, worker_id="test")  # type: ignore[attr-defined]
    done = (await client.get(f"{API}/contacts/imports/{r.json()['id']}", headers=who.headers)).json()
    assert done["status"] == "completed", done
    text = (await client.get(f"{API}/contacts/imports/{done['id']}/errors", headers=who.headers)).text
    errors = [
        {"row": int(e["row"]), "column": e["column"], "message": e["message"], "value": e["value"]}
        for e in csv.DictReader(io.StringIO(text))
    ]
    return httpx.Response(
        202,
        json={
            "total": done["processed"],
            "created": done["created"],
            "updated": done["updated"],
            "skipped": done["skipped"],
            "error_count": done["errors"],
            "errors": errors,
        },
    )


async def _contacts(sessionmaker: Any, user_id: int) -> dict[str, Contact]:
    async with sessionmaker() as session:
        rows = await session.scalars(select(Contact).where(Contact.user_id == user_id))
        return {c.email_normalized: c for c in rows}


async def test_good_rows_kept_bad_rows_reported(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    long_name = "x" * 201
    data = (
        "email,first_name,Company,city,Status\n"
        "ann@example.org,Ann,Acme,Oslo,\n"
        "not-an-email,Bad,,,\n"
        ",NoEmail,,,\n"
        "\n"
        "ben@example.org,Ben,,Rome,inactive\n"
        "ANN@Example.org,Again,,,\n"
        f"cat@example.org,{long_name},,,\n"
        "dan@example.org,Dan,,,gone\n"
        'eve@example.org,"Eve, ""the"" first",,"multi\nline",\n'
        "fay@example.org,Fay,,,,surplus\n"
    ).encode()
    r = await _import(client, alice, data)
    assert r.status_code == 202, r.text
    report = r.json()
    assert (report["total"], report["created"], report["updated"], report["skipped"]) == (9, 3, 0, 6)
    assert report["error_count"] == 6
    errors = [(e["row"], e["column"]) for e in report["errors"]]
    assert errors == [(3, "email"), (4, "email"), (7, "email"), (8, "first_name"), (9, "Status"), (11, "")]
    messages = {e["row"]: e["message"] for e in report["errors"]}
    assert messages[4] == "missing email" and messages[7] == "duplicate of row 2"
    assert report["errors"][0]["value"] == "not-an-email" and report["errors"][2]["value"] == "ANN@Example.org"

    contacts = await _contacts(sessionmaker, alice.id)
    assert set(contacts) == {"ann@example.org", "ben@example.org", "eve@example.org"}
    ann = contacts["ann@example.org"]
    assert (ann.first_name, ann.company, ann.custom_attributes, ann.source) == (
        "Ann",
        "Acme",
        {"city": "Oslo"},
        "import",
    )
    assert ann.imported_at is not None and ann.status == "active"
    assert contacts["ben@example.org"].status == "inactive"
    assert contacts["eve@example.org"].first_name == 'Eve, "the" first'
    assert contacts["eve@example.org"].custom_attributes == {"city": "multi\nline"}


async def test_file_without_email_column_or_empty(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    error = _error(await _import(client, alice, b"name;phone\nAnn;123\n"), 422, "validation_error")
    assert error["headers"] == ["name", "phone"] and "name, phone" in error["message"]
    _error(await _import(client, alice, b""), 422, "validation_error")
    _error(await _import(client, alice, b"\n\n  \n"), 422, "validation_error")
    r = await _import(client, alice, b"email\n")  # a header and no rows is an empty import, not an error
    assert r.status_code == 202 and r.json()["total"] == 0


async def test_bom_semicolon_and_aliases(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    data = (
        "\ufeffE-Mail;FirstName;lastname;Mobile;Title;tikTokId;insId;youtubeId;Vorname\r\n"
        "ann@example.org;Ann;Lee;+47 1;CEO;ann.tt;ann.ig;ann.yt;Anna\r\n"
    ).encode()
    r = await _import(client, alice, data)
    assert r.status_code == 202, r.text
    assert r.json()["created"] == 1
    ann = (await _contacts(sessionmaker, alice.id))["ann@example.org"]
    assert (ann.first_name, ann.last_name, ann.phone, ann.position) == ("Ann", "Lee", "+47 1", "CEO")
    assert (ann.tiktok_unique_id, ann.instagram_id, ann.youtube_id) == ("ann.tt", "ann.ig", "ann.yt")
    assert ann.custom_attributes == {"Vorname": "Anna"}


async def test_tab_delimiter_given_or_sniffed(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await _import(client, alice, b"email\tname\nann@example.org\tAnn, Lee\n")
    assert r.json()["created"] == 1
    r = await _import(client, alice, b"email\nben@example.org\n", delimiter="tab")
    assert r.json()["created"] == 1
    _error(await _import(client, alice, b"email\n", delimiter="|"), 422, "validation_error")
    assert (await _contacts(sessionmaker, alice.id))["ann@example.org"].name == "Ann, Lee"


async def test_gb18030_needs_its_encoding(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    data = "email,name,城市\nann@example.org,张三,北京\n".encode("gb18030")
    error = _error(await _import(client, alice, data), 422, "validation_error")
    assert error["details"][0]["field"] == "encoding"
    r = await _import(client, alice, data, encoding="gb18030")
    assert r.status_code == 202, r.text
    ann = (await _contacts(sessionmaker, alice.id))["ann@example.org"]
    assert ann.name == "张三" and list(ann.custom_attributes.values()) == ["北京"]
    _error(await _import(client, alice, data, encoding="klingon-8"), 422, "validation_error")


async def test_tags_column_with_parent_child(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    vip = (await client.post(f"{API}/tags", json={"name": "VIP"}, headers=alice.headers)).json()["id"]
    data = (
        b"email,tags\n"
        b'ann@example.org,"VIP; Customers/EU"\n'
        b"ben@example.org,Customers/EU|Customers/US\n"
        b"cat@example.org,A/B/C\n"
    )
    r = await _import(client, alice, data)
    assert r.json()["created"] == 2
    assert [(e["row"], e["column"]) for e in r.json()["errors"]] == [(4, "tags")]
    tree = {t["name"]: t for t in (await client.get(f"{API}/tags/tree", headers=alice.headers)).json()}
    assert set(tree) == {"VIP", "Customers"} and tree["VIP"]["id"] == vip and tree["VIP"]["member_count"] == 1
    children = {c["name"]: c["member_count"] for c in tree["Customers"]["children"]}
    assert children == {"EU": 2, "US": 1} and tree["Customers"]["total_member_count"] == 2


async def test_update_existing_and_skip_existing(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    body = {
        "email": "ann@example.org",
        "first_name": "Ann",
        "company": "Old",
        "status": "pending",
        "custom_attributes": {"a": 1},
    }
    assert (await client.post(f"{API}/contacts", json=body, headers=alice.headers)).status_code == 201
    tag = (await client.post(f"{API}/tags", json={"name": "Imported"}, headers=alice.headers)).json()["id"]
    data = b"email,first_name,company,b,tags\nann@example.org,,NewCo,2,Fresh\nnew@example.org,New,,,\n"

    r = await _import(client, alice, data)  # skip_existing: Ann is left alone
    assert (r.json()["created"], r.json()["updated"], r.json()["skipped"]) == (1, 0, 1)
    assert (await _contacts(sessionmaker, alice.id))["ann@example.org"].company == "Old"

    r = await _import(client, alice, data, mode="update_existing", tag_ids=[str(tag)])
    assert (r.json()["created"], r.json()["updated"], r.json()["skipped"]) == (0, 2, 0)
    ann = (await _contacts(sessionmaker, alice.id))["ann@example.org"]
    assert (ann.first_name, ann.company, ann.status, ann.source) == ("Ann", "NewCo", "pending", "api")
    assert ann.custom_attributes == {"a": 1, "b": "2"}
    detail = (await client.get(f"{API}/contacts/{ann.id}", headers=alice.headers)).json()
    assert {t["name"] for t in detail["tags"]} == {"Imported", "Fresh"}
    assert (await client.get(f"{API}/tags/{tag}", headers=alice.headers)).json()["member_count"] == 2


async def test_bad_options_and_requests(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "reader", scope="read")
    theirs = (await client.post(f"{API}/tags", json={"name": "B"}, headers=bob.headers)).json()["id"]
    data = b"email\nann@example.org\n"
    error = _error(await _import(client, alice, data, tag_ids=str(theirs)), 422, "validation_error")
    assert error["details"][0]["field"] == "tag_ids" and str(theirs) in error["details"][0]["message"]
    _error(await _import(client, alice, data, mode="replace"), 422, "validation_error")
    assert (
        _error(await _import(client, alice, data, colour="red"), 422, "validation_error")["details"][0]["field"]
        == "colour"
    )
    _error(await _import(client, alice, b"PK\x03\x04rest-of-a-zip"), 422, "validation_error")  # not a workbook
    r = await client.post(f"{API}/contacts/imports", json={"file": "x"}, headers=alice.headers)
    _error(r, 415, "unsupported_media_type")
    r = await client.post(
        f"{API}/contacts/imports", data={"mode": "skip_existing"}, files={"other": ("x", b"1")}, headers=alice.headers
    )
    _error(r, 422, "validation_error")
    _error(await _import(client, reader, data), 403, "forbidden")
    assert await _contacts(sessionmaker, alice.id) == {}


async def test_service_batches_and_leaves_the_stream_open(sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    lines = ["email"] + [f"c{i}@example.org" for i in range(7)] + ["c3@example.org"]
    stream = io.BytesIO("\n".join(lines).encode())
    seen: list[tuple[int, int]] = []

    async def progress(report: ImportReport) -> None:
        seen.append((report.total, report.created))

    async with unit_of_work(sessionmaker) as session:
        report = await import_csv(session, user_id=alice.id, stream=stream, batch_size=3, on_batch=progress)
    assert seen == [(3, 3), (6, 6), (8, 7)]
    assert (report.total, report.created, report.skipped, report.error_count) == (8, 7, 1, 1)
    assert report.errors[0].row == 9 and report.errors[0].message == "duplicate of row 5"
    assert not stream.closed
    assert len(await _contacts(sessionmaker, alice.id)) == 7


async def test_declared_size_over_the_limit_is_413(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    request = client.build_request(
        "POST",
        f"{API}/contacts/imports",
        files={"file": ("c.csv", b"email\n")},
        headers={**alice.headers, "Content-Length": str(300 * 1024 * 1024)},
    )
    _error(await client.send(request), 413, "too_large")
