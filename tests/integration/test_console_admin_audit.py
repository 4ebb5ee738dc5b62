"""The audit log page (/admin/audit) over the ASGI app: admins only (a user gets 404), rows newest first with their
details (secrets already redacted by the service), filters by actor, action prefix, target type and days in the
admin's time zone (a bad filter is a 422 beside its field, what was typed kept), paged by cursor."""

from __future__ import annotations

import datetime as dt
import html
from urllib.parse import urlencode

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.system.service import Actor, audit
from tests.helpers import console_log_in, field_error, make_account, page_field


async def test_the_audit_log_lists_filters_and_pages_rows_for_admins_only(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "audra", role="admin")
    user = await make_account(sessionmaker, "ulla")
    async with unit_of_work(sessionmaker) as session:
        await audit(
            session,
            Actor(admin.id, "token", "192.0.2.7"),
            "service.credentials_update",
            target_type="email_service",
            target_id=7,
            details={"fields": ["api_key"], "api_key": "sk-very-secret"},
        )
        await audit(
            session,
            Actor(admin.id, "session"),
            "settings.update",
            target_type="setting",
            target_id="bounce.soft_limit",
            details={"old": 3, "new": 2},
        )
        for n in range(55):
            await audit(session, Actor(None, "cli"), "credit.adjust", target_type="user", target_id=n + 1000)

    await console_log_in(client, user)
    assert (await client.get("/admin/audit")).status_code == 404

    await console_log_in(client, admin)
    page = (await client.get("/admin/audit")).text
    assert "credit.adjust" in page and "Next page" in page
    assert "bounce.soft_limit" not in page  # older than the first 50
    filtered = (await client.get("/admin/audit?" + urlencode({"actor": "audra", "action": "service."}))).text
    assert "service.credentials_update" in filtered and "bounce.soft_limit" not in filtered
    assert "192.0.2.7" in filtered and "sk-very-secret" not in filtered and "[redacted]" in filtered
    assert "credit.adjust" not in filtered
    by_type = (await client.get("/admin/audit?target_type=setting")).text
    assert "bounce.soft_limit" in by_type and "credit.adjust" not in by_type

    # the cursor: the second page holds the rest
    first = (await client.get("/admin/audit?action=credit.")).text
    nxt = html.unescape(first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0])
    second = (await client.get(nxt)).text
    assert second.count("credit.adjust") == 5 and "First page" in second

    # days in the admin's time zone: a row moved to yesterday leaves today's view
    async with unit_of_work(sessionmaker) as session:
        await session.execute(
            update(AuditLog)
            .where(AuditLog.action == "settings.update")
            .values(at=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
        )
    today = dt.datetime.now(dt.UTC).date().isoformat()
    recent = (await client.get(f"/admin/audit?target_type=setting&from={today}")).text
    assert "bounce.soft_limit" not in recent
    old_day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).date().isoformat()
    around = (await client.get(f"/admin/audit?target_type=setting&from={old_day}&to={old_day}")).text
    assert "bounce.soft_limit" in around


async def test_bad_audit_filters_are_a_422_beside_their_fields(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await make_account(sessionmaker, "audrey", role="admin")
    await console_log_in(client, admin)
    answer = await client.get("/admin/audit?" + urlencode({"actor": "nobody-here", "from": "2026-13-40"}))
    assert answer.status_code == 422
    assert field_error(answer.text, "actor") == "No user has this name, email or id."
    assert field_error(answer.text, "from") == "Enter a valid date."
    assert page_field(answer.text, "actor") == "nobody-here"
    answer = await client.get("/admin/audit?from=2026-05-02&to=2026-05-01")
    assert answer.status_code == 422
    assert field_error(answer.text, "to") == "Choose a day after the first one."
    answer = await client.get("/admin/audit?actor=99999999999999999999")
    assert answer.status_code == 422
