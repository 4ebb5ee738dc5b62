"""The admin console's service access (/admin/mappings), queue (/admin/queue) and overview (/admin) over the ASGI
app: the matrix and the batch form change mappings through the API's services and are audited as the API audits
them, bad batch input is refused beside its fields with what was typed kept, pause-all and resume-all are audited,
the overview's alerts link to the page that fixes them, and a plain user gets 404 for every page and form.
tests/browser/test_admin_operations.py drives the pages in Chromium."""

from __future__ import annotations

import html
import json
import re

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.console.pages import PAGES
from edm.db.session import unit_of_work
from tests import factories
from tests.helpers import Account, console_log_in, field_error, make_account, page_field, settings_for


async def _active(client: httpx.AsyncClient, admin: Account, user: Account) -> set[int]:
    listed = await client.get(f"/api/v1/admin/mappings?user_id={user.id}", headers=admin.headers)
    assert listed.status_code == 200
    return {m["service_id"] for m in listed.json()["items"] if m["is_active"]}


async def _audit(client: httpx.AsyncClient, admin: Account, action: str) -> list[dict[str, object]]:
    found = await client.get(f"/api/v1/admin/audit-log?action={action}", headers=admin.headers)
    assert found.status_code == 200
    rows: list[dict[str, object]] = found.json()["items"]
    return rows


