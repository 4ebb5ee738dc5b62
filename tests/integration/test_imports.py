"""Background contact imports (docs/import.md): 202 then the `imports` job; progress and counts, the errors CSV,
XLSX cells, cancel between batches, a crashed import marked failed and re-run without duplicates, concurrent
job runs that never share an import, tenant isolation and roles."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from sqlalchemy import func, select, update

from edm.clock import utc_now
from edm.contacts import imports
from edm.db.session import unit_of_work
from edm.models.contacts import Contact, Import, ImportChunk, ImportRowError
from edm.models.system import Notification
from edm.models.users import Role
from tests.helpers import Account, create_contact, make_account
from tests.helpers import run_cli as _edm

URL = "/api/v1/contacts/imports"


class Crash(BaseException):
    """Stands for the worker process dying in the middle of an import (nothing after it runs)."""


async def _post(
    client: httpx.AsyncClient, who: Account, data: bytes, name: str = "contacts.csv", **options: Any
) -> httpx.Response:
    return await client.post(
        URL, files={"file": (name, data, "application/octet-stream")}, data=options, headers=who.headers
    )


async def _queued(client: httpx.AsyncClient, who: Account, data: bytes, **options: Any) -> int:
    r = await _post(client, who, data, **options)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    return int(r.json()["id"])


async def _get(client: httpx.AsyncClient, who: Account, import_id: int) -> dict[str, Any]:
    r = await client.get(f"{URL}/{import_id}", headers=who.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _count(sessionmaker: Any, model: Any, *where: Any) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def _claim(sessionmaker: Any) -> int:
    async with unit_of_work(sessionmaker) as session:
        import_id = await imports.claim_next(session, worker_id="test", now=utc_now())
    assert import_id is not None
    return import_id


def _csv(n: int, *, start: int = 0) -> bytes:
    return ("email,first_name\n" + "".join(f"c{i}@example.org,C{i}\n" for i in range(start, start + n))).encode()


async def test_one_percent_bad_rows_are_reported_and_good_rows_kept(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    lines = ["email,first_name"]
    for i in range(1000):
        if i % 100 == 7:
            lines.append(f"=bad{i}(),Bad")  # invalid, and a formula for a spreadsheet
        elif i % 100 == 50:
            lines.append("c1@example.org,Again")  # a repeat of row 3
        else:
            lines.append(f"c{i}@example.org,C{i}")
    import_id = await _queued(client, alice, ("\n".join(lines) + "\n").encode())
    assert await imports.run_imports(sessionmaker, worker_id="w1", batch_size=300) == 1

    done = await _get(client, alice, import_id)
    assert (done["status"], done["total_rows"], done["processed"]) == ("completed", 1000, 1000)
    assert (done["created"], done["skipped"], done["errors"]) == (980, 20, 20)
    assert done["finished_at"] is not None and done["format"] == "csv"
    assert await _count(sessionmaker, Contact, Contact.user_id == alice.id) == 980

    r = await client.get(f"{URL}/{import_id}/errors", headers=alice.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 20
    assert rows[0] == {"row": "9", "column": "email", "value": "'=bad7()", "message": rows[0]["message"]}
    assert "email" in rows[0]["message"]
    assert rows[1] == {"row": "52", "column": "email", "value": "c1@example.org", "message": "duplicate of row 3"}
    assert [int(e["row"]) for e in rows] == sorted(int(e["row"]) for e in rows)
    assert await _count(sessionmaker, ImportChunk, ImportChunk.import_id == import_id) == 0  # file dropped
    assert (
        await _count(
            sessionmaker, Notification, Notification.user_id == alice.id, Notification.kind == "import_finished"
        )
        == 1
    )


async def test_file_without_email_column_fails_at_once(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    r = await _post(client, alice, b"name;phone\nAnn;123\n")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["headers"] == ["name", "phone"]
    r = await _post(client, alice, b"Name,Mail\nAnn,ann@example.org\n", mapping='{"Mail": "ignore"}')
    assert r.status_code == 422 and r.json()["error"]["headers"] == ["Name", "Mail"]
    r = await _post(client, alice, b"Name,Mail\n", mapping='{"Nope": "email"}')
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "mapping.Nope"
    assert await _count(sessionmaker, Import) == 0 and await _count(sessionmaker, ImportChunk) == 0


async def test_mapping_and_ignored_columns(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    data = b"Who,Handy,Extra,Colour\nann@example.org,+47 1,x,red\n"
    await _queued(
        client,
        alice,
        data,
        mapping='{"Who": "email", "Handy": "phone", "Colour": "attributes.color"}',
        ignore_unknown_columns="true",
    )
    await imports.run_imports(sessionmaker, worker_id="w1")
    async with sessionmaker() as session:
        ann = await session.scalar(select(Contact).where(Contact.user_id == alice.id))
    assert ann is not None and (ann.email, ann.phone, ann.custom_attributes) == (
        "ann@example.org",
        "+47 1",
        {"color": "red"},
    )


async def test_the_contacts_an_import_wrote_are_listed_by_its_id(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    """`GET /contacts?import_id=` lists what an import created or (update_existing) updated, not the rest."""
    alice = await make_account(sessionmaker, "alice")
    await create_contact(client, alice, "kept@example.org")
    first = await _queued(client, alice, b"email\nann@example.org\nbob@example.org\n")
    await imports.run_imports(sessionmaker, worker_id="w1")
    second = await _queued(
        client, alice, b"email,company\nbob@example.org,Acme\ncid@example.org,\n", mode="update_existing"
    )
    await imports.run_imports(sessionmaker, worker_id="w1")

    async def listed(import_id: int) -> list[str]:
        r = await client.get("/api/v1/contacts", params={"import_id": import_id}, headers=alice.headers)
        assert r.status_code == 200, r.text
        return sorted(c["email"] for c in r.json()["items"])

    assert await listed(first) == ["ann@example.org"], "bob was updated by the second import since"
    assert await listed(second) == ["bob@example.org", "cid@example.org"]


async def test_xlsx_numbers_stay_text(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    book = openpyxl.Workbook()
    book.active.title = "Notes"
    book.active.append(["not the data"])
    sheet = book.create_sheet("People")
    sheet.append(["Email", "Mobile", "Joined", "Code", "Score"])
    sheet.append(["ann@example.org", 8613800138000, dt.datetime(2024, 5, 1), "007", 2.5])
    sheet.append(["ben@example.org", 447700900123.0, dt.date(2023, 1, 2), 12, None])
    sheet.append(["not-an-email", "123", None, None, None])
    buffer = io.BytesIO()
    book.save(buffer)
    data = buffer.getvalue()

    r = await _post(client, alice, data, name="people.xlsx", sheet="Nope")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "sheet"
    import_id = await _queued(client, alice, data, sheet="People")
    await imports.run_imports(sessionmaker, worker_id="w1")
    done = await _get(client, alice, import_id)
    assert (done["format"], done["status"], done["created"], done["errors"]) == ("xlsx", "completed", 2, 1)
    async with sessionmaker() as session:
        found = {c.email: c for c in await session.scalars(select(Contact).where(Contact.user_id == alice.id))}
    assert found["ann@example.org"].phone == "8613800138000"
    assert found["ben@example.org"].phone == "447700900123"
    assert found["ann@example.org"].custom_attributes == {"Joined": "2024-05-01", "Code": "007", "Score": "2.5"}
    assert found["ben@example.org"].custom_attributes == {"Joined": "2023-01-02", "Code": "12"}
    errors = (await client.get(f"{URL}/{import_id}/errors", headers=alice.headers)).text
    assert errors.splitlines()[1].startswith("4,Email,not-an-email,")


async def test_cancel_keeps_committed_rows(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    import_id = await _queued(client, alice, _csv(30))
    await _claim(sessionmaker)
    batches: list[int] = []

    async def cancel_after_first(row: Import) -> None:
        batches.append(row.processed)
        if len(batches) == 1:
            assert (await client.post(f"{URL}/{import_id}/cancel", headers=alice.headers)).status_code == 200

    status = await imports.run_import(sessionmaker, import_id, batch_size=10, on_progress=cancel_after_first)
    assert status == "cancelled" and batches == [10]  # the second batch saw the cancel and was rolled back
    done = await _get(client, alice, import_id)
    assert (done["status"], done["processed"], done["created"]) == ("cancelled", 10, 10)
    assert await _count(sessionmaker, Contact, Contact.user_id == alice.id) == 10
    r = await client.post(f"{URL}/{import_id}/cancel", headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["current_status"] == "cancelled"

    queued = await _queued(client, alice, _csv(5))  # a queued import is cancelled before any worker sees it
    assert (await client.post(f"{URL}/{queued}/cancel", headers=alice.headers)).json()["status"] == "cancelled"
    assert await _count(sessionmaker, ImportChunk, ImportChunk.import_id == queued) == 0
    assert await imports.run_imports(sessionmaker, worker_id="w1") == 0


async def test_stale_heartbeat_fails_and_a_rerun_completes_without_duplicates(
    client: httpx.AsyncClient, sessionmaker: Any
) -> None:
    alice = await make_account(sessionmaker, "alice")
    data = _csv(30)
    import_id = await _queued(client, alice, data)
    await _claim(sessionmaker)

    async def crash_after_first(row: Import) -> None:
        raise Crash

    with pytest.raises(Crash):
        await imports.run_import(sessionmaker, import_id, batch_size=10, on_progress=crash_after_first)
    assert (await _get(client, alice, import_id))["status"] == "running"
    await imports.run_imports(sessionmaker, worker_id="w2")  # heartbeat still fresh: left alone
    assert (await _get(client, alice, import_id))["status"] == "running"

    async with unit_of_work(sessionmaker) as session:
        await session.execute(
            update(Import).where(Import.id == import_id).values(heartbeat_at=utc_now() - dt.timedelta(minutes=3))
        )
    await imports.run_imports(sessionmaker, worker_id="w2")
    failed = await _get(client, alice, import_id)
    assert (failed["status"], failed["processed"], failed["created"]) == ("failed", 10, 10)
    assert "re-run" in failed["message"] and failed["finished_at"] is not None

    again = await _queued(client, alice, data, mode="skip_existing")
    await imports.run_imports(sessionmaker, worker_id="w2")
    done = await _get(client, alice, again)
    assert (done["status"], done["created"], done["skipped"], done["errors"]) == ("completed", 20, 10, 0)
    assert await _count(sessionmaker, Contact, Contact.user_id == alice.id) == 30


async def test_concurrent_job_runs_never_share_an_import(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    ids = [await _queued(client, alice, _csv(50, start=100 * n)) for n in range(4)]
    done = await asyncio.gather(
        *(imports.run_imports(sessionmaker, worker_id=f"w{n}", batch_size=20) for n in range(3))
    )
    assert sum(done) == 4
    for import_id in ids:
        row = await _get(client, alice, import_id)
        assert (row["status"], row["processed"], row["created"], row["skipped"]) == ("completed", 50, 50, 0)
    assert await _count(sessionmaker, Contact, Contact.user_id == alice.id) == 200
    assert await _count(sessionmaker, ImportRowError) == 0


async def test_claim_skips_an_import_another_worker_holds(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    first = await _queued(client, alice, _csv(1))
    async with sessionmaker() as one, sessionmaker() as two:
        assert await imports.claim_next(one, worker_id="a", now=utc_now()) == first
        if one.bind.dialect.name == "postgresql":  # one's row lock is held: two skips it instead of waiting
            assert await imports.claim_next(two, worker_id="b", now=utc_now()) is None
            await two.rollback()
        await one.commit()
        assert await imports.claim_next(two, worker_id="b", now=utc_now()) is None  # the status CAS
        await two.commit()


async def test_other_users_and_read_only(client: httpx.AsyncClient, sessionmaker: Any) -> None:
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    reader = await make_account(sessionmaker, "reader", role=Role.READ_ONLY)
    import_id = await _queued(client, alice, _csv(3))
    for method, path in (
        ("GET", f"{URL}/{import_id}"),
        ("GET", f"{URL}/{import_id}/errors"),
        ("POST", f"{URL}/{import_id}/cancel"),
    ):
        r = await client.request(method, path, headers=bob.headers)
        assert r.status_code == 404, (path, r.text)
    assert (await client.get(URL, headers=bob.headers)).json()["items"] == []
    listed = (await client.get(URL, params={"limit": 1}, headers=alice.headers)).json()
    assert [i["id"] for i in listed["items"]] == [import_id] and listed["next_cursor"] is None

    r = await _post(client, reader, _csv(1))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await client.get(URL, headers=reader.headers)).status_code == 200
    r = await _post(client, alice, _csv(1), colour="red")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "colour"
    r = await _post(client, alice, _csv(1), mapping="[1]")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "mapping"


async def test_cli_import_processes_in_process_and_reports(db_url: str, sessionmaker: Any, tmp_path: Path) -> None:
    alice = await make_account(sessionmaker, "alice")
    good = tmp_path / "people.csv"
    good.write_bytes(b"email,phone\nann@example.org,1\nbad,2\nann@example.org,3\nben@example.org,4\n")
    result = await asyncio.to_thread(
        _edm, db_url, "contact", "import", str(good), "--user", alice.username, "--tag", "VIP"
    )
    assert result.returncode == 0, result.stderr
    assert "completed: 4 rows, 2 created, 0 updated, 2 skipped, 2 errors" in result.stdout
    assert "row 3, email:" in result.stdout and "row 4, email: duplicate of row 2" in result.stdout
    async with sessionmaker() as session:
        row = await session.scalar(select(Import).where(Import.user_id == alice.id))
    assert row is not None and (row.status, row.created, row.worker_id[:4]) == ("completed", 2, "cli:")

    bad = tmp_path / "names.csv"
    bad.write_bytes(b"name,phone\nAnn,1\n")
    result = await asyncio.to_thread(_edm, db_url, "contact", "import", str(bad), "--user", alice.username)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: the file has no email column; headers found: name, phone"]
