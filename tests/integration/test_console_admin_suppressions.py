"""The global suppression list's page (/admin/suppressions) over the ASGI app: admins only (a user gets 404 on every
GET and POST); the user-side page's template and helpers over the global list: add (a bad address is a 422 beside
the field, what was typed kept), remove with a reason after a confirmation page, import a CSV, export, check an
address; each write audited as the API's /admin/suppressions handlers audit it."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.models.system import AuditLog
from tests.helpers import console_log_in, field_error, make_account, page_field


async def _global(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    answer = await client.get("/api/v1/admin/suppressions", headers=headers)
    return sorted(e["value"] for e in answer.json()["items"])


async def test_an_admin_manages_the_global_list_audited_and_users_get_404(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "gloria", role="admin")
    user = await make_account(sessionmaker, "uma")

    csrf = await console_log_in(client, user)
    assert (await client.get("/admin/suppressions")).status_code == 404
    for path, data in (
        ("/admin/suppressions", {"kind": "address", "value": "x@example.com"}),
        ("/admin/suppressions/import", {}),
        ("/admin/suppressions/1/remove", {"reason": "x"}),
    ):
        assert (await client.post(path, data={"csrf_token": csrf, **data})).status_code == 404
    assert (await client.get("/admin/suppressions/1/remove")).status_code == 404

    csrf = await console_log_in(client, admin)
    page = (await client.get("/admin/suppressions")).text
    assert "The global list is empty." in page and "/api/v1/admin/suppressions/export?bom=true" in page

    bad = await client.post(
        "/admin/suppressions", data={"csrf_token": csrf, "kind": "address", "value": "not-an-email"}
    )
    assert bad.status_code == 422 and field_error(bad.text, "value")
    assert page_field(bad.text, "value") == "not-an-email"
    added = await client.post(
        "/admin/suppressions", data={"csrf_token": csrf, "kind": "domain", "value": "spam.example", "note": "abuse"}
    )
    assert added.status_code == 303 and added.headers["location"] == "/admin/suppressions?notice=added"
    imported = await client.post(
        "/admin/suppressions/import",
        data={"csrf_token": csrf},
        files={"file": ("list.csv", b"email\nann@example.org\nbroken\n", "text/csv")},
    )
    assert imported.status_code == 200 and "1 added" in imported.text
    assert await _global(client, admin.headers) == ["ann@example.org", "spam.example"]
    # the user's own list is untouched
    assert (await client.get("/api/v1/suppressions", headers=user.headers)).json()["items"] == []

    checked = (await client.get("/admin/suppressions?check=bob@spam.example")).text
    assert "bob@spam.example is blocked" in checked and "The global list" in checked
    listed = (await client.get("/admin/suppressions?q=spam")).text
    assert "spam.example" in listed and "ann@example.org" not in listed

    entries = (await client.get("/api/v1/admin/suppressions", headers=admin.headers)).json()["items"]
    entry_id = next(e["id"] for e in entries if e["value"] == "spam.example")
    confirm = await client.get(f"/admin/suppressions/{entry_id}/remove")
    assert "Remove “spam.example” from the global list?" in confirm.text
    no_reason = await client.post(f"/admin/suppressions/{entry_id}/remove", data={"csrf_token": csrf, "reason": " "})
    assert no_reason.status_code == 422 and field_error(no_reason.text, "reason") == "Say why the entry is removed."
    removed = await client.post(f"/admin/suppressions/{entry_id}/remove", data={"csrf_token": csrf, "reason": "fixed"})
    assert removed.status_code == 303 and removed.headers["location"] == "/admin/suppressions?notice=removed"
    assert await _global(client, admin.headers) == ["ann@example.org"]

    async with sessionmaker() as session:
        rows = list(await session.scalars(select(AuditLog).where(AuditLog.action.startswith("suppression."))))
    assert sorted(r.action for r in rows) == ["suppression.add", "suppression.import", "suppression.remove"]
    assert all(r.actor_user_id == admin.id and r.actor_kind == "session" for r in rows)