async def test_a_plain_user_gets_404_for_every_page_and_form(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    kim = await make_account(sessionmaker, "kim")
    csrf = await console_log_in(client, kim)
    for path in ("/admin", "/admin/mappings", "/admin/queue"):
        assert (await client.get(path)).status_code == 404, path
    for path in (
        "/admin/mappings/matrix",
        "/admin/mappings/batch",
        "/admin/queue/pause-all",
        "/admin/queue/resume-all",
    ):
        data = {"csrf_token": csrf, "row": str(kim.id), "user_ids": str(kim.id), "service_ids": "1", "operation": "add"}
        assert (await client.post(path, data=data)).status_code == 404, path
    assert (await client.get("/api/v1/admin/queue", headers=kim.headers)).status_code == 403


async def test_the_matrix_and_the_batch_form_change_access_as_the_api_does(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    root = await make_account(sessionmaker, "root", role="admin")
    alice = await make_account(sessionmaker, "alice")
    bob = await make_account(sessionmaker, "bob")
    async with unit_of_work(sessionmaker) as session:
        one = await factories.service(session, settings_for(db_url), "one")
        two = await factories.service(session, settings_for(db_url), "two", map_to=[bob.id])
    csrf = await console_log_in(client, root)

    page = await client.get("/admin/mappings")
    assert page.status_code == 200
    assert f'name="m" value="{bob.id}:{two}" checked' in page.text
    assert f'name="m" value="{alice.id}:{one}" aria-label' in page.text  # not ticked
    assert re.findall(r'<a href="(/admin[^"]*)" aria-current="page">', page.text) == ["/admin/mappings"]
    assert ">two</th>" in page.text and "<small>disabled</small>" not in page.text

    # The matrix: alice gets "one"; bob's row is unchanged, so only alice's change is audited.
    matrix = {
        "csrf_token": csrf,
        "cursor": "",
        "row": [str(alice.id), str(bob.id)],
        "m": [f"{alice.id}:{one}", f"{bob.id}:{two}"],
    }
    saved = await client.post("/admin/mappings/matrix", data=matrix)
    assert saved.status_code == 303 and saved.headers["location"] == "/admin/mappings?notice=saved"
    assert await _active(client, root, alice) == {one} and await _active(client, root, bob) == {two}
    [row] = await _audit(client, root, "mapping.set_user_services")
    assert row["target_id"] == str(alice.id) and row["details"] == {"service_ids": [one]}
    assert row["actor_user_id"] == root.id and row["actor_kind"] == "session"
    again = await client.post("/admin/mappings/matrix", data=matrix)
    assert again.headers["location"] == "/admin/mappings?notice=unchanged"
    assert len(await _audit(client, root, "mapping.set_user_services")) == 1

    # Batch "add": bob ticked in the table, alice named in the text field; one mapping.assign row for the call.
    added = await client.post(
        "/admin/mappings/batch",
        data={
            "csrf_token": csrf,
            "user_ids": str(bob.id),
            "users": "alice",
            "service_ids": [str(one), str(two)],
            "operation": "add",
        },
    )
    assert added.status_code == 303 and added.headers["location"] == "/admin/mappings?notice=add"
    assert await _active(client, root, alice) == {one, two} and await _active(client, root, bob) == {one, two}
    [assign] = await _audit(client, root, "mapping.assign")
    assert assign["details"] == {
        "user_ids": sorted([alice.id, bob.id]),
        "service_ids": sorted([one, two]),
        "is_active": True,
        "mappings": 4,
    }
    shown = html.unescape((await client.get("/admin/mappings?notice=add")).text)
    assert "The chosen services were added to the chosen users." in shown

    removed = await client.post(
        "/admin/mappings/batch",
        data={"csrf_token": csrf, "users": "alice@example.com", "service_ids": str(one), "operation": "remove"},
    )
    assert removed.status_code == 303 and await _active(client, root, alice) == {two}
    exact = await client.post(
        "/admin/mappings/batch",
        data={"csrf_token": csrf, "users": f"{bob.id}", "service_ids": str(one), "operation": "set"},
    )
    assert exact.status_code == 303 and await _active(client, root, bob) == {one}
    assert [r["target_id"] for r in await _audit(client, root, "mapping.set_user_services")] == [
        str(bob.id),
        str(alice.id),
    ]

    # Bad input: an unknown user and no service, refused beside the fields, what was typed and ticked kept.
    bad = await client.post(
        "/admin/mappings/batch",
        data={"csrf_token": csrf, "user_ids": str(alice.id), "users": "nobody", "operation": "set"},
    )
    assert bad.status_code == 422
    assert field_error(bad.text, "users") == "No user is called “nobody”."
    assert field_error(bad.text, "service_ids") == "Choose at least one service."
    assert page_field(bad.text, "users") == "nobody"
    assert f'name="user_ids" value="{alice.id}" form="batch" checked' in bad.text
    assert 'name="operation" value="set" checked' in bad.text
    nobody = await client.post(
        "/admin/mappings/batch", data={"csrf_token": csrf, "service_ids": str(one), "operation": "add"}
    )
    assert nobody.status_code == 422 and field_error(nobody.text, "users") == "Choose at least one user."
    assert f'name="service_ids" value="{one}" checked' in nobody.text
    gone = await client.post(
        "/admin/mappings/batch",
        data={"csrf_token": csrf, "users": "alice", "service_ids": "999999", "operation": "add"},
    )
    assert gone.status_code == 422
    assert field_error(gone.text, "service_ids") == "That service no longer exists: reload the page."
    assert await _active(client, root, alice) == {two}, "nothing written by a refused batch"
    assert len(await _audit(client, root, "mapping.assign")) == 2


async def test_the_matrix_pages_by_users(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    root = await make_account(sessionmaker, "root", role="admin")
    async with unit_of_work(sessionmaker) as session:
        for n in range(26):
            await factories.user(session, f"user{n:02d}")
        await factories.service(session, settings_for(db_url), "one")
    await console_log_in(client, root)
    first = await client.get("/admin/mappings")
    assert "user23" in first.text and "user24" not in first.text
    cursor = re.search(r'href="/admin/mappings\?cursor=([^"]+)"', first.text)
    assert cursor is not None
    second = await client.get(f"/admin/mappings?cursor={cursor.group(1)}")
    assert "user24" in second.text and "user25" in second.text and "user23" not in second.text
    assert page_field(second.text, "cursor") == cursor.group(1)


async def test_pause_all_and_resume_all_are_asked_first_and_audited(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    root = await make_account(sessionmaker, "root", role="admin")
    async with unit_of_work(sessionmaker) as session:
        await factories.service(session, settings_for(db_url), "one")
    csrf = await console_log_in(client, root)
    page = await client.get("/admin/queue")
    assert page.status_code == 200
    assert 'action="/admin/queue/pause-all" class="inline" data-confirm=' in page.text
    assert 'data-poll="/api/v1/admin/queue"' in page.text and "No worker has started yet" in html.unescape(page.text)
    assert 'data-field="services.0.in_flight"' in page.text

    paused = await client.post("/admin/queue/pause-all", data={"csrf_token": csrf})
    assert paused.status_code == 303 and paused.headers["location"] == "/admin/queue?notice=paused"
    assert (await client.get("/api/v1/admin/queue", headers=root.headers)).json()["sending_paused"] is True
    shown = await client.get("/admin/queue?notice=paused")
    assert "All sending is paused." in shown.text and 'action="/admin/queue/resume-all"' in shown.text
    twice = await client.post("/admin/queue/pause-all", data={"csrf_token": csrf})
    assert twice.headers["location"] == "/admin/queue?notice=already_paused"
    rows = await _audit(client, root, "queue.pause_all")
    assert len(rows) == 2 and all(r["actor_kind"] == "session" and r["actor_user_id"] == root.id for r in rows)

    resumed = await client.post("/admin/queue/resume-all", data={"csrf_token": csrf})
    assert resumed.status_code == 303 and resumed.headers["location"] == "/admin/queue?notice=resumed"
    assert (await client.get("/api/v1/admin/queue", headers=root.headers)).json()["sending_paused"] is False
    assert len(await _audit(client, root, "queue.resume_all")) == 1
    no_csrf = await client.post("/admin/queue/pause-all", data={})
    assert no_csrf.status_code == 403


async def test_the_overview_shows_services_credit_and_alerts_linking_to_built_pages(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    root = await make_account(sessionmaker, "root", role="admin", credit=500)
    async with unit_of_work(sessionmaker) as session:
        await factories.service(session, settings_for(db_url), "one")
    csrf = await console_log_in(client, root)
    calm = await client.get("/admin")
    assert calm.status_code == 200 and "Nothing needs an admin now." in calm.text
    assert ">one</th>" in calm.text and "Available" in calm.text
    chart = re.search(r'<script type="application/json" id="chart-credit-data">(.*?)</script>', calm.text, re.S)
    assert chart is not None
    data = json.loads(chart.group(1))
    assert len(data["labels"]) == 7 and [s["key"] for s in data["series"]][:2] == ["granted", "revoked"]
    assert sum(data["series"][0]["values"]) == 500  # the 500 credits granted at creation

    await client.post("/admin/queue/pause-all", data={"csrf_token": csrf})
    alerted = await client.get("/admin")
    banner = re.search(r'<div class="alert error admin-alert" role="status">(.*?)</div>', alerted.text, re.S)
    assert banner is not None and "All sending is paused." in banner.group(1)
    assert '<a href="/admin/queue">Open the queue</a>' in banner.group(1)
    # Every link of the page goes to a page that exists (a page not built yet is text marked "soon").
    for key, page in PAGES.items():
        if key.startswith("admin_") and not page.built:
            assert f'href="{page.path}"' not in alerted.text, key
