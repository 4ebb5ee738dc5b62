"""The import pages of the console over the ASGI app (no browser): the preview and its mapping, the import started
with that mapping, its progress and error file, the inline errors (no email column, too large, no file), and what
a read-only account may do. tests/browser/test_new_user_flow.py drives the whole flow in Chromium."""

from __future__ import annotations

import re
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.contacts import imports
from edm.models.contacts import Contact
from tests.helpers import api_client, console_log_in, create_tag, field_error, make_account

HTML = {"Accept": "text/html"}
CSV = "Mail,Vorname,Stadt\nann@example.com,Ann,Paris\nnot-an-address,Bob,Rome\ncy@example.com,Cy,Oslo\n"


async def test_a_preview_maps_the_columns_and_the_import_follows_the_mapping(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    vip = await create_tag(client, alice, "VIP")
    files = {"file": ("people.csv", CSV.encode(), "text/csv")}

    # htmx posts the preview with the CSRF header: the answer (200) carries the preview section
    hx = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    preview = await client.post("/contacts/import/preview", files=files, data={"tag_ids": str(vip)}, headers=hx)
    assert preview.status_code == 200
    page = preview.text
    assert 'id="preview"' in page and "ann@example.com" in page and "not-an-address" in page
    assert re.search(r'<option value="email" selected>', page), "Mail is recognised as the email"
    assert '<option value="attributes.Vorname" selected>' in page
    assert "Choose the file" not in page, "htmx keeps the file in its input"

    data: dict[str, Any] = {
        "csrf_token": csrf,
        "tag_ids": str(vip),
        "mode": "skip_existing",
        "header_0": "Mail",
        "map_0": "email",
        "header_1": "Vorname",
        "map_1": "first_name",
        "header_2": "Stadt",
        "map_2": "ignore",
    }
    started = await client.post("/contacts/import", files=files, data=data)
    assert started.status_code == 303
    progress_url = started.headers["location"]
    import_id = int(progress_url.rsplit("/", 1)[1])
    running = (await client.get(progress_url)).text
    assert f'data-poll="/api/v1/contacts/imports/{import_id}"' in running and "Waiting for a worker" in running

    assert await imports.run_imports(sessionmaker, worker_id="w1") == 1
    done = (await client.get(progress_url)).text
    assert "data-poll" not in done and "Completed" in done
    assert re.search(r'id="count-created" data-field="created">2<', done)
    assert re.search(r'id="count-errors" data-field="errors">1<', done)
    assert f'href="/api/v1/contacts/imports/{import_id}/errors"' in done
    errors = await client.get(f"/api/v1/contacts/imports/{import_id}/errors")
    assert errors.status_code == 200 and "not-an-address" in errors.text
    async with sessionmaker() as session:
        ann = await session.scalar(select(Contact).where(Contact.email == "ann@example.com"))
    assert ann is not None and ann.first_name == "Ann" and ann.custom_attributes == {}, "the mapping was followed"
    listed = (await client.get("/contacts/imports")).text
    assert f'href="/contacts/imports/{import_id}"' in listed and "people.csv" in listed
    assert "ann@example.com" in (await client.get(f"/contacts?import={import_id}")).text


async def test_upload_errors_show_beside_the_file_and_keep_the_options(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    csrf = await console_log_in(client, alice)
    none = await client.post("/contacts/import", data={"csrf_token": csrf, "mode": "update_existing"})
    assert none.status_code == 422 and field_error(none.text, "file") == "Choose a file."
    assert '<option value="update_existing" selected>' in none.text

    no_email = {"file": ("x.csv", b"who,city\nann,Paris\n", "text/csv")}
    answer = await client.post("/contacts/import", files=no_email, data={"csrf_token": csrf})
    assert answer.status_code == 422
    assert field_error(answer.text, "file") == "Choose a CSV or XLSX file with a header row and an email column."
    twice = {"csrf_token": csrf, "header_0": "Mail", "map_0": "email", "header_1": "Vorname", "map_1": "email"}
    answer = await client.post("/contacts/import", files={"file": ("p.csv", CSV.encode())}, data=twice)
    assert answer.status_code == 422 and "Map one column to Email" in answer.text

    # a plain (no-JavaScript) preview works too, and asks for the file again
    plain = await client.post("/contacts/import/preview", files=no_email, data={"csrf_token": csrf})
    assert plain.status_code == 200 and "No column was recognised as the email address" in plain.text
    assert "Choose the file “x.csv” again" in plain.text


async def test_a_file_over_the_limit_is_refused_with_the_limit_named(
    db_url: str, engine: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await make_account(sessionmaker, "alice")
    async with api_client(db_url, engine, import_max_bytes=1024 * 1024) as client:
        csrf = await console_log_in(client, alice)
        big = {"file": ("big.csv", b"email\n" + b"a@example.com\n" * 80_000, "text/csv")}
        answer = await client.post("/contacts/import", files=big, data={"csrf_token": csrf})
        assert answer.status_code == 413 and field_error(answer.text, "file") == "The file is larger than 1 MB."
        hx = {"X-CSRF-Token": csrf, "HX-Request": "true"}
        answer = await client.post("/contacts/import/preview", files=big, headers=hx)
        assert answer.status_code == 200 and "The file is larger than 1 MB." in answer.text


async def test_a_read_only_account_sees_no_upload_form_and_cannot_post(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await make_account(sessionmaker, "reader", role="read_only")
    csrf = await console_log_in(client, reader)
    page = (await client.get("/contacts/import")).text
    assert 'id="import-form"' not in page and "Your account can look but not change anything." in page
    files = {"file": ("people.csv", CSV.encode(), "text/csv")}
    for path in ("/contacts/import", "/contacts/import/preview", "/contacts/imports/1/cancel"):
        refused = await client.post(path, files=files, data={"csrf_token": csrf}, headers=HTML)
        assert refused.status_code == 403, path
