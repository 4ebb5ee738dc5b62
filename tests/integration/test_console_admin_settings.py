"""The settings page (/admin/settings) over the ASGI app: admins only (a user gets 404 on GET and POST); every
setting with its value, default and description; a change is saved through the settings service (audited as
`settings.update` with old and new value, like PATCH /api/v1/admin/settings); a bad value changes nothing and is a
422 beside its field with what was typed kept."""

from __future__ import annotations

import html
import re

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.models.system import AuditLog
from tests.helpers import console_log_in, field_error, make_account, page_field


async def _values(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, object]:
    answer = await client.get("/api/v1/admin/settings", headers=headers)
    return {s["key"]: s["value"] for s in answer.json()["items"]}


async def test_an_admin_changes_settings_audited_and_bad_values_are_refused_beside_the_field(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "sette", role="admin")
    user = await make_account(sessionmaker, "ugo")

    csrf = await console_log_in(client, user)
    assert (await client.get("/admin/settings")).status_code == 404
    refused = await client.post("/admin/settings", data={"csrf_token": csrf, "bounce.soft_limit": "9"})
    assert refused.status_code == 404
    assert (await _values(client, admin.headers))["bounce.soft_limit"] == 3

    csrf = await console_log_in(client, admin)
    page = (await client.get("/admin/settings")).text
    assert "Soft bounces in a row that suppress an address." in page and "Default: 3." in page
    assert page_field(page, "bounce.soft_limit") == "3"

    # a bad value anywhere changes nothing: 422, the error beside it, what was typed kept
    bad = await client.post(
        "/admin/settings",
        data={"csrf_token": csrf, "bounce.soft_limit": "5", "retry.max_attempts": "-2", "org.name": "Acme & Co"},
    )
    assert bad.status_code == 422
    assert field_error(bad.text, "retry.max_attempts") == "Enter a number of 0 or more."
    assert page_field(bad.text, "retry.max_attempts") == "-2" and page_field(bad.text, "org.name") == "Acme & Co"
    assert (await _values(client, admin.headers))["bounce.soft_limit"] == 3
    assert 'was:retry.max_attempts" value="5"' in bad.text
    proxies = await client.post("/admin/settings", data={"csrf_token": csrf, "tracking.proxy_cidrs": "not-a-net"})
    assert proxies.status_code == 422
    assert field_error(proxies.text, "tracking.proxy_cidrs") == "Enter networks such as 66.102.0.0/20, one a line."

    # the whole form as a browser sends it, with two changes: only those two are saved and audited; a setting
    # changed elsewhere meanwhile (the global pause) is not overwritten by the form's stale value
    current = await _values(client, admin.headers)
    form = {"csrf_token": csrf}
    for key, value in re.findall(r'name="was:([^"]+)" value="([^"]*)"', page):
        form[f"was:{key}"] = form[key] = html.unescape(value)
    assert len(form) == 1 + 2 * len(current)
    paused = await client.patch("/api/v1/admin/settings", json={"sending.paused": True}, headers=admin.headers)
    assert paused.status_code == 200
    current["sending.paused"] = True
    form["bounce.soft_limit"] = "5"
    form["tracking.proxy_cidrs"] = "66.102.0.0/20\r\n10.0.0.0/8"
    saved = await client.post("/admin/settings", data=form)
    assert saved.status_code == 303 and saved.headers["location"] == "/admin/settings?notice=saved"
    after = await _values(client, admin.headers)
    assert after["bounce.soft_limit"] == 5 and after["tracking.proxy_cidrs"] == ["66.102.0.0/20", "10.0.0.0/8"]
    assert {k for k in after if after[k] != current[k]} == {"bounce.soft_limit", "tracking.proxy_cidrs"}
    async with sessionmaker() as session:
        rows = list(await session.scalars(select(AuditLog).where(AuditLog.action == "settings.update")))
    assert sorted((r.target_id, r.actor_user_id, r.actor_kind) for r in rows) == [
        ("bounce.soft_limit", admin.id, "session"),
        ("sending.paused", admin.id, "token"),
        ("tracking.proxy_cidrs", admin.id, "session"),
    ]
    assert next(r for r in rows if r.target_id == "bounce.soft_limit").details == {"old": 3, "new": 5}
    page = (await client.get("/admin/settings?notice=saved")).text
    assert "Workers use them within 30 seconds." in page and "Now: 5." in page
    unchanged = await client.post("/admin/settings", data={"csrf_token": csrf, "was:org.name": "", "org.name": ""})
    assert unchanged.headers["location"] == "/admin/settings?notice=unchanged"
